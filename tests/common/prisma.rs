//! The P3009 fixture that the real Prisma CLI left behind, and what the repair tests need
//! around it: loading it, reading its rows as Prisma's own query printed them, playbooks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::*;

pub const FAILED: &str = "20250520130900_add_plugin_credential_model";

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prisma-p3009").join(rel)
}

pub fn p3009() -> TestDb {
    let db = TestDb::new("p3009");
    psql_file(&db.name, &fixture("database.sql"));
    db
}

/// The query that produced the fixture's after-*.txt files, in psql's aligned format.
pub fn prisma_rows(db: &TestDb) -> String {
    let sql = "SELECT migration_name, checksum, finished_at IS NOT NULL AS finished, rolled_back_at IS NOT NULL AS rolled_back, \
               applied_steps_count, logs IS NULL AS logs_null, logs = '' AS logs_empty, started_at = finished_at AS started_eq_finished \
               FROM _prisma_migrations ORDER BY started_at, finished_at NULLS FIRST";
    let out = Command::new("psql")
        .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-X", "-c", sql])
        .output()
        .unwrap();
    normalise(&String::from_utf8_lossy(&out.stdout))
}

pub fn normalise(text: &str) -> String {
    text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

pub const HOTFIX: &str = r#"
CREATE TABLE IF NOT EXISTS "PluginCredential" ("id" TEXT NOT NULL, "userId" INTEGER NOT NULL, "secret" TEXT NOT NULL,
    CONSTRAINT "PluginCredential_pkey" PRIMARY KEY ("id"));
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'PluginCredential_userId_fkey') THEN
    ALTER TABLE "PluginCredential" ADD CONSTRAINT "PluginCredential_userId_fkey"
      FOREIGN KEY ("userId") REFERENCES "User"("id") ON DELETE CASCADE ON UPDATE CASCADE;
  END IF;
END $$;
"#;

/// A config for `db` with the fixture's migrations dir, `[repair]` lines and playbooks.
pub fn setup(backend: Backend, db: &TestDb, repair: &str, playbooks: &str) -> Pgmedic {
    let tail = format!(
        "\n[repair]\n{repair}\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ndir = \"{}\"\n{playbooks}",
        db.url(),
        fixture("migrations").display()
    );
    Pgmedic::custom(backend, "", "", "", &tail)
}

pub fn hotfix_playbook(pgm_dir: &Path) -> String {
    let file = pgm_dir.join("hotfix.sql");
    std::fs::write(&file, HOTFIX).unwrap();
    format!(
        "\n[[playbooks]]\nname = \"finish-plugin-credential\"\nmatch = {{ migration = \"*_add_plugin_credential_model\", log_contains = \"Users\" }}\n\
         steps = [ {{ sql_file = \"{}\" }}, {{ resolve = \"applied\" }}, \
         {{ assert_sql = \"SELECT NOT EXISTS (SELECT 1 FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL)\" }} ]\n",
        file.display()
    )
}

pub fn with_playbook(
    backend: Backend,
    db: &TestDb,
    repair: &str,
    playbook: impl Fn(&Path) -> String,
) -> Pgmedic {
    let pgm = setup(backend, db, repair, "");
    let text = std::fs::read_to_string(&pgm.config).unwrap() + &playbook(pgm.dir.path());
    pgm.write_config(&text);
    pgm
}

/// A psql session that holds an advisory lock until dropped.
pub struct LockHolder(Child);

impl LockHolder {
    pub fn take(db: &TestDb, lock_sql: &str) -> LockHolder {
        let mut child = Command::new("psql")
            .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-X", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "SELECT {lock_sql};\n\\echo locked").unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("locked") {
            line.clear();
            assert!(
                std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
                "psql ended before taking the lock"
            );
        }
        LockHolder(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
