//! A Prisma-style deploy for tests, run the way Prisma's JS engine runs a migration: a row in
//! `_prisma_migrations` first, then the file's statements one at a time in autocommit (psql
//! with ON_ERROR_STOP: PostgreSQL's own lexer splits them), stopping at the first error, whose
//! SQLSTATE goes into the row's log in the Rust engine's P3018 format.

use std::path::Path;
use std::process::Command;

use sha2::Digest;

use super::*;

pub const PRISMA_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL, "checksum" VARCHAR(64) NOT NULL, "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), "applied_steps_count" INTEGER NOT NULL DEFAULT 0)"#;

/// SQL through psql with `PGOPTIONS` (Prisma's `?schema=` is `-c search_path=…`), one query.
pub fn sql_with(db: &TestDb, sql: &str, pgoptions: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            PG_HOST,
            "-p",
            PG_PORT,
            "-U",
            "postgres",
            "-d",
            &db.name,
            "-Xq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env("PGOPTIONS", pgoptions)
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Deploys `dir/name/migration.sql` to `db`; `Err(log)` when a statement failed.
pub fn deploy(db: &TestDb, dir: &Path, name: &str, pgoptions: &str) -> Result<(), String> {
    let file = dir.join(name).join("migration.sql");
    let checksum = hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()));
    sql_with(db, PRISMA_TABLE, pgoptions);
    let id = format!("{:08x}-0000-4000-8000-{:012x}", rand::random::<u32>(), rand::random::<u64>() >> 16);
    let insert = format!(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, started_at) VALUES ('{id}', '{checksum}', '{name}', clock_timestamp())"
    );
    sql_with(db, &insert, pgoptions);
    let out = Command::new("psql")
        .args(["-h", PG_HOST, "-p", PG_PORT, "-U", "postgres", "-d", &db.name, "-Xq"])
        .args(["-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-f"])
        .arg(&file)
        .env("PGOPTIONS", pgoptions)
        .output()
        .unwrap();
    if out.status.success() {
        let done = format!("UPDATE _prisma_migrations SET finished_at = clock_timestamp(), applied_steps_count = 1 WHERE id = '{id}'");
        sql_with(db, &done, pgoptions);
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // psql (verbose): `psql:FILE:LINE: ERROR:  42P01: relation "Users" does not exist`.
    let error = stderr.split("ERROR:  ").nth(1).unwrap_or(&stderr).lines().next().unwrap_or("").to_string();
    let (code, message) = error.split_once(": ").unwrap_or(("", &error));
    let log = format!(
        "Migration name: {name}\n\nDatabase error code: {code}\n\nDatabase error:\nERROR: {message}\n"
    );
    sql_with(
        db,
        &format!("UPDATE _prisma_migrations SET logs = $log${log}$log$ WHERE id = '{id}'"),
        pgoptions,
    );
    Err(log)
}

/// Writes `sql` as migration `name` under `dir`.
pub fn write_migration(dir: &Path, name: &str, sql: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(dir.join(name).join("migration.sql"), sql).unwrap();
}

/// The schema of `db` as pg_dump prints it (without the random `\restrict` key).
pub fn schema_dump(db: &str) -> String {
    let out = Command::new("pg_dump")
        .args(["-h", PG_HOST, "-p", PG_PORT, "-U", "postgres", "--no-password", "--schema-only", "-d", db])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config for `db` with migrations in `dir`, local storage, and `tail` appended (playbooks).
pub fn config(db: &TestDb, dir: &Path, tail: &str) -> Pgmedic {
    config_scratch(db, dir, "", tail)
}

/// The same, with `scratch` lines in `[scratch]` (`server = "source"`).
pub fn config_scratch(db: &TestDb, dir: &Path, scratch: &str, tail: &str) -> Pgmedic {
    let tail = format!(
        "{scratch}\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ndir = \"{}\"\n{tail}",
        db.url(),
        dir.display()
    );
    Pgmedic::custom(Backend::Local, "", "", "", &tail)
}

/// A psql session holding a lock in an open transaction until dropped.
pub struct Holder(std::process::Child);

impl Holder {
    /// `table` as SQL (qualified as needed), `relname` its bare name.
    pub fn lock(db: &TestDb, table: &str, relname: &str) -> Holder {
        let mut child = Command::new("psql")
            .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-Xq"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.as_mut().unwrap(), "BEGIN; LOCK TABLE {table} IN ACCESS SHARE MODE;").unwrap();
        wait_for("the lock", std::time::Duration::from_secs(10), || {
            db.sql(&format!("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = '{relname}' AND l.mode = 'AccessShareLock' AND l.pid <> pg_backend_pid()")) != "0"
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
