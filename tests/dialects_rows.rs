//! sqlx, Flyway and Liquibase on tables created and rows written exactly as each tool does: a
//! drift accepted, a failure resolved as the tool's own command would, a lock row released only
//! when no live session may hold it, and the audit keeping the lock row before and after.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::migrate;
use common::*;
use sha2::Digest;

fn statuses(pgm: &Pgmedic) -> Vec<(String, String)> {
    let run = pgm.run(&["migrations", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = run.json()["app"].clone();
    s["migrations"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["status"].as_str().unwrap().to_string()))
        .collect()
}

fn pair(name: &str, status: &str) -> (String, String) {
    (name.to_string(), status.to_string())
}

fn repair(pgm: &Pgmedic, playbook: &str) -> serde_json::Value {
    let run = pgm.run(&["repair", "--db", "app", "--playbook", playbook, "--json"]);
    run.json()
}

const SQLX_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)";

#[test]
fn sqlx_drift_is_accepted_and_a_failed_row_deleted() {
    let db = TestDb::new("sqlxrows");
    let dir = tempfile::tempdir().unwrap();
    let (one, two) =
        (dir.path().join("20250101000000_create_users.sql"), dir.path().join("20250102000000_add_email.sql"));
    std::fs::write(&one, "CREATE TABLE users (id int);\n").unwrap();
    std::fs::write(&two, "ALTER TABLE users ADD COLUMN email text;\n").unwrap();
    let sum = |p: &std::path::Path| hex::encode(sha2::Sha384::digest(std::fs::read(p).unwrap()));
    db.sql(&format!(
        "{SQLX_TABLE}; CREATE TABLE users (id int); \
         INSERT INTO _sqlx_migrations VALUES (20250101000000, 'create users', now(), true, '\\x{}', 1000), (20250102000000, 'add email', now(), false, '\\x{}', -1)",
        sum(&one),
        sum(&two)
    ));
    let playbooks = "[[playbooks]]\nname = \"accept\"\nsteps = [{ accept_checksums = true }]\n[[playbooks]]\nname = \"forget\"\nmatch = { migration = \"*_add_email\" }\nsteps = [{ resolve = \"rolled-back\" }]\n";
    let pgm = migrate::config(&db, dir.path(), &format!("tool = \"sqlx\"\n{playbooks}"));
    assert_eq!(
        statuses(&pgm),
        [pair("20250101000000_create_users", "applied"), pair("20250102000000_add_email", "failed")]
    );
    let rec = repair(&pgm, "forget");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(db.sql("SELECT count(*) FROM _sqlx_migrations WHERE version = 20250102000000"), "0");

    std::fs::write(&one, "-- users\nCREATE TABLE users (id int);\n").unwrap();
    assert_eq!(statuses(&pgm), [pair("20250101000000_create_users", "drifted")]);
    let rec = repair(&pgm, "accept");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(
        db.sql("SELECT encode(checksum, 'hex') FROM _sqlx_migrations"),
        sum(&one),
        "the file's SHA-384"
    );
    assert_eq!(statuses(&pgm), [pair("20250101000000_create_users", "applied")]);
}

const FLYWAY_TABLE: &str = "CREATE TABLE flyway_schema_history (installed_rank INT NOT NULL PRIMARY KEY, version VARCHAR(50), \
    description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INT, \
    installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT now(), execution_time INT NOT NULL, success BOOLEAN NOT NULL)";

/// Flyway's checksum, computed here the way its ChecksumCalculator does (CRC-32 of each line).
fn flyway_sum(text: &str) -> i32 {
    let mut h = crc32fast::Hasher::new();
    for line in text.lines() {
        h.update(line.as_bytes());
    }
    h.finalize() as i32
}

