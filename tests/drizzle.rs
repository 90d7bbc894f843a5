//! drizzle-kit, driven with the real drizzle-kit 0.31 (installed by scripts/test into
//! .tools/drizzle). It runs every pending migration in one transaction and prints no error when
//! one fails: nothing is left behind and nothing says why. `diagnose --migration <tag>` names the
//! pending migration's cause from the server log. A migration whose objects are already there
//! (run by hand) is `half_applied`; the replay proves all of it ran, and `from-diagnosis` writes
//! drizzle's own row (the file's SHA-256, the journal's `when`), so drizzle's next `migrate` has
//! nothing left to run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::migrate;
use common::*;

const CONFIG: &str = "module.exports = { dialect: 'postgresql', out: './drizzle', dbCredentials: { url: process.env.DATABASE_URL } };\n";
const ACCOUNTS: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, email text);\n--> statement-breakpoint\nINSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com'), (3, 'c@example.com');\n";
const UNIQUE: &str = "CREATE TABLE audit (id integer PRIMARY KEY, note text);\n--> statement-breakpoint\nCREATE UNIQUE INDEX accounts_email_key ON accounts (email);\n";

struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    fn new() -> Project {
        let tools = std::env::var("PGMEDIC_TEST_DRIZZLE")
            .expect("PGMEDIC_TEST_DRIZZLE: run the suite with scripts/test, which installs drizzle-kit");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::os::unix::fs::symlink(Path::new(&tools).join("node_modules"), root.join("node_modules"))
            .unwrap();
        std::fs::write(root.join("drizzle.config.js"), CONFIG).unwrap();
        std::fs::create_dir_all(root.join("drizzle/meta")).unwrap();
        let p = Project { _dir: dir, root };
        p.add(&[("0000_accounts", ACCOUNTS, 1_700_000_000_000)]);
        p
    }

    fn out(&self) -> PathBuf {
        self.root.join("drizzle")
    }

    /// Writes the migrations and a journal listing them, as `drizzle-kit generate` would.
    fn add(&self, all: &[(&str, &str, i64)]) {
        let entries: Vec<serde_json::Value> = all
            .iter()
            .enumerate()
            .map(|(i, (tag, sql, when))| {
                std::fs::write(self.out().join(format!("{tag}.sql")), sql).unwrap();
                serde_json::json!({"idx": i, "version": "7", "when": when, "tag": tag, "breakpoints": true})
            })
            .collect();
        let journal = serde_json::json!({"version": "7", "dialect": "postgresql", "entries": entries});
        std::fs::write(self.out().join("meta/_journal.json"), journal.to_string()).unwrap();
    }

    /// `drizzle-kit migrate`: its success and everything it printed.
    fn migrate(&self, db: &TestDb) -> (bool, String) {
        let out = Command::new("node")
            .arg(self.root.join("node_modules/drizzle-kit/bin.cjs"))
            .args(["migrate", "--config", "drizzle.config.js"])
            .current_dir(&self.root)
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

#[test]
fn a_silent_failure_is_explained_and_a_migration_run_by_hand_is_recorded_as_drizzle_records_it() {
    let db = TestDb::new("drizzle");
    let p = Project::new();
    let (ok, out) = p.migrate(&db);
    assert!(ok, "{out}");
    let playbook = "[[playbooks]]\nname = \"record\"\nsteps = [{ resolve = \"from-diagnosis\" }]\n";
    let pgm = migrate::config(&db, &p.out(), &format!("tool = \"drizzle\"\n{playbook}"));
    pgm.snapshot("app");

    p.add(&[("0000_accounts", ACCOUNTS, 1_700_000_000_000), ("0001_unique", UNIQUE, 1_700_000_001_000)]);
    let (ok, out) = p.migrate(&db);
    assert!(
        !ok && !out.contains("duplicate") && !out.contains("unique index"),
        "drizzle-kit fails and says nothing: {out}"
    );
    assert_eq!(db.sql("SELECT to_regclass('audit') IS NULL"), "t", "its transaction rolled back");
    let state = pgm.run(&["migrations", "--json"]).json();
    let names: Vec<String> = state["app"]["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}:{}", m["name"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(names, ["0000_accounts:applied"], "{state:#}");

    // The pending migration, explained: the server log has what drizzle-kit did not print.
    let r = &pgm.run(&["diagnose", "--migration", "0001_unique", "--json"]).json()[0];
    assert_eq!(
        (r["migration"].as_str(), r["status"].as_str()),
        (Some("0001_unique"), Some("pending")),
        "{r:#}"
    );
    let log = r["server_log"].as_str().unwrap_or_else(|| panic!("{r:#}"));
    assert!(log.contains("could not create unique index \"accounts_email_key\""), "{log}");

    // The duplicate merged and the migration run by hand: its objects are there, its row is not.
    db.sql("DELETE FROM accounts WHERE id = 2");
    db.sql(&UNIQUE.replace("--> statement-breakpoint", ""));
    let state = pgm.run(&["migrations", "--json"]).json();
    let half = &state["app"]["migrations"][1];
    assert_eq!(
        (half["name"].as_str(), half["status"].as_str()),
        (Some("0001_unique"), Some("half_applied")),
        "{state:#}"
    );
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(UNIQUE.as_bytes()))
    };
    assert_eq!(
        db.sql("SELECT hash || ' ' || created_at FROM drizzle.__drizzle_migrations ORDER BY created_at DESC LIMIT 1"),
        format!("{sha} 1700000001000")
    );
    let (ok, out) = p.migrate(&db);
    assert!(ok, "drizzle-kit has nothing left to run: {out}");
    assert_eq!(db.sql("SELECT count(*) FROM drizzle.__drizzle_migrations"), "2");
}
