//! Liquibase, driven with the real Liquibase CLI (npm's bundled distribution, installed by
//! scripts/test into .tools/liquibase, on the machine's Java): an `update` killed mid-changeset
//! leaves its lock taken; while the dead update's statement still runs it is in progress, then
//! locked; the playbook releases the lock as `release-locks` does and `liquibase update` goes on.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::migrate;
use common::*;

const CHANGELOG: &str = "--liquibase formatted sql

--changeset dev:1
CREATE TABLE lb_users (id int);

--changeset dev:2 runInTransaction:false
SELECT pg_sleep(SLEEP);
";

fn launcher() -> PathBuf {
    let tools = std::env::var("PGMEDIC_TEST_LIQUIBASE")
        .expect("PGMEDIC_TEST_LIQUIBASE: run the suite with scripts/test, which installs Liquibase");
    Path::new(&tools).join("node_modules/liquibase/dist/liquibase/liquibase")
}

fn update_argv(db: &TestDb, changelog: &Path) -> Vec<String> {
    vec![
        launcher().display().to_string(),
        format!("--url=jdbc:postgresql://{PG_HOST}:{PG_PORT}/{}", db.name),
        "--username=postgres".into(),
        "--password=".into(),
        format!("--changelog-file={}", changelog.file_name().unwrap().to_str().unwrap()),
        "--show-banner=false".into(),
        "update".into(),
    ]
}

fn sleeping(db: &TestDb) -> bool {
    db.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(6)%' AND state = 'active' AND pid <> pg_backend_pid()") != "0"
}

fn lock_status(pgm: &Pgmedic) -> String {
    let s = pgm.run(&["migrations", "--json"]).json()["app"].clone();
    let lock =
        s["migrations"].as_array().unwrap().iter().find(|m| m["name"] == "databasechangeloglock").cloned();
    lock.map(|m| m["status"].as_str().unwrap().to_string()).unwrap_or_else(|| "free".into())
}

#[test]
fn a_killed_update_is_locked_and_the_playbook_releases_it_and_updates() {
    let db = TestDb::new("lbreal");
    let dir = tempfile::tempdir().unwrap();
    let changelog = dir.path().join("changelog.sql");
    std::fs::write(&changelog, CHANGELOG.replace("SLEEP", "6")).unwrap();
    let argv = update_argv(&db, &changelog);
    let playbook = format!(
        "[[playbooks]]\nname = \"release\"\nmatch = {{ migration = \"databasechangeloglock\" }}\nsteps = [{{ release_lock = true }}, {{ command = {}, cwd = \"{}\", timeout = \"3m\" }}]\n",
        serde_json::to_string(&argv).unwrap(),
        dir.path().display()
    );
    let pgm = migrate::config(&db, dir.path(), &format!("tool = \"liquibase\"\n{playbook}"));
    // Its own process group: the launcher is a shell script whose child is java.
    let mut update = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir.path())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the slow changeset", Duration::from_secs(120), || sleeping(&db));
    unsafe { libc::killpg(update.id() as i32, libc::SIGKILL) };
    update.wait().unwrap();
    assert_eq!(db.sql("SELECT locked FROM databasechangeloglock"), "t", "the killed update left its lock");
    assert_eq!(lock_status(&pgm), "in_progress", "its statement still runs on the server");
    wait_for("the orphaned statement to end", Duration::from_secs(30), || !sleeping(&db));
    wait_for("its session to close", Duration::from_secs(30), || lock_status(&pgm) == "locked");

    std::fs::write(&changelog, CHANGELOG.replace("SLEEP", "0")).unwrap();
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(
        rec["steps"][0]["output"].as_str().unwrap().contains("\"locked\":true"),
        "the lock row before: {rec:#}"
    );
    assert!(rec["steps"][1]["output"].as_str().unwrap().contains("Update has been successful"), "{rec:#}");
    assert_eq!(
        db.sql("SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM databasechangelog"),
        "1,2",
        "liquibase update went on"
    );
    assert_eq!(lock_status(&pgm), "free");
}

/// Liquibase cannot use a unix socket: the rehearsal opens a loopback port on its ephemeral
/// server with a generated password, in Liquibase's own variables, which win over a
/// `liquibase.properties` in the deploy's folder that points at the source.
#[test]
fn liquibase_rehearses_over_a_loopback_port_and_not_on_the_properties_files_source() {
    let db = TestDb::new("lbrehearse");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("changelog.sql"),
        "--liquibase formatted sql\n\n--changeset dev:1\nCREATE TABLE lb_rehearsed (id int);\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("liquibase.properties"),
        format!("url: jdbc:postgresql://{PG_HOST}:{PG_PORT}/{}\nusername: postgres\npassword:\n", db.name),
    )
    .unwrap();
    let cwd = dir.path().display().to_string();
    let pgm = migrate::config(&db, dir.path(), &format!("tool = \"liquibase\"\nrehearse_cwd = \"{cwd}\"\n"));
    pgm.snapshot("app");
    let launcher = launcher().display().to_string();
    let run = pgm.run(&[
        "rehearse",
        "--db",
        "app",
        "--json",
        "--",
        &launcher,
        "--changelog-file=changelog.sql",
        "--show-banner=false",
        "update",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    assert_eq!(
        (r["scratch_server"].as_str(), r["source_changed"].as_bool()),
        (Some("ephemeral"), Some(false)),
        "{r:#}"
    );
    assert!(
        r["migrations_after"].to_string().contains("changelog.sql"),
        "the changeset is recorded on the copy: {r:#}"
    );
    assert!(!r["output"].as_str().unwrap().contains(&db.name), "Liquibase did not go to the source: {r:#}");
    assert_eq!(
        db.sql("SELECT to_regclass('lb_rehearsed') IS NULL AND to_regclass('databasechangelog') IS NULL"),
        "t"
    );
}