#[test]
fn flyway_repair_deletes_the_failed_row_and_realigns_checksums() {
    let db = TestDb::new("flywayrows");
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = ("CREATE TABLE users (id int);\n", "ALTER TABLE users ADD COLUMN email text;\n");
    std::fs::write(dir.path().join("V1__create.sql"), v1).unwrap();
    std::fs::write(dir.path().join("V2__email.sql"), v2).unwrap();
    db.sql(&format!(
        "{FLYWAY_TABLE}; INSERT INTO flyway_schema_history VALUES \
         (1, '1', 'create', 'SQL', 'V1__create.sql', {}, 'postgres', now(), 5, true), \
         (2, '2', 'email', 'SQL', 'V2__email.sql', {}, 'postgres', now(), 3, false)",
        flyway_sum(v1),
        flyway_sum(v2)
    ));
    let playbooks = "[[playbooks]]\nname = \"repair\"\nmatch = { migration = \"V2__*\" }\nsteps = [{ resolve = \"rolled-back\" }]\n[[playbooks]]\nname = \"realign\"\nsteps = [{ accept_checksums = true }]\n";
    let pgm = migrate::config(&db, dir.path(), &format!("tool = \"auto\"\n{playbooks}"));
    assert_eq!(statuses(&pgm), [pair("V1__create.sql", "applied"), pair("V2__email.sql", "failed")]);
    let rec = repair(&pgm, "repair");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(db.sql("SELECT string_agg(script, ',') FROM flyway_schema_history"), "V1__create.sql");

    let edited = "-- users\nCREATE TABLE users (id int);\n";
    std::fs::write(dir.path().join("V1__create.sql"), edited).unwrap();
    assert_eq!(statuses(&pgm), [pair("V1__create.sql", "drifted")]);
    let rec = repair(&pgm, "realign");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(db.sql("SELECT checksum FROM flyway_schema_history"), flyway_sum(edited).to_string());
}

/// Flyway's lock while it works: `pg_try_advisory_lock(77431708279161 + hashCode)` with
/// `"public"."flyway_schema_history".hashCode()` = 2125624436 (Java's own answer, by jshell).
#[test]
fn flyways_lock_held_is_in_progress_and_a_repair_refuses() {
    let db = TestDb::new("flywaylock");
    let dir = tempfile::tempdir().unwrap();
    let v1 = "CREATE TABLE users (id int);\n";
    std::fs::write(dir.path().join("V1__create.sql"), v1).unwrap();
    db.sql(&format!(
        "{FLYWAY_TABLE}; INSERT INTO flyway_schema_history VALUES \
         (1, '1', 'create', 'SQL', 'V1__create.sql', {}, 'postgres', now(), 5, false)",
        flyway_sum(v1)
    ));
    let playbooks = "[[playbooks]]\nname = \"repair\"\nsteps = [{ resolve = \"rolled-back\" }]\n";
    let pgm = migrate::config(
        &db,
        dir.path(),
        &format!("tool = \"flyway\"\n[repair]\nlock_wait = \"1s\"\n{playbooks}"),
    );
    let key = 77_431_708_279_161_i64 + 2_125_624_436;
    {
        let _flyway = common::prisma::LockHolder::take(&db, &format!("pg_advisory_lock({key})"));
        let s = statuses(&pgm);
        assert_eq!(s.last().unwrap(), &pair("flyway_schema_history_lock", "in_progress"), "{s:?}");
        let run = pgm.run(&["repair", "--db", "app", "--json"]);
        let rec = run.json();
        assert_eq!((run.code, rec["outcome"].as_str()), (3, Some("refused")), "{rec:#}");
        assert!(rec["error"].as_str().unwrap().contains(&format!("holds flyway's lock {key}")), "{rec:#}");
        assert_eq!(db.sql("SELECT count(*) FROM flyway_schema_history"), "1", "untouched");
    }
    assert_eq!(statuses(&pgm), [pair("V1__create.sql", "failed")]);
    let rec = repair(&pgm, "repair");
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
}

const LIQUIBASE_TABLES: &str = "CREATE TABLE databasechangeloglock (id INT NOT NULL PRIMARY KEY, locked BOOLEAN NOT NULL, lockgranted TIMESTAMP, lockedby VARCHAR(255)); \
    CREATE TABLE databasechangelog (id VARCHAR(255) NOT NULL, author VARCHAR(255) NOT NULL, filename VARCHAR(255) NOT NULL, \
    dateexecuted TIMESTAMP NOT NULL, orderexecuted INT NOT NULL, exectype VARCHAR(10) NOT NULL, md5sum VARCHAR(35), description VARCHAR(255), \
    comments VARCHAR(255), tag VARCHAR(255), liquibase VARCHAR(20), contexts VARCHAR(255), labels VARCHAR(255), deployment_id VARCHAR(10)); \
    INSERT INTO databasechangelog VALUES ('1', 'dev', 'changelog.sql', now(), 1, 'EXECUTED', '9:0f3e', 'sql', '', NULL, '4.28.0', NULL, NULL, '1'); \
    INSERT INTO databasechangeloglock VALUES (1, FALSE, NULL, NULL)";
const TAKE: &str = "UPDATE databasechangeloglock SET locked = TRUE, lockgranted = now(), lockedby = 'buildhost (10.1.2.3)' WHERE id = 1";

/// A psql session that looks like Liquibase's JDBC driver, connected until dropped.
struct Jdbc(std::process::Child);

