//! The dialects on rows written exactly as each tool writes them (the reference's observations):
//! golang-migrate dirty after a failure and after a crash, resolved from the diagnosis; its lock
//! held → in progress and a repair refuses; sqlx and Flyway drift accepted and failures resolved;
//! Liquibase's lock released only when no live session may hold it; `tool = "auto"`.

mod common;

use common::migrate;
use common::*;

const GM_TABLE: &str = "CREATE TABLE IF NOT EXISTS public.schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)";

fn state(pgm: &Pgmedic) -> serde_json::Value {
    let run = pgm.run(&["migrations", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()["app"].clone()
}

fn statuses(pgm: &Pgmedic) -> Vec<(String, String)> {
    let s = state(pgm);
    s["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["status"].as_str().unwrap().to_string()))
        .collect()
}

/// golang-migrate with migrations 1 and 2; 1 applied; a snapshot; then 2 dirty.
fn golang_dirty(label: &str, apply_body: bool, tool: &str) -> (TestDb, tempfile::TempDir, Pgmedic) {
    let db = TestDb::new(label);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1_create_users.up.sql"), "CREATE TABLE users (id int PRIMARY KEY);\n")
        .unwrap();
    std::fs::write(
        dir.path().join("2_add_email.up.sql"),
        "ALTER TABLE users ADD COLUMN email text;\nCREATE INDEX users_email ON users (email);\n",
    )
    .unwrap();
    db.sql(&format!("{GM_TABLE}; CREATE TABLE users (id int PRIMARY KEY); INSERT INTO schema_migrations VALUES (1, false)"));
    let playbook = "[repair]\nlock_wait = \"1s\"\n[[playbooks]]\nname = \"force\"\nsteps = [{ resolve = \"from-diagnosis\" }]\n";
    let pgm = migrate::config(&db, dir.path(), &format!("tool = \"{tool}\"\n{playbook}"));
    pgm.snapshot("app");
    // golang-migrate commits dirty = true before the body runs.
    db.sql("BEGIN; TRUNCATE schema_migrations; INSERT INTO schema_migrations VALUES (2, true); COMMIT");
    if apply_body {
        db.sql("ALTER TABLE users ADD COLUMN email text; CREATE INDEX users_email ON users (email)");
    }
    (db, dir, pgm)
}

#[test]
fn golang_migrate_dirty_after_a_failure_is_forced_to_the_previous_version() {
    let (db, _dir, pgm) = golang_dirty("gmfail", false, "golang-migrate");
    assert_eq!(statuses(&pgm), [("2_add_email".to_string(), "dirty".to_string())]);
    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    let verdicts: Vec<&str> =
        r["statements"].as_array().unwrap().iter().map(|s| s["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["not_applied", "not_applied"], "{r:#}");
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(
        rec["steps"][0]["output"].as_str().unwrap().starts_with("diagnosis: RolledBack; migrate force 1"),
        "{rec:#}"
    );
    assert_eq!(db.sql("SELECT version || ',' || dirty FROM schema_migrations"), "1,false");
}

#[test]
fn golang_migrate_dirty_after_a_crash_that_applied_everything_is_forced_to_its_version() {
    let (db, _dir, pgm) = golang_dirty("gmcrash", true, "auto");
    let s = state(&pgm);
    assert_eq!(s["migrations"][0]["status"], "dirty", "auto finds golang-migrate by its columns: {s:#}");
    let dry = pgm.run(&["repair", "--db", "app", "--dry-run", "--json"]).json();
    assert_eq!(dry["steps"][0]["params"]["would_resolve"], "applied", "the dry run says which way: {dry:#}");
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(
        rec["steps"][0]["output"].as_str().unwrap().starts_with("diagnosis: Applied; migrate force 2"),
        "{rec:#}"
    );
    assert_eq!(db.sql("SELECT version || ',' || dirty FROM schema_migrations"), "2,false");
}

#[test]
fn golang_migrates_lock_held_is_in_progress_and_a_repair_refuses() {
    let (db, _dir, pgm) = golang_dirty("gmlock", false, "golang-migrate");
    // The reference's formula for this database (computed here independently of pgmedic).
    let key = pgmedic::watch::golang_migrate_key("public", "schema_migrations", &db.name);
    let text = format!("public\0schema_migrations\0/{}", db.name);
    assert_eq!(key, i64::from(crc32fast::hash(text.as_bytes()).wrapping_mul(1486364155)));
    let _holder = common::prisma::LockHolder::take(&db, &format!("pg_advisory_lock({key})"));
    assert_eq!(statuses(&pgm)[0].1, "in_progress");
    let run = pgm.run(&["repair", "--db", "app", "--json"]);
    let rec = run.json();
    assert_eq!((run.code, rec["outcome"].as_str()), (3, Some("refused")), "{rec:#}");
    let error = rec["error"].as_str().unwrap();
    assert!(error.contains(&format!("holds golang-migrate's lock {key}")), "{error}");
    assert_eq!(db.sql("SELECT version || ',' || dirty FROM schema_migrations"), "2,true", "untouched");
}
