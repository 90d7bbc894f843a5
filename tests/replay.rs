//! Diagnose by replay, with the real PostgreSQL: a failed migration's statements replayed on a
//! copy of its baseline on pgmedic's own scratch cluster prove where it stopped, and every
//! drafted repair runs on such a copy before it touches the database. Each case here was a
//! wrong answer when statements were judged one by one against the catalog as it is now.

mod common;

use common::migrate::{self, schema_dump, Holder};
use common::*;

const INIT: &str = "20250101000000_init";
const INIT_SQL: &str = "CREATE TABLE \"User\" (\n    \"id\" SERIAL NOT NULL,\n    \"name\" TEXT NOT NULL,\n    CONSTRAINT \"User_pkey\" PRIMARY KEY (\"id\")\n);\nCREATE TABLE \"Session\" (\n    \"id\" TEXT NOT NULL,\n    \"userId\" INTEGER NOT NULL,\n    CONSTRAINT \"Session_pkey\" PRIMARY KEY (\"id\")\n);\n";
const NEXT: &str = "20250601000000_next";

/// A Prisma-style database at INIT, a baseline snapshot, then NEXT deployed while a session
/// holds a lock on "User" (so the first statement touching "User" fails with 55P03).
struct Case {
    db: TestDb,
    dir: tempfile::TempDir,
    pgm: Pgmedic,
}

fn failed_behind_a_lock(label: &str, schema: &str, before: &str, next_sql: &str, tail: &str) -> Case {
    let db = TestDb::new(label);
    let opts = format!("-c search_path={schema}");
    db.sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), INIT, INIT_SQL);
    migrate::write_migration(dir.path(), NEXT, next_sql);
    migrate::deploy(&db, dir.path(), INIT, &opts).unwrap();
    if !before.is_empty() {
        db.sql(&format!("SET search_path = {schema}; {before}"));
    }
    let pgm = migrate::config(&db, dir.path(), &format!("schema = \"{schema}\"\n{tail}"));
    pgm.snapshot("app");
    let log = {
        let _busy = Holder::lock(&db, &format!("{schema}.\"User\""), "User");
        migrate::deploy(&db, dir.path(), NEXT, &format!("{opts} -c lock_timeout=300")).unwrap_err()
    };
    assert!(log.contains("55P03"), "{log}");
    Case { db, dir, pgm }
}