impl Jdbc {
    fn connect(db: &TestDb) -> Jdbc {
        let mut child = Command::new("psql")
            .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-Xq"])
            .env("PGAPPNAME", "PostgreSQL JDBC Driver")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "SELECT 1;").unwrap();
        wait_for("the JDBC-like session", std::time::Duration::from_secs(10), || {
            db.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'PostgreSQL JDBC Driver'")
                == "1"
        });
        Jdbc(child)
    }
}

impl Drop for Jdbc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn liquibases_lock_is_released_only_when_no_live_session_may_hold_it() {
    let db = TestDb::new("lbrows");
    db.sql(LIQUIBASE_TABLES);
    let dir = tempfile::tempdir().unwrap();
    let playbooks = "[[playbooks]]\nname = \"release\"\nmatch = { migration = \"databasechangeloglock\" }\nsteps = [{ release_lock = true }, { accept_checksums = true }]\n";
    let pgm = migrate::config(&db, dir.path(), &format!("tool = \"liquibase\"\n{playbooks}"));

    // A JDBC session that connected before the lock was granted may be the migrator.
    let live = Jdbc::connect(&db);
    db.sql(TAKE);
    assert_eq!(
        statuses(&pgm),
        [pair("changelog.sql::1::dev", "applied"), pair("databasechangeloglock", "in_progress")]
    );
    let run = pgm.run(&["repair", "--db", "app", "--json"]);
    let rec = run.json();
    assert_eq!((run.code, rec["outcome"].as_str()), (3, Some("refused")), "{rec:#}");
    assert!(rec["error"].as_str().unwrap().contains("PostgreSQL JDBC Driver"), "names the session: {rec:#}");
    assert_eq!(db.sql("SELECT locked FROM databasechangeloglock"), "t", "untouched");

    drop(live);
    wait_for("the session to end", std::time::Duration::from_secs(10), || {
        db.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'PostgreSQL JDBC Driver'")
            == "0"
    });
    assert_eq!(statuses(&pgm)[1], pair("databasechangeloglock", "locked"));
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    let output = rec["steps"][0]["output"].as_str().unwrap();
    assert!(
        output.contains("before [{\"id\":1,\"locked\":true,\"lockedby\":\"buildhost (10.1.2.3)\"")
            && output.contains("after [{\"id\":1,\"locked\":false,\"lockedby\":null"),
        "before and after: {output}"
    );
    assert_eq!(
        db.sql("SELECT locked || ',' || coalesce(lockedby, '-') FROM databasechangeloglock"),
        "false,-"
    );
    assert_eq!(
        db.sql("SELECT coalesce(md5sum, 'cleared') FROM databasechangelog"),
        "cleared",
        "clear-checksums"
    );
    assert_eq!(statuses(&pgm), [pair("changelog.sql::1::dev", "applied")]);
}

/// `auto` never says "missing" while a migrations table exists: goose's table (a tool pgmedic
/// does not read) and a `knex_migrations` with other columns are `unrecognised`, named with
/// their columns; dbmate's `schema_migrations (version varchar)` is dbmate's, not golang-migrate's.
#[test]
fn auto_names_a_table_it_cannot_read_instead_of_calling_it_missing() {
    let state = |db: &TestDb| {
        let dir = tempfile::tempdir().unwrap();
        let pgm = migrate::config(db, dir.path(), "tool = \"auto\"\n");
        pgm.run(&["migrations", "--json"]).json()["app"].clone()
    };
    let db = TestDb::new("autogoose");
    db.sql("CREATE TABLE goose_db_version (id serial PRIMARY KEY, version_id bigint NOT NULL, is_applied boolean NOT NULL, tstamp timestamp DEFAULT now())");
    let s = state(&db);
    assert_eq!(
        (s["state"].as_str(), s["table"].as_str(), s["like"].as_str()),
        (Some("unrecognised"), Some("goose_db_version"), Some("goose")),
        "{s:#}"
    );
    assert_eq!(s["columns"], serde_json::json!(["id", "version_id", "is_applied", "tstamp"]), "{s:#}");

    let odd = TestDb::new("autoodd");
    odd.sql("CREATE TABLE knex_migrations (id int, title text)");
    let s = state(&odd);
    assert_eq!((s["state"].as_str(), s["like"].as_str()), (Some("unrecognised"), None), "{s:#}");

    let dbmate = TestDb::new("autodbmate");
    dbmate.sql("CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY); INSERT INTO schema_migrations VALUES ('20260101000000')");
    let s = state(&dbmate);
    assert_eq!(s["migrations"][0]["id"], "20260101000000", "{s:#}");
    assert_eq!(s["migrations"][0]["status"], "applied", "{s:#}");
}
