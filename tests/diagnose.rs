//! `diagnose` on the P3009 fixture the real Prisma CLI left behind, its drafted undo run as a
//! playbook step, and the refusals: an undo over rows, a crashed migration whose backend still
//! runs, a migration file that is missing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::migrate::{self, schema_dump};
use common::prisma::{self, FAILED};
use common::*;

/// The fixture's migrations, copied so that a test may edit or remove them.
fn copy_migrations(to: &Path) {
    for entry in std::fs::read_dir(prisma::fixture("migrations")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let sql = std::fs::read(entry.path().join("migration.sql")).unwrap();
            std::fs::create_dir_all(to.join(entry.file_name())).unwrap();
            std::fs::write(to.join(entry.file_name()).join("migration.sql"), sql).unwrap();
        }
    }
}

struct Failed {
    db: TestDb,
    dir: tempfile::TempDir,
    pgm: Pgmedic,
    baseline_id: String,
    baseline_schema: String,
}

/// The fixture, with a snapshot from before its failed migration: the fixture is taken back to
/// that state, snapshotted, and the migration fails again exactly as it did under Prisma's JS
/// engine (each statement on its own: the table is created, the foreign key fails). The result
/// is checked to be the very schema the real Prisma CLI left.
fn fixture_with_baseline() -> Failed {
    let db = prisma::p3009();
    let left_by_prisma = schema_dump(&db.name);
    let row = |col: &str| {
        db.sql(&format!("SELECT {col} FROM _prisma_migrations WHERE migration_name = '{FAILED}'"))
    };
    let (id, checksum, logs) = (row("id"), row("checksum"), row("logs"));
    db.sql(&format!(
        r#"DROP TABLE "PluginCredential"; DELETE FROM _prisma_migrations WHERE migration_name = '{FAILED}'"#
    ));
    let dir = tempfile::tempdir().unwrap();
    copy_migrations(dir.path());
    let pgm = migrate::config(&db, dir.path(), "");
    let baseline = pgm.snapshot("app");
    let baseline_schema = schema_dump(&db.name);
    let status = Command::new("psql")
        .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-Xq", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(dir.path().join(FAILED).join("migration.sql"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the migration fails on \"Users\"");
    db.sql(&format!(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at) VALUES ('{id}', '{checksum}', '{FAILED}', $l${logs}$l$, clock_timestamp())"
    ));
    assert_eq!(schema_dump(&db.name), left_by_prisma, "the same schema the real Prisma CLI left");
    Failed { db, dir, pgm, baseline_id: baseline["id"].as_str().unwrap().to_string(), baseline_schema }
}