fn diagnosis(pgm: &Pgmedic) -> serde_json::Value {
    let run = pgm.run(&["diagnose", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.json()[0].clone()
}

fn verdicts(r: &serde_json::Value) -> Vec<String> {
    r["statements"].as_array().unwrap().iter().map(|s| s["verdict"].as_str().unwrap().to_string()).collect()
}

/// Appends the drafted playbook `kind` to the configuration and runs the repair.
fn repair_with(case: &Case, r: &serde_json::Value, kind: &str) -> serde_json::Value {
    let toml = r["playbooks"][kind]["toml"].as_str().unwrap_or_else(|| panic!("{kind} drafted: {r:#}"));
    let text = std::fs::read_to_string(&case.pgm.config).unwrap() + "\n" + toml;
    case.pgm.write_config(&text);
    case.pgm.run(&["repair", "--db", "app", "--json"]).json()
}

/// The schema the whole migration gives a fresh database.
fn whole(case: &Case, schema: &str, before: &str) -> String {
    let fresh = TestDb::new("whole");
    let opts = format!("-c search_path={schema}");
    fresh.sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
    migrate::deploy(&fresh, case.dir.path(), INIT, &opts).unwrap();
    if !before.is_empty() {
        fresh.sql(&format!("SET search_path = {schema}; {before}"));
    }
    migrate::deploy(&fresh, case.dir.path(), NEXT, &opts).unwrap();
    schema_dump(&fresh.name)
}

const DROP_RECREATE: &str = "DROP TABLE \"Session\";\nCREATE TABLE \"Session\" (\n    \"id\" TEXT NOT NULL,\n    \"userId\" INTEGER NOT NULL,\n    \"expiresAt\" TIMESTAMP(3) NOT NULL,\n    CONSTRAINT \"Session_pkey\" PRIMARY KEY (\"id\")\n);\nALTER TABLE \"User\" ADD COLUMN \"lastLoginAt\" TIMESTAMP(3);\n";

/// Issue 16, case 1: the live "Session" is the new one, with the rows the app wrote since; the
/// catalog check alone said the DROP had not run and the finish dropped it, rows and all.
#[test]
fn a_drop_and_recreate_is_finished_without_dropping_the_new_table() {
    let case = failed_behind_a_lock("droprec", "public", "", DROP_RECREATE, "");
    case.db.sql("INSERT INTO \"Session\" SELECT 's' || i, i, now() FROM generate_series(1, 100) i");
    let r = diagnosis(&case.pgm);
    assert_eq!((r["proof"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(2)), "{r:#}");
    assert_eq!(r["failed_statement"], 3, "{r:#}");
    assert_eq!(r["scratch_server"], "ephemeral", "{r:#}");
    assert_eq!(verdicts(&r), ["applied", "applied", "not_applied"], "{r:#}");
    let finish = r["playbooks"]["finish"]["sql"].as_str().unwrap();
    assert!(!finish.contains("DROP TABLE"), "{finish}");
    assert!(finish.contains("ADD COLUMN IF NOT EXISTS \"lastLoginAt\""), "{finish}");
    let rec = repair_with(&case, &r, "finish");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(case.db.sql("SELECT count(*) FROM \"Session\""), "100", "the new table keeps its rows");
    assert_eq!(schema_dump(&case.db.name), whole(&case, "public", ""), "finished = the whole migration");
    assert!(
        !case.pgm.scratch_dir().exists() || std::fs::read_dir(case.pgm.scratch_dir()).unwrap().count() == 0,
        "no cluster left behind"
    );
}

const SWAP: &str = "CREATE TABLE \"Session_new\" (\"id\" TEXT NOT NULL, \"userId\" INTEGER NOT NULL, \"note\" TEXT, CONSTRAINT \"Session_new_pkey\" PRIMARY KEY (\"id\"));\nINSERT INTO \"Session_new\" (\"id\", \"userId\") SELECT \"id\", \"userId\" FROM \"Session\";\nDROP TABLE \"Session\";\nALTER TABLE \"Session_new\" RENAME TO \"Session\";\nALTER TABLE \"User\" ADD COLUMN \"lastLoginAt\" TIMESTAMP(3);\n";

/// The rename-and-swap shape: the swapped-in table keeps the copied rows.
#[test]
fn a_rename_and_swap_is_finished_without_touching_the_swapped_table() {
    let before = "INSERT INTO \"Session\" SELECT 's' || i, i FROM generate_series(1, 50) i;";
    let case = failed_behind_a_lock("swap", "public", before, SWAP, "");
    let r = diagnosis(&case.pgm);
    assert_eq!(r["stopped_after"], 4, "{r:#}");
    let rec = repair_with(&case, &r, "finish");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(case.db.sql("SELECT count(*) FROM \"Session\""), "50");
    assert_eq!(case.db.sql("SELECT to_regclass('\"Session_new\"') IS NULL"), "t");
    assert_eq!(case.db.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'User' AND column_name = 'lastLoginAt'"), "1");
}

/// Case 3: a CREATE OR REPLACE VIEW after the failing statement counted as applied because the
/// view existed; its new definition never ran.
#[test]
fn a_replaced_view_after_the_failure_is_part_of_the_finish() {
    let before = "CREATE VIEW \"active\" AS SELECT \"id\" FROM \"User\";";
    let next = "CREATE TABLE \"Audit\" (\"id\" INTEGER);\nALTER TABLE \"User\" ADD COLUMN \"active\" BOOLEAN NOT NULL DEFAULT true;\nCREATE OR REPLACE VIEW \"active\" AS SELECT \"id\", \"name\" FROM \"User\" WHERE \"active\";\n";
    let case = failed_behind_a_lock("view", "public", before, next, "");
    let r = diagnosis(&case.pgm);
    assert_eq!(verdicts(&r), ["applied", "not_applied", "not_applied"], "{r:#}");
    let finish = r["playbooks"]["finish"]["sql"].as_str().unwrap();
    assert!(finish.contains("CREATE OR REPLACE VIEW"), "{finish}");
    let rec = repair_with(&case, &r, "finish");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(schema_dump(&case.db.name), whole(&case, "public", before));
}

/// Case 5: undo counts the rows of the table it drops in the migrations' schema, inside its
/// own transaction after LOCK TABLE; a same-named empty table in `public` does not vouch.
#[test]
fn undo_guards_the_rows_of_the_table_in_the_migrations_schema() {
    let before = "CREATE TABLE public.\"Note\" (\"id\" INTEGER);";
    let next = "CREATE TABLE \"Note\" (\"id\" INTEGER);\nALTER TABLE \"User\" ADD COLUMN \"bio\" TEXT;\n";
    let case = failed_behind_a_lock("undoschema", "tenant", before, next, "");
    case.db.sql("INSERT INTO tenant.\"Note\" VALUES (1), (2), (3)");
    let r = diagnosis(&case.pgm);
    assert_eq!(r["stopped_after"], 1, "{r:#}");
    let rec = repair_with(&case, &r, "undo");
    assert_eq!(rec["outcome"], "failed", "{rec:#}");
    assert!(rec["error"].as_str().unwrap().contains("table \"tenant\".\"Note\" holds 3 row(s)"), "{rec:#}");
    assert_eq!(case.db.sql("SELECT count(*) FROM tenant.\"Note\""), "3", "nothing dropped");
    case.db.sql("DELETE FROM tenant.\"Note\"");
    let rec = case.pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(
        case.db.sql(
            "SELECT to_regclass('tenant.\"Note\"') IS NULL AND to_regclass('public.\"Note\"') IS NOT NULL"
        ),
        "t"
    );
}

/// Case 9: DROP INDEX CONCURRENTLY and CREATE INDEX CONCURRENTLY run outside the transaction,
/// and a new enum value commits before the statement that uses it.
#[test]
fn a_finish_runs_concurrent_statements_alone_and_commits_a_new_enum_value_before_its_use() {
    let before = "CREATE TYPE \"Mood\" AS ENUM ('ok'); CREATE INDEX \"User_name_idx\" ON \"User\"(\"name\");";
    let next = "ALTER TABLE \"User\" ADD COLUMN \"email\" TEXT;\nCREATE INDEX CONCURRENTLY \"User_email_idx\" ON \"User\"(\"email\");\nDROP INDEX CONCURRENTLY \"User_name_idx\";\nALTER TYPE \"Mood\" ADD VALUE 'happy';\nALTER TABLE \"User\" ADD COLUMN \"mood\" \"Mood\" NOT NULL DEFAULT 'happy';\n";
    let case = failed_behind_a_lock("concur", "public", before, next, "");
    let r = diagnosis(&case.pgm);
    assert_eq!(r["stopped_after"], 0, "{r:#}");
    let script = r["playbooks"]["finish"]["script"].as_str().unwrap();
    assert!(script.contains("-- outside a transaction:\nCREATE INDEX CONCURRENTLY"), "{script}");
    let rec = repair_with(&case, &r, "finish");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(schema_dump(&case.db.name), whole(&case, "public", before));
    assert_eq!(case.db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
}

/// Case 2: VALIDATE CONSTRAINT timed out after ADD CONSTRAINT … NOT VALID committed; the
/// constraint exists, so by name it looked done, and `convalidated` stayed false.
#[test]
fn a_validate_that_timed_out_is_finished_and_the_constraint_is_validated() {
    let db = TestDb::new("validate");
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), INIT, INIT_SQL);
    let next = "ALTER TABLE \"User\" ADD CONSTRAINT \"User_name_check\" CHECK (slow_ok(\"name\")) NOT VALID;\nALTER TABLE \"User\" VALIDATE CONSTRAINT \"User_name_check\";\n";
    migrate::write_migration(dir.path(), NEXT, next);
    migrate::deploy(&db, dir.path(), INIT, "").unwrap();
    db.sql("CREATE FUNCTION slow_ok(v text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.1); RETURN v <> ''; END $$; INSERT INTO \"User\" (\"name\") SELECT 'n' || i FROM generate_series(1, 10) i");
    let pgm = migrate::config(&db, dir.path(), "");
    pgm.snapshot("app");
    let log = migrate::deploy(&db, dir.path(), NEXT, "-c statement_timeout=300").unwrap_err();
    assert!(log.contains("57014"), "{log}");
    let r = diagnosis(&pgm);
    assert_eq!((r["stopped_after"].as_u64(), r["failed_statement"].as_u64()), (Some(1), Some(2)), "{r:#}");
    assert!(r["playbooks"]["finish"]["sql"].as_str().unwrap().contains("VALIDATE CONSTRAINT"), "{r:#}");
    let case = Case { db, dir, pgm };
    let rec = repair_with(&case, &r, "finish");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(case.db.sql("SELECT convalidated FROM pg_constraint WHERE conname = 'User_name_check'"), "t");
}

/// Case 8: a finish queued behind an open transaction on its table gives up its place in the
/// lock queue after lock_timeout, so readers never wait behind it, and succeeds on a retry
/// once the blocker is gone.
#[test]
fn a_finish_behind_an_open_transaction_never_blocks_readers_and_succeeds_on_a_retry() {
    let tail = "[repair]\nlock_timeout = \"500ms\"\nlock_retries = 30\n";
    let case =
        failed_behind_a_lock("lockq", "public", "", "ALTER TABLE \"User\" ADD COLUMN \"bio\" TEXT;\n", tail);
    let r = diagnosis(&case.pgm);
    let toml = r["playbooks"]["finish"]["toml"].as_str().unwrap().to_string();
    case.pgm.write_config(&(std::fs::read_to_string(&case.pgm.config).unwrap() + "\n" + &toml));
    let blocker = Holder::lock(&case.db, "\"User\"", "User");
    let repair = case
        .pgm
        .command(&["repair", "--db", "app", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the finish to queue for its lock", std::time::Duration::from_secs(60), || {
        case.db.sql("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted AND a.application_name LIKE 'pgmedic%'") != "0"
    });
    // Without lock_timeout this SELECT queues behind the ALTER until statement_timeout.
    let read = std::process::Command::new("psql")
        .args([
            "-h",
            PG_HOST,
            "-U",
            "postgres",
            "-d",
            &case.db.name,
            "-XAtqc",
            "SET statement_timeout = '3s'; SELECT count(*) FROM \"User\"",
        ])
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "a reader waited behind the queued finish: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    drop(blocker);
    let out = repair.wait_with_output().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(rec["steps"][0]["output"].as_str().unwrap().contains("gave up waiting for a lock"), "{rec:#}");
    assert_eq!(case.db.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'User' AND column_name = 'bio'"), "1");
}

const GM_TABLE: &str = "CREATE TABLE IF NOT EXISTS public.schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)";

/// golang-migrate at version 1 with a snapshot, then `file2` of version 2 run as golang-migrate
/// runs a file (one multi-statement query), with dirty = true committed first.
fn golang(label: &str, file2: &str, run: impl FnOnce(&TestDb)) -> (TestDb, tempfile::TempDir, Pgmedic) {
    let db = TestDb::new(label);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("1_users.up.sql"),
        "CREATE TABLE users (id int PRIMARY KEY, email text);\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("2_next.up.sql"), file2).unwrap();
    db.sql(&format!("{GM_TABLE}; CREATE TABLE users (id int PRIMARY KEY, email text); INSERT INTO schema_migrations VALUES (1, false); INSERT INTO users VALUES (1, 'a'), (2, 'a')"));
    let playbook = "[[playbooks]]\nname = \"force\"\nsteps = [{ resolve = \"from-diagnosis\" }]\n";
    let pgm = migrate::config(&db, dir.path(), &format!("tool = \"golang-migrate\"\n{playbook}"));
    pgm.snapshot("app");
    db.sql("BEGIN; TRUNCATE schema_migrations; INSERT INTO schema_migrations VALUES (2, true); COMMIT");
    run(&db);
    (db, dir, pgm)
}

fn psql_fails(db: &TestDb, sql: &str) {
    let out = std::process::Command::new("psql")
        .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-XAtqc", sql])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{sql} was meant to fail");
}

/// Case 4: a failed CONCURRENTLY unique index leaves dirty and an INVALID index; rolled back
/// from the diagnosis, the index goes too, so the next `migrate up` does not fail "already
/// exists" (and dirty again) for ever.
#[test]
fn a_failed_concurrent_index_is_rolled_back_with_its_invalid_index() {
    let file2 = "CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);\n";
    let (db, _dir, pgm) = golang("gmconc", file2, |db| psql_fails(db, file2));
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "1",
        "the failure left an invalid index"
    );
    let ms = pgm.run(&["diagnose", "--json"]).json();
    let r = &ms[0];
    assert_eq!((r["proof"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(0)), "{r:#}");
    // golang-migrate stores no error text: the server's log has it.
    let log = r["server_log"].as_str().unwrap_or_else(|| panic!("{r:#}"));
    assert!(
        log.contains("could not create unique index \"users_email_key\"")
            && log.contains("DETAIL:  Key (email)=("),
        "{log}"
    );
    // The dry run says which way it would resolve, and that the invalid index would go first.
    let dry = pgm.run(&["repair", "--db", "app", "--dry-run", "--json"]).json();
    let params = &dry["steps"][0]["params"];
    assert_eq!(
        (params["would_resolve"].as_str(), params["would_drop_invalid_index"].as_bool()),
        (Some("rolled-back"), Some(true)),
        "{dry:#}"
    );
    assert_eq!(
        db.sql("SELECT version || ',' || dirty FROM schema_migrations"),
        "2,true",
        "a dry run changes nothing"
    );
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(
        rec["steps"][0]["output"]
            .as_str()
            .unwrap()
            .contains("DROP INDEX CONCURRENTLY IF EXISTS \"public\".\"users_email_key\""),
        "{rec:#}"
    );
    assert_eq!(db.sql("SELECT to_regclass('users_email_key') IS NULL"), "t", "the invalid index is gone");
    assert_eq!(db.sql("SELECT version || ',' || dirty FROM schema_migrations"), "1,false");
}

/// Case 6: rolled back without the failed version's file cannot know the version before it;
/// `force -1` would empty the table and the next `up` would replay every migration.
#[test]
fn golang_migrate_is_not_forced_to_nothing_without_its_files() {
    let file2 = "CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);\n";
    let (db, dir, pgm) = golang("gmnofile", file2, |db| psql_fails(db, file2));
    std::fs::remove_file(dir.path().join("2_next.up.sql")).unwrap();
    let text = std::fs::read_to_string(&pgm.config)
        .unwrap()
        .replace("{ resolve = \"from-diagnosis\" }", "{ resolve = \"rolled-back\" }");
    pgm.write_config(&text);
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "failed", "{rec:#}");
    assert!(
        rec["error"].as_str().unwrap().contains("its file 2_*.up.sql is not in databases.migrations.dir"),
        "{rec:#}"
    );
    assert_eq!(db.sql("SELECT version || ',' || dirty FROM schema_migrations"), "2,true", "nothing changed");
}

/// Case 7: a killed default-mode file is one implicit transaction: its UPDATE committed with
/// the rest, so it ran whole, although the UPDATE itself leaves no trace in the catalog.
#[test]
fn a_killed_default_mode_file_that_committed_is_resolved_applied() {
    let file2 = "ALTER TABLE users ADD COLUMN name text;\nUPDATE users SET name = email;\n";
    let (db, _dir, pgm) = golang("gmatomic", file2, |db| {
        db.sql(file2);
    });
    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    assert_eq!((r["proof"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(2)), "{r:#}");
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(
        rec["steps"][0]["output"].as_str().unwrap().starts_with("diagnosis: Applied; migrate force 2"),
        "{rec:#}"
    );
    assert_eq!(db.sql("SELECT version || ',' || dirty FROM schema_migrations"), "2,false");
}

/// Case 8, the session: the repair's session idles while its pre-repair snapshot runs (a slow
/// pg_dump here), and a database's idle_session_timeout must not end it, and its locks, then.
#[test]
fn the_repair_session_outlives_idle_session_timeout_while_its_snapshot_runs() {
    let case =
        failed_behind_a_lock("idle", "public", "", "ALTER TABLE \"User\" ADD COLUMN \"bio\" TEXT;\n", "");
    let r = diagnosis(&case.pgm);
    let toml = r["playbooks"]["finish"]["toml"].as_str().unwrap().to_string();
    case.pgm.write_config(&(std::fs::read_to_string(&case.pgm.config).unwrap() + "\n" + &toml));
    psql("postgres", &format!("ALTER DATABASE {} SET idle_session_timeout = '1s'", case.db.name));
    let slow = slow_tools(3.0);
    let bin = slow.path().display().to_string();
    let run =
        case.pgm.run_env(&["repair", "--db", "app", "--json"], &[("PGMEDIC_SNAPSHOT__PG_BIN_DIR", &bin)]);
    let rec = run.json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}\n{}", run.stderr);
    assert_eq!(case.db.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'User' AND column_name = 'bio'"), "1");
}

/// Where nothing can read the server's log (a role without pg_read_server_files, pgmedic on a
/// user that may not read the file), diagnose says which grant would let it, never a guess.
#[test]
fn an_unreadable_server_log_names_the_grant_that_would_let_diagnose_read_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let file2 = "CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);\n";
    let (db, _dir, _pgm) = golang("gmnolog", file2, |db| psql_fails(db, file2));
    let role = format!("{}_ro", db.name);
    db.sql(&format!("CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"));
    // A configuration and migrations only `nobody` (uid 65534) needs to read.
    let home = tempfile::tempdir().unwrap();
    let root = home.path();
    std::fs::create_dir(root.join("migrations")).unwrap();
    std::fs::write(
        root.join("migrations/1_users.up.sql"),
        "CREATE TABLE users (id int PRIMARY KEY, email text);\n",
    )
    .unwrap();
    std::fs::write(root.join("migrations/2_next.up.sql"), file2).unwrap();
    let config = format!(
        "[daemon]\nstate_dir = \"{r}/state\"\nsocket = \"{r}/state/sock\"\n[storage]\npath = \"{r}/snaps\"\n[scratch]\ndir = \"{r}/scratch\"\n[[databases]]\nname = \"app\"\nurl = \"postgresql://{role}@{PG_HOST}:{PG_PORT}/{}\"\n[databases.migrations]\ntool = \"golang-migrate\"\ndir = \"{r}/migrations\"\n",
        db.name,
        r = root.display()
    );
    std::fs::write(root.join("pgmedic.toml"), config).unwrap();
    for p in [
        root.to_path_buf(),
        root.join("migrations"),
        root.join("pgmedic.toml"),
        root.join("migrations/1_users.up.sql"),
        root.join("migrations/2_next.up.sql"),
    ] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgmedic"))
        .args(["--config", &root.join("pgmedic.toml").display().to_string(), "diagnose", "--json"])
        .env_remove("PGMEDIC_CONFIG")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let reports: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let r = &reports[0];
    assert_eq!(r["server_log"], serde_json::Value::Null, "{r:#}");
    let why = r["server_log_why"].as_str().unwrap_or_else(|| panic!("{r:#}"));
    assert!(why.contains("grant pg_read_server_files") && why.contains("/var/log/postgresql/"), "{why}");
    db.sql(&format!("DROP OWNED BY {role}; DROP ROLE {role}"));
}
