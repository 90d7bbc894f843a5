//! dbmate, driven with the real dbmate CLI (its Go binary as npm ships it, installed by
//! scripts/test into .tools/dbmate). dbmate records nothing for a failed migration (and prints
//! "Applied:" for it): a `transaction:false` file whose `CREATE UNIQUE INDEX CONCURRENTLY`
//! fails leaves an invalid index and no row, and every later `dbmate up` fails "already exists".
//! pgmedic reports it `half_applied` (the daemon within one watch interval), diagnose proves it
//! stopped at none with the index left over, and the playbook either rolls it back (the index
//! dropped, so the fixed file deploys) or finishes it and records it applied as dbmate would.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::migrate;
use common::*;

const ONE: &str = "-- migrate:up\nCREATE TABLE accounts (id bigint PRIMARY KEY, email text);\nINSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com'), (3, 'c@example.com');\n\n-- migrate:down\nDROP TABLE accounts;\n";
const TWO: &str = "20260102000000_email_unique";
const TWO_SQL: &str = "-- migrate:up transaction:false\nCREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email);\n\n-- migrate:down\nDROP INDEX accounts_email_key;\n";

struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    fn new() -> Project {
        let tools = std::env::var("PGMEDIC_TEST_DBMATE")
            .expect("PGMEDIC_TEST_DBMATE: run the suite with scripts/test, which installs dbmate");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::os::unix::fs::symlink(Path::new(&tools).join("node_modules"), root.join("node_modules"))
            .unwrap();
        std::fs::create_dir_all(root.join("db/migrations")).unwrap();
        std::fs::write(root.join("db/migrations/20260101000000_accounts.sql"), ONE).unwrap();
        Project { _dir: dir, root }
    }

    fn migrations(&self) -> PathBuf {
        self.root.join("db/migrations")
    }

    /// `dbmate up`: its exit status and everything it printed.
    fn up(&self, db: &TestDb) -> (bool, String) {
        let out = Command::new(self.root.join("node_modules/@dbmate/linux-x64/bin/dbmate"))
            .args(["--no-dump-schema", "--migrations-dir", &self.migrations().display().to_string(), "up"])
            .env("DATABASE_URL", format!("{}?sslmode=disable", db.url()))
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

/// The first migration deployed and snapshotted, then the unique index over duplicate emails
/// deployed and failed: an invalid index, no row.
fn failed(label: &str, tail: &str) -> (TestDb, Project, Pgmedic) {
    let db = TestDb::new(label);
    let p = Project::new();
    let (ok, out) = p.up(&db);
    assert!(ok, "{out}");
    let pgm = migrate::config(&db, &p.migrations(), &format!("tool = \"dbmate\"\n{tail}"));
    pgm.snapshot("app");
    std::fs::write(p.migrations().join(format!("{TWO}.sql")), TWO_SQL).unwrap();
    let (ok, out) = p.up(&db);
    assert!(!ok && out.contains("23505"), "the unique index fails over the duplicates: {out}");
    assert_eq!(db.sql("SELECT string_agg(version, ',') FROM schema_migrations"), "20260101000000");
    assert_eq!(db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "1", "an invalid index left");
    (db, p, pgm)
}

fn state_of(pgm: &Pgmedic, name: &str) -> Option<String> {
    let run = pgm.run(&["migrations", "--json"]);
    let ms = run.json()["app"]["migrations"].as_array().cloned().unwrap_or_default();
    ms.iter().find(|m| m["name"] == name).map(|m| m["status"].as_str().unwrap().to_string())
}

#[test]
fn a_failed_concurrent_index_is_half_applied_and_rolled_back_so_the_fixed_file_deploys() {
    let (hook, received) = webhook_event("/dbmate", "migration_failed");
    let notify = format!("watch_interval = \"1s\"\n\n[[notify]]\nwebhook = \"{hook}\"\n");
    let playbook = "[[playbooks]]\nname = \"back\"\nsteps = [{ resolve = \"from-diagnosis\" }]\n";
    let (db, p, pgm) = failed("dbmatehalf", &format!("{notify}{playbook}"));
    let (ok, out) = p.up(&db);
    assert!(!ok && out.contains("already exists"), "dbmate itself is stuck: {out}");

    let run = pgm.run(&["migrations", "--json"]);
    let app = &run.json()["app"];
    let two = app["migrations"].as_array().unwrap().iter().find(|m| m["name"] == TWO).cloned();
    let two = two.unwrap_or_else(|| panic!("the failed file is listed: {app:#}"));
    assert_eq!(two["status"], "half_applied", "{app:#}");
    assert!(two["logs"].as_str().unwrap().contains("accounts_email_key"), "{two:#}");
    assert_eq!(app["invalid_indexes"][0]["index"], "accounts_email_key", "{app:#}");

    // The daemon sees it within one watch interval and says so once.
    {
        let _daemon = Daemon::start(&pgm);
        let event = received.join().unwrap();
        assert!(event.contains("\"migration_failed\"") && event.contains(TWO), "{event}");
        assert!(event.contains("half_applied"), "{event}");
    }

    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    assert_eq!(r["migration"], TWO, "{r:#}");
    assert_eq!((r["proof"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(0)), "{r:#}");
    // dbmate stores no error and prints "Applied:": the server's log has the cause, the first
    // error of the file since the baseline (not the "already exists" of the retry).
    let log = r["server_log"].as_str().unwrap_or_else(|| panic!("{r:#}"));
    assert!(log.starts_with("ERROR:  could not create unique index \"accounts_email_key\""), "{log}");
    assert!(log.contains("DETAIL:") && log.contains("STATEMENT:"), "{log}");

    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0", "the invalid index went");
    assert_eq!(state_of(&pgm, TWO), None, "nothing of it is left, so it is only pending");

    // The file fixed (the duplicate merged first, by hand): dbmate's own next deploy succeeds.
    db.sql("DELETE FROM accounts WHERE id = 2");
    let (ok, out) = p.up(&db);
    assert!(ok, "{out}");
    assert_eq!(
        db.sql("SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"),
        "20260101000000,20260102000000"
    );
    assert_eq!(
        db.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email_key'::regclass"),
        "t"
    );
}

/// The data fixed instead of the file: finish drops the invalid index and builds it again,
/// resolve applied writes dbmate's own row, and dbmate's next `up` has nothing left to run.
#[test]
fn a_half_applied_index_is_finished_and_recorded_as_dbmate_records_it() {
    let playbook = "[[playbooks]]\nname = \"on\"\nsteps = [{ finish = true }, { resolve = \"applied\" }]\n";
    let (db, p, pgm) = failed("dbmatefinish", playbook);
    db.sql("DELETE FROM accounts WHERE id = 2");
    assert_eq!(state_of(&pgm, TWO).as_deref(), Some("half_applied"));

    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(
        db.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email_key'::regclass"),
        "t"
    );
    assert_eq!(
        db.sql("SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"),
        "20260101000000,20260102000000"
    );
    let (ok, out) = p.up(&db);
    assert!(ok && !out.contains("Applying"), "nothing left to run: {out}");
    assert_eq!(state_of(&pgm, TWO).as_deref(), Some("applied"));
}