fn diagnose(pgm: &Pgmedic) -> serde_json::Value {
    let run = pgm.run(&["diagnose", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let all = run.json();
    assert_eq!(all.as_array().unwrap().len(), 1, "one failed migration: {all}");
    all[0].clone()
}

fn add_playbook(f: &Failed, toml: &str) {
    let text = std::fs::read_to_string(&f.pgm.config).unwrap() + "\n" + toml;
    f.pgm.write_config(&text);
}

#[test]
fn the_fixture_is_explained_undone_to_its_baseline_and_the_fixed_migration_deploys() {
    let f = fixture_with_baseline();
    let r = diagnose(&f.pgm);
    assert_eq!((r["migration"].as_str(), r["status"].as_str()), (Some(FAILED), Some("failed")), "{r:#}");
    assert_eq!(r["sqlstate"], "42P01", "{r:#}");
    assert!(r["log"].as_str().unwrap().contains("No such table: Users"), "{r:#}");
    let st = r["statements"].as_array().unwrap();
    assert_eq!(st.len(), 2, "{r:#}");
    assert!(st[0]["sql"].as_str().unwrap().starts_with("CREATE TABLE \"PluginCredential\""), "{r:#}");
    assert_eq!((st[0]["line"].as_u64(), st[0]["verdict"].as_str()), (Some(2), Some("applied")), "{r:#}");
    assert!(
        st[1]["sql"].as_str().unwrap().contains("FOREIGN KEY (\"userId\") REFERENCES \"Users\""),
        "{r:#}"
    );
    assert_eq!((st[1]["line"].as_u64(), st[1]["verdict"].as_str()), (Some(10), Some("not_applied")), "{r:#}");
    assert_eq!(r["created_tables"], serde_json::json!([{ "table": "\"PluginCredential\"", "rows": 0 }]));
    assert_eq!(r["baseline_snapshot"].as_str(), Some(f.baseline_id.as_str()), "{r:#}");
    let mut diff: Vec<String> = r["schema_diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c["change"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            )
        })
        .collect();
    diff.sort();
    assert_eq!(
        diff,
        ["added CONSTRAINT PluginCredential PluginCredential_pkey", "added TABLE PluginCredential"]
    );
    assert_eq!((r["proof"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(1)), "{r:#}");
    assert_eq!(
        r["failed_statement"], 2,
        "the foreign key fails on the copy too, with the logged 42P01: {r:#}"
    );
    // The same statement fails the same way when run again: no finish until the file is fixed.
    let why = r["playbooks"]["finish"]["why"].as_str().unwrap();
    assert!(why.starts_with("statement 2 failed with SQLSTATE 42P01, which is not transient"), "{why}");
    let undo = &r["playbooks"]["undo"];
    assert_eq!(undo["sql"], "DROP TABLE IF EXISTS \"PluginCredential\";\n", "{r:#}");

    let text = f.pgm.run(&["diagnose"]);
    for part in [
        "SQLSTATE 42P01",
        "  1. line 2    applied",
        "  2. line 10   not applied",
        "drafted playbook: undo",
        "resolve = \"rolled-back\"",
    ] {
        assert!(text.stdout.contains(part), "{part:?} in:\n{}", text.stdout);
    }

    add_playbook(&f, undo["toml"].as_str().unwrap());
    let run = f.pgm.run(&["repair", "--db", "app", "--json"]);
    let rec = run.json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(
        rec["steps"][0]["output"].as_str().unwrap().contains("DROP TABLE IF EXISTS \"PluginCredential\""),
        "the audit keeps the SQL: {rec:#}"
    );
    assert_eq!(schema_dump(&f.db.name), f.baseline_schema, "the schema is the baseline snapshot's");
    let expected = std::fs::read_to_string(prisma::fixture("after-resolve-rolled-back.txt")).unwrap();
    assert_eq!(
        prisma::prisma_rows(&f.db),
        prisma::normalise(&expected),
        "the rows `prisma migrate resolve --rolled-back` leaves"
    );

    let file = f.dir.path().join(FAILED).join("migration.sql");
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace("REFERENCES \"Users\"", "REFERENCES \"User\""),
    )
    .unwrap();
    migrate::deploy(&f.db, f.dir.path(), FAILED, "").expect("the fixed migration deploys");
    assert_eq!(
        f.db.sql("SELECT count(*) FROM pg_constraint WHERE conname = 'PluginCredential_userId_fkey'"),
        "1"
    );
}

#[test]
fn undo_refuses_to_drop_a_created_table_with_rows_unless_allowed() {
    let f = fixture_with_baseline();
    f.db.sql(r#"INSERT INTO "PluginCredential" VALUES ('a', 1, 's')"#);
    let r = diagnose(&f.pgm);
    assert_eq!(r["created_tables"][0]["rows"], 1, "{r:#}");
    let undo = r["playbooks"]["undo"]["toml"].as_str().unwrap().to_string();
    assert!(r["playbooks"]["undo"]["notes"][0].as_str().unwrap().contains("holds 1 rows"), "{r:#}");
    add_playbook(&f, &undo);
    let rec = f.pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "failed", "{rec:#}");
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.contains("table \"public\".\"PluginCredential\" holds 1 row(s)")
            && error.contains("allow_data_loss = true"),
        "{error}"
    );
    assert_eq!(f.db.sql(r#"SELECT count(*) FROM "PluginCredential""#), "1", "nothing changed");
    assert_eq!(f.db.sql(&format!("SELECT count(*) FROM _prisma_migrations WHERE migration_name = '{FAILED}' AND rolled_back_at IS NULL")), "1");

    let allowed = undo.replace("allow_data_loss = false", "allow_data_loss = true");
    let text = std::fs::read_to_string(&f.pgm.config).unwrap().replace(&undo, &allowed);
    f.pgm.write_config(&text);
    let rec = f.pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(f.db.sql("SELECT to_regclass('\"PluginCredential\"') IS NULL"), "t");
    assert_eq!(schema_dump(&f.db.name), f.baseline_schema);
}

#[test]
fn a_missing_migration_file_still_shows_the_schema_change_and_drafts_nothing() {
    let f = fixture_with_baseline();
    std::fs::remove_dir_all(f.dir.path().join(FAILED)).unwrap();
    let r = diagnose(&f.pgm);
    assert!(r["file_error"].as_str().unwrap().contains("cannot read"), "{r:#}");
    assert_eq!(r["statements"], serde_json::json!([]));
    assert_eq!(r["schema_diff"].as_array().unwrap().len(), 2, "{r:#}");
    for kind in ["finish", "undo"] {
        let d = &r["playbooks"][kind];
        assert!(
            d["toml"].is_null() && d["why"].as_str().unwrap().contains("cannot be judged"),
            "{kind}: {r:#}"
        );
    }
    add_playbook(
        &f,
        "[[playbooks]]\nname = \"finish\"\nsteps = [{ finish = true }, { resolve = \"applied\" }]\n",
    );
    let rec = f.pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "failed", "{rec:#}");
    assert!(rec["error"].as_str().unwrap().contains("finish of"), "{rec:#}");
    assert_eq!(rec["steps"][1]["outcome"], "planned", "resolve never ran: {rec:#}");
}

/// A psql session kept open, fed statements; killed on drop.
struct Session(std::process::Child);

impl Session {
    fn open(db: &TestDb, sql: &str) -> Session {
        let mut child = Command::new("psql")
            .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-Xq"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.as_mut().unwrap(), "{sql}").unwrap();
        Session(child)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_crashed_migration_whose_backend_still_runs_says_wait_and_is_not_repaired() {
    let db = TestDb::new("crashed");
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(
        dir.path(),
        "20250101000000_init",
        "CREATE TABLE \"User\" (\"id\" SERIAL PRIMARY KEY);\n",
    );
    migrate::deploy(&db, dir.path(), "20250101000000_init", "").unwrap();
    db.sql("INSERT INTO \"User\" DEFAULT VALUES");
    let name = "20250601000000_backfill";
    let statement = "UPDATE \"User\" SET \"id\" = \"id\" WHERE pg_sleep(120) IS NOT NULL;";
    migrate::write_migration(dir.path(), name, &format!("-- a slow backfill\n{statement}\n"));
    // The migrator died after starting its row; its backend goes on with the statement.
    db.sql(&format!(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name) VALUES ('x', 'c', '{name}')"
    ));
    let _orphan = Session::open(&db, statement);
    wait_for("the orphaned statement", std::time::Duration::from_secs(10), || {
        db.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'UPDATE \"User\"%' AND state = 'active'",
        ) == "1"
    });
    let pgm = migrate::config(
        &db,
        dir.path(),
        "[[playbooks]]\nname = \"finish\"\nsteps = [{ finish = true }, { resolve = \"applied\" }]\n",
    );
    let r = diagnose(&pgm);
    assert_eq!(r["status"], "crashed", "{r:#}");
    let wait = r["wait"].as_str().unwrap();
    assert!(wait.starts_with("wait: a backend of the migrator is still running (pid "), "{wait}");
    assert!(r["playbooks"]["finish"]["why"].as_str().unwrap().starts_with("wait:"), "{r:#}");
    let run = pgm.run(&["repair", "--db", "app", "--json"]);
    let rec = run.json();
    assert_eq!((run.code, rec["outcome"].as_str()), (3, Some("refused")), "{rec:#}");
    assert!(
        rec["error"].as_str().unwrap().contains("wait: a backend of the migrator is still running"),
        "{rec:#}"
    );
    assert!(rec["snapshot_id"].is_null(), "refused before anything, the snapshot too: {rec:#}");
    assert_eq!(db.sql(&format!("SELECT count(*) FROM _prisma_migrations WHERE migration_name = '{name}' AND finished_at IS NULL AND rolled_back_at IS NULL")), "1");
}

/// After a failure that is not transient (42P01 here) no finish is drafted while the file is
/// the one that failed; once the file is fixed (its checksum differs from the row's), the
/// finish is drafted from the edited file, proven on a copy, and completes the migration, and
/// the row is resolved with the new file's checksum, as `prisma migrate resolve --applied`.
#[test]
fn a_fixed_file_gets_a_finish_after_a_failure_that_is_not_transient() {
    let f = fixture_with_baseline();
    let r = diagnose(&f.pgm);
    assert!(r["playbooks"]["finish"]["why"].as_str().unwrap().contains("not transient"), "{r:#}");
    let file = f.dir.path().join(FAILED).join("migration.sql");
    let fixed =
        std::fs::read_to_string(&file).unwrap().replace("REFERENCES \"Users\"", "REFERENCES \"User\"");
    std::fs::write(&file, &fixed).unwrap();
    let r = diagnose(&f.pgm);
    assert_eq!(r["stopped_after"], 1, "{r:#}");
    let finish = r["playbooks"]["finish"]["sql"].as_str().unwrap_or_else(|| panic!("{r:#}"));
    assert!(finish.contains("REFERENCES \"User\""), "{finish}");
    add_playbook(&f, r["playbooks"]["finish"]["toml"].as_str().unwrap());
    let rec = f.pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(
        f.db.sql("SELECT count(*) FROM pg_constraint WHERE conname = 'PluginCredential_userId_fkey'"),
        "1"
    );
    let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(fixed.as_bytes()));
    assert_eq!(
        f.db.sql(&format!("SELECT checksum FROM _prisma_migrations WHERE migration_name = '{FAILED}' AND finished_at IS NOT NULL AND rolled_back_at IS NULL")),
        sum
    );
}

