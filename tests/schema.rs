//! The schema text stored with every snapshot (`schema.sql.zst`, for diagnose), and the one
//! database snapshot that the manifest's migration rows, the dump and the schema all read.

mod common;

use std::time::Duration;

use common::*;
use sha2::Digest;

const MINUTE: Duration = Duration::from_secs(60);

fn stored_schema(pgm: &Pgmedic, m: &serde_json::Value) -> String {
    let obj = &m["schema"];
    let path = pgm.snapshots_dir().join(format!(
        "app/{}/{}",
        m["id"].as_str().unwrap(),
        obj["object"].as_str().unwrap()
    ));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        obj["sha256"].as_str().unwrap(),
        "the manifest's hash"
    );
    String::from_utf8(zstd::decode_all(&bytes[..]).unwrap()).unwrap()
}

#[test]
fn every_snapshot_stores_its_schema_and_prune_removes_it() {
    let db = TestDb::new("schema");
    db.sql("CREATE TABLE t(id int PRIMARY KEY, note text); CREATE INDEX t_note ON t(note); INSERT INTO t VALUES (1, 'x')");
    let pgm = Pgmedic::new(
        Backend::Local,
        &[("app", &db.url())],
        "",
        "retention = { keep_last = 1, keep_daily = 0, keep_weekly = 0, keep_monthly = 0 }",
    );
    let first = pgm.snapshot("app");
    assert_eq!(first["schema"]["object"], "schema.sql.zst", "{first}");
    let text = stored_schema(&pgm, &first);
    assert!(text.contains("CREATE TABLE public.t") && text.contains("CREATE INDEX t_note"), "{text}");
    assert!(!text.contains("COPY public.t"), "schema only: {text}");
    pgm.snapshot("app");
    assert_eq!(pgm.run(&["prune"]).code, 0);
    let gone = pgm.snapshots_dir().join(format!("app/{}", first["id"].as_str().unwrap()));
    assert!(!gone.exists(), "prune removed the schema with the rest: {}", gone.display());
}

/// A pg_bin_dir whose pg_dump waits for a file before dumping: the snapshot has begun (its lock
/// taken, its database snapshot exported) while the database can still change.
fn waiting_pg_dump(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (started, gate) = (dir.join("started"), dir.join("gate"));
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version) exec pg_dump --version;; esac\ntouch '{}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done\nexec pg_dump \"$@\"\n",
        started.display(),
        gate.display()
    );
    std::fs::write(dir.join("pg_dump"), script).unwrap();
    std::process::Command::new("chmod").arg("755").arg(dir.join("pg_dump")).status().unwrap();
    for tool in ["pg_dumpall", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(which(tool), dir.join(tool)).unwrap();
    }
    (started, gate)
}

#[test]
fn migration_rows_dump_and_schema_are_one_database_snapshot() {
    let db = TestDb::new("one_snapshot");
    db.sql(
        "CREATE TABLE _prisma_migrations (id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL, finished_at timestamptz, \
         migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz, started_at timestamptz NOT NULL DEFAULT now(), \
         applied_steps_count int NOT NULL DEFAULT 0); \
         INSERT INTO _prisma_migrations (id, checksum, migration_name, finished_at) VALUES ('a', 'c', '1_init', now())",
    );
    let tools = tempfile::tempdir().unwrap();
    let (started, gate) = waiting_pg_dump(tools.path());
    let pgm = Pgmedic::new(
        Backend::Local,
        &[("app", &db.url())],
        "",
        &format!("pg_bin_dir = \"{}\"", tools.path().display()),
    );
    let child = pgm.command(&["snapshot", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    wait_for("pg_dump to be about to start", MINUTE, || started.exists());
    // A deploy lands while the snapshot runs: none of it may show in the snapshot.
    db.sql("INSERT INTO _prisma_migrations (id, checksum, migration_name, finished_at) VALUES ('b', 'c', '2_late', now()); CREATE TABLE late(x int)");
    std::fs::write(&gate, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = m["migrations"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "the manifest's rows are as of the snapshot: {rows:?}");
    assert!(!stored_schema(&pgm, &m).contains("public.late"), "the schema is as of the snapshot");
    let target = TestDb::reserved("one_snapshot_copy");
    let real = real_bin_dir();
    let restore = pgm.run_env(
        &["restore", m["id"].as_str().unwrap(), "--target", &target.name, "--create"],
        &[(real.0, &real.1)],
    );
    assert_eq!(restore.code, 0, "{restore:?}");
    assert_eq!(target.sql("SELECT to_regclass('late') IS NULL"), "t", "the dump is as of the snapshot");
    assert_eq!(target.sql("SELECT count(*) FROM _prisma_migrations"), "1");
}
