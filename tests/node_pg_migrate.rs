//! node-pg-migrate, driven with the real node-pg-migrate 9 CLI (installed by scripts/test into
//! .tools/node-pg-migrate). Its SQL files run in the batch's transaction; a JavaScript migration
//! with `pgm.noTransaction()` that fails half way commits what ran and records nothing, and every
//! later `up` fails "already exists". pgmedic finds it `half_applied` from the schema against the
//! snapshot whose rows are today's, undoes what it left (proven on the baseline first), and the
//! fixed data deploys with node-pg-migrate's own `up`. While its advisory lock is held it is in
//! progress and nothing is repaired.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::migrate;
use common::*;

const ACCOUNTS: &str = "-- Up Migration\nCREATE TABLE accounts (id bigint PRIMARY KEY, email text);\nINSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com'), (3, 'c@example.com');\n-- Down Migration\nDROP TABLE accounts;\n";
const AUDIT: &str = "2000_audit";
const AUDIT_JS: &str = "exports.up = (pgm) => {
  pgm.noTransaction();
  pgm.createTable('audit', { id: 'id', note: 'text' });
  pgm.addColumn('accounts', { verified_at: 'timestamptz' });
  pgm.sql('CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email)');
};
exports.down = (pgm) => {
  pgm.sql('DROP INDEX IF EXISTS accounts_email_key');
  pgm.dropColumn('accounts', 'verified_at');
  pgm.dropTable('audit');
};
";

struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    fn new() -> Project {
        let tools = std::env::var("PGMEDIC_TEST_NODE_PG_MIGRATE").expect(
            "PGMEDIC_TEST_NODE_PG_MIGRATE: run the suite with scripts/test, which installs node-pg-migrate",
        );
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::os::unix::fs::symlink(Path::new(&tools).join("node_modules"), root.join("node_modules"))
            .unwrap();
        std::fs::create_dir(root.join("migrations")).unwrap();
        std::fs::write(root.join("migrations/1000_accounts.sql"), ACCOUNTS).unwrap();
        Project { _dir: dir, root }
    }

    fn migrations(&self) -> PathBuf {
        self.root.join("migrations")
    }

    /// `node-pg-migrate up`: its success and everything it printed.
    fn up(&self, db: &TestDb) -> (bool, String) {
        let out = Command::new("node")
            .arg(self.root.join("node_modules/node-pg-migrate/bin/node-pg-migrate.js"))
            .args(["up", "-m"])
            .arg(self.migrations())
            .current_dir(&self.root)
            .env("DATABASE_URL", db.url())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

fn statuses(pgm: &Pgmedic) -> Vec<(String, String)> {
    let state = pgm.run(&["migrations", "--json"]).json();
    let ms = state["app"]["migrations"].as_array().cloned().unwrap_or_default();
    ms.iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["status"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_half_applied_no_transaction_migration_is_found_undone_and_deployed_again() {
    let db = TestDb::new("npgmhalf");
    let p = Project::new();
    let (ok, out) = p.up(&db);
    assert!(ok, "{out}");
    let playbook =
        "[[playbooks]]\nname = \"back\"\nsteps = [{ undo = true }, { resolve = \"rolled-back\" }]\n";
    let pgm = migrate::config(&db, &p.migrations(), &format!("tool = \"auto\"\n{playbook}"));
    pgm.snapshot("app");

    std::fs::write(p.migrations().join(format!("{AUDIT}.js")), AUDIT_JS).unwrap();
    let (ok, out) = p.up(&db);
    assert!(!ok && out.contains("accounts_email_key"), "the index fails over the duplicates: {out}");
    assert_eq!(db.sql("SELECT string_agg(name, ',') FROM pgmigrations"), "1000_accounts");
    assert_eq!(db.sql("SELECT to_regclass('audit') IS NOT NULL"), "t", "the table was committed");
    let (ok, out) = p.up(&db);
    assert!(!ok && out.contains("already exists"), "node-pg-migrate itself is stuck: {out}");

    let state = pgm.run(&["migrations", "--json"]).json();
    assert_eq!(state["app"]["tool"], "node-pg-migrate (detected)", "{state:#}");
    let half = state["app"]["migrations"].as_array().unwrap().iter().find(|m| m["name"] == AUDIT).cloned();
    let half = half.unwrap_or_else(|| panic!("{state:#}"));
    assert_eq!(half["status"], "half_applied", "{half:#}");
    let logs = half["logs"].as_str().unwrap();
    for object in [
        "table public.audit",
        "column public.accounts.verified_at",
        "invalid index public.accounts_email_key",
    ] {
        assert!(logs.contains(object), "{object}: {logs}");
    }

    // While node-pg-migrate's lock is held, a deploy is under way: nothing is judged or repaired.
    {
        let _holder = common::js::Holder::advisory(&db, 7241865325823964);
        let names: Vec<String> = statuses(&pgm).into_iter().map(|(n, s)| format!("{n}:{s}")).collect();
        assert_eq!(names, ["1000_accounts:applied", "pgmigrations_lock:in_progress"]);
        let run = pgm.run(&["repair", "--db", "app", "--json"]);
        assert_eq!(run.code, 3, "{run:?}");
    }

    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    assert_eq!(
        (r["migration"].as_str(), r["attribution"].as_str()),
        (Some(AUDIT), Some("position")),
        "{r:#}"
    );
    let n = r["statements"].as_array().unwrap().len() as u64;
    assert_eq!((r["proof"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(n - 1)), "{r:#}");

    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(db.sql("SELECT to_regclass('audit') IS NULL"), "t");
    assert_eq!(db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
    assert_eq!(db.sql("SELECT count(*) FROM accounts"), "3");

    db.sql("DELETE FROM accounts WHERE id = 2");
    let (ok, out) = p.up(&db);
    assert!(ok, "{out}");
    assert_eq!(
        db.sql("SELECT string_agg(name, ',' ORDER BY id) FROM pgmigrations"),
        format!("1000_accounts,{AUDIT}")
    );
    let want =
        [("1000_accounts", "applied"), (AUDIT, "applied")].map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(statuses(&pgm), want);
}
