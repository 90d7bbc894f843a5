//! A JavaScript migration tool's project for the dialect tests: a folder with the real tool's
//! `node_modules` (installed by scripts/test into .tools/<tool>, named by an environment
//! variable), the project's files, and the tool run with `node` and `DATABASE_URL`. Also the one
//! scenario every code-first tool shares: a non-transactional migration that created a table and
//! a column and then failed on a unique index over duplicate rows.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Pgmedic, TestDb};

pub struct Project {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Project {
    /// `env`: the variable naming the tool's install; `files`: (path, text) in the project.
    pub fn new(env: &str, files: &[(&str, &str)]) -> Project {
        let tools = std::env::var(env)
            .unwrap_or_else(|_| panic!("{env}: run the suite with scripts/test, which installs the tool"));
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::os::unix::fs::symlink(Path::new(&tools).join("node_modules"), root.join("node_modules"))
            .unwrap();
        let p = Project { _dir: dir, root };
        for (path, text) in files {
            p.write(path, text);
        }
        p
    }

    pub fn write(&self, path: &str, text: &str) {
        let at = self.root.join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, text).unwrap();
    }

    /// `node <script> <args>` in the project: its success and everything it printed.
    pub fn node(&self, db: &TestDb, script: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("node")
            .arg(self.root.join(script))
            .args(args)
            .current_dir(&self.root)
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

/// Each migration's name and status as `migrations --json` lists them.
pub fn statuses(pgm: &Pgmedic) -> Vec<String> {
    let state = pgm.run(&["migrations", "--json"]).json();
    let ms = state["app"]["migrations"].as_array().cloned().unwrap_or_default();
    ms.iter().map(|m| format!("{}:{}", m["name"].as_str().unwrap(), m["status"].as_str().unwrap())).collect()
}

/// After `failed` (a migration that left table `audit`, column `accounts.verified_at` and the
/// invalid index `accounts_email_key`, with no row): pgmedic lists it `half_applied` naming the
/// three objects, diagnoses it by position with the failed index last, undoes it with the
/// configured playbook, and after the duplicate is removed `deploy` (the tool's own) succeeds and
/// every migration is applied.
pub fn half_applied_is_undone_and_deployed(
    db: &TestDb,
    pgm: &Pgmedic,
    failed: &str,
    deploy: &dyn Fn() -> (bool, String),
) {
    let (ok, out) = deploy();
    assert!(!ok && out.contains("already exists"), "the tool itself is stuck: {out}");
    let state = pgm.run(&["migrations", "--json"]).json();
    let ms = state["app"]["migrations"].as_array().cloned().unwrap_or_default();
    let half = ms.iter().find(|m| m["name"] == failed).cloned().unwrap_or_else(|| panic!("{state:#}"));
    assert_eq!(half["status"], "half_applied", "{half:#}");
    let logs = half["logs"].as_str().unwrap();
    for object in [
        "table public.audit",
        "column public.accounts.verified_at",
        "invalid index public.accounts_email_key",
    ] {
        assert!(logs.contains(object), "{object}: {logs}");
    }
    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    assert_eq!(
        (r["migration"].as_str(), r["attribution"].as_str()),
        (Some(failed), Some("position")),
        "{r:#}"
    );
    let n = r["statements"].as_array().unwrap().len() as u64;
    assert_eq!((r["proof"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(n - 1)), "{r:#}");
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(db.sql("SELECT to_regclass('audit') IS NULL"), "t");
    assert_eq!(
        db.sql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'verified_at'"),
        "0"
    );
    assert_eq!(db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
    assert_eq!(db.sql("SELECT count(*) FROM accounts"), "3", "no row was lost");
    db.sql("DELETE FROM accounts WHERE id = 2");
    let (ok, out) = deploy();
    assert!(ok, "{out}");
    assert_eq!(db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
    let all = statuses(pgm);
    assert!(all.len() == 2 && all.iter().all(|s| s.ends_with(":applied")), "{all:?}");
}

/// A psql session holding a session-level advisory lock until dropped.
pub struct Holder(std::process::Child);

impl Holder {
    pub fn advisory(db: &TestDb, key: i64) -> Holder {
        let mut child = std::process::Command::new("psql")
            .args(["-h", super::PG_HOST, "-U", "postgres", "-d", &db.name, "-Xq"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.as_mut().unwrap(), "SELECT pg_advisory_lock({key});").unwrap();
        super::wait_for("the advisory lock", std::time::Duration::from_secs(10), || {
            db.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()") == "1"
        });
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