/// Replaces the baseline's stored schema with `text`, compressed, its manifest made to match
/// (anyone who can write the bucket can do both); `raw` overrides the size the manifest records.
fn forge_schema(f: &Failed, text: &[u8], raw: Option<u64>) {
    let folder = f.pgm.snapshots_dir().join("app").join(&f.baseline_id);
    let mut zstd =
        Command::new("zstd").args(["-q", "-c"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = zstd.stdin.take().unwrap();
    let input = text.to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input).unwrap());
    let out = zstd.wait_with_output().unwrap();
    feeder.join().unwrap();
    std::fs::write(folder.join("schema.sql.zst"), &out.stdout).unwrap();
    let path = folder.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    use sha2::Digest;
    m["schema"]["sha256"] = hex::encode(sha2::Sha256::digest(&out.stdout)).into();
    m["schema"]["stored_bytes"] = out.stdout.len().into();
    m["schema"]["raw_bytes"] = raw.unwrap_or(text.len() as u64).into();
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
}

/// A forged baseline schema runs nothing on this host (no psql meta-command: it goes to the
/// server as SQL), and one that decompresses past the size its manifest records is refused.
#[test]
fn a_forged_baseline_schema_runs_nothing_on_the_host_and_a_bomb_is_refused() {
    let f = fixture_with_baseline();
    let marker = f.dir.path().join("pwned");
    let real = Command::new("zstd")
        .args(["-dc"])
        .arg(f.pgm.snapshots_dir().join("app").join(&f.baseline_id).join("schema.sql.zst"))
        .output()
        .unwrap()
        .stdout;
    let real: String = String::from_utf8(real)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| format!("{l}\n"))
        .collect();
    forge_schema(&f, format!("\\! touch {}\n{real}", marker.display()).as_bytes(), None);
    let run = f.pgm.run(&["diagnose", "--json"]);
    assert!(!marker.exists(), "the stored schema ran a shell command: {}", run.stderr);

    forge_schema(&f, &vec![b'-'; 10 << 20], Some(1000));
    let run = f.pgm.run(&["diagnose", "--json"]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("decompresses to more than the 1000 bytes"), "{said}");
}
