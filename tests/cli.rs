//! The command line as operators meet it: configuration errors that name the key, secrets that
//! never show, retention, and the JSON shapes scripts rely on.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_with_config(config: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgmedic"));
    cmd.arg("--config").arg(config).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const GOOD: &str = "[storage]\npath = \"/tmp/x\"\n\n[[databases]]\nname = \"app\"\nurl = \"postgresql://postgres@127.0.0.1/postgres\"\n";

#[test]
fn bad_config_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write_config(&dir, &format!("{GOOD}\n[snapshot]\ncompresion_level = 3\n"));
    let (code, _, err) = run_with_config(&typo, &["check-config"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("compresion_level") && err.contains("bad.toml"), "{err}");

    let range = write_config(&dir, &format!("{GOOD}\n[snapshot]\ncompression_level = 99\n"));
    let (code, _, err) = run_with_config(&range, &["snapshot"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("snapshot.compression_level") && err.contains("99"), "{err}");

    let good = write_config(&dir, GOOD);
    let (code, _, err) =
        run_with_config(&good, &["check-config"], &[("PGMEDIC_SNAPSHOT__COMPRESSION_LEVEL", "fast")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PGMEDIC_SNAPSHOT__COMPRESSION_LEVEL"), "the override at fault is named: {err}");

    let (code, out, err) =
        run_with_config(&good, &["check-config"], &[("PGMEDIC_SNAPSHOT__COMPRESSION_LEVEL", "7")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("compression_level = 7"), "{out}");

    let (code, _, err) = run_with_config(&dir.path().join("missing.toml"), &["check-config"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.toml"), "{err}");

    let (code, _, err) = run_with_config(&good, &["snapshots", "--db", "nope"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`nope`") && err.contains("app"), "{err}");
}

#[test]
fn password_never_reaches_logs_or_argv() {
    const SECRET: &str = "Sup3r:S3cret-pw";
    let db = TestDb::new("secret");
    db.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let url = format!("postgresql://postgres:{}@{PG_HOST}:{PG_PORT}/{}", SECRET.replace(':', "%3A"), db.name);
    let gated = GatedTools::new();
    let pgm = Pgmedic::new(Backend::Local, &[("app", &url)], "", &gated.snapshot_extra());

    let check = pgm.run(&["check-config"]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(!check.stdout.contains("S3cret") && check.stdout.contains(":***@"), "{check:?}");

    // While pg_dump is held at the gate, no process on the machine shows the password.
    let child = pgm
        .command(&["snapshot", "--db", "app"])
        .env("PGMEDIC_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen_pg_dump = false;
    wait_for("pg_dump to run", Duration::from_secs(30), || {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!text.contains("S3cret"), "password in argv: {text}");
            seen_pg_dump |= text.contains("pg_dump") && text.contains(&db.name);
        }
        seen_pg_dump
    });
    gated.open();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains("S3cret") && !stderr.contains("S3cret"), "{stdout}\n{stderr}");

    // A connection error names the server, not the password.
    let bad = format!("postgresql://postgres:{}@127.0.0.1:1/{}", SECRET.replace(':', "%3A"), db.name);
    let pgm = Pgmedic::new(Backend::Local, &[("app", &bad)], "", "");
    let run = pgm.run_env(&["snapshot"], &[("PGMEDIC_LOG", "debug")]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("127.0.0.1:1") && !run.stderr.contains("S3cret"), "{run:?}");
}

#[test]
fn prune_applies_retention_and_dry_run_deletes_nothing() {
    let db = TestDb::new("prune");
    db.sql("CREATE TABLE t(x int)");
    let retention = "retention = { keep_last = 2, keep_daily = 0, keep_weekly = 0, keep_monthly = 0, keep_pre_repair_days = 30 }\n";
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", retention);
    let mut ids = Vec::new();
    for reason in ["manual", "pre-repair", "manual", "manual"] {
        let run = pgm.run(&["snapshot", "--db", "app", "--reason", reason, "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        ids.push(run.json()["id"].as_str().unwrap().to_string());
    }
    assert_eq!(pgm.snapshot_ids(), ids, "listed oldest first");

    let dry = pgm.run(&["prune", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let line = dry.stdout.lines().find(|l| l.starts_with(&ids[0])).unwrap_or_default();
    assert!(line.contains("would delete"), "{dry:?}");
    assert!(dry.stdout.contains("1 snapshot(s) to delete (dry run), 3 kept"), "{dry:?}");
    assert_eq!(pgm.snapshot_ids().len(), 4, "a dry run deletes nothing");

    let run = pgm.run(&["prune", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let deleted: Vec<String> = run.json()["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted, vec![ids[0].clone()]);
    assert_eq!(pgm.snapshot_ids(), ids[1..].to_vec(), "the pre-repair snapshot is kept for its days");
    assert!(!pgm.snapshots_dir().join("app").join(&ids[0]).exists(), "its files are gone");
}

#[test]
fn snapshot_of_every_database_and_json_shapes() {
    let a = TestDb::new("a");
    let b = TestDb::new("b");
    let pgm = Pgmedic::new(Backend::Local, &[("one", &a.url()), ("two", &b.url())], "", "");
    let run = pgm.run(&["snapshot", "--json", "--reason", "before upgrade"]);
    assert_eq!(run.code, 0, "{run:?}");
    let taken = run.json();
    let taken = taken.as_array().expect("several databases give an array");
    assert_eq!(taken.len(), 2);
    assert!(taken[0]["id"].as_str().unwrap().contains("-before-upgrade-"), "{}", taken[0]);
    assert_eq!(taken[0]["reason"], "before upgrade");
    let run = pgm.run(&["snapshots", "--db", "two", "--json"]);
    let list = run.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    for field in ["id", "database", "reason", "taken_at", "stored_bytes", "sha256"] {
        assert!(!list[0][field].is_null(), "snapshots --json lacks {field}: {}", list[0]);
    }
    let human = pgm.run(&["snapshots"]);
    assert!(human.stdout.lines().count() == 3 && human.stdout.contains("before upgrade"), "{human:?}");
}

#[test]
fn one_failing_database_does_not_cost_the_others_their_snapshot() {
    let good = TestDb::new("good");
    let missing = TestDb::reserved("missing");
    let pgm = Pgmedic::new(Backend::Local, &[("gone", &missing.url()), ("good", &good.url())], "", "");
    let run = pgm.run(&["snapshot"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("snapshot failed for 1 of 2 databases: gone"), "{run:?}");
    assert!(run.stderr.contains(&missing.name) && run.stderr.contains("does not exist"), "{run:?}");
    let list = pgm.run(&["snapshots", "--json"]).json();
    let dbs: Vec<&str> = list.as_array().unwrap().iter().map(|m| m["database"].as_str().unwrap()).collect();
    assert_eq!(dbs, ["good"]);
}

#[test]
fn tls_modes_follow_libpq() {
    assert_eq!(
        psql("postgres", "SHOW ssl"),
        "on",
        "this test needs the local PostgreSQL to offer TLS (Debian's default)"
    );
    let ca = psql("postgres", "SHOW ssl_cert_file");
    let db = TestDb::new("tls");
    db.sql("CREATE TABLE t(x int)");
    let url =
        |host: &str, params: &str| format!("postgresql://postgres@{host}:{PG_PORT}/{}?{params}", db.name);
    let cases = [
        (url("127.0.0.1", "sslmode=disable"), true),
        (url("127.0.0.1", "sslmode=require"), true),
        (url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")), true),
        (url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")), true),
        // Debian's certificate names `localhost`, not the address.
        (url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")), false),
    ];
    for (url, ok) in cases {
        let pgm = Pgmedic::new(Backend::Local, &[("app", &url)], "", "");
        let run = pgm.run(&["snapshot"]);
        if ok {
            assert_eq!(run.code, 0, "{url}: {run:?}");
        } else {
            assert_eq!(run.code, 1, "{url}: {run:?}");
            assert!(run.stderr.contains("not valid for name \"127.0.0.1\""), "{url}: {run:?}");
        }
    }
    let pgm = Pgmedic::new(Backend::Local, &[("app", &url("localhost", "sslmode=sometimes"))], "", "");
    let run = pgm.run(&["check-config"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("databases[0].url") && run.stderr.contains("sslmode `sometimes`"), "{run:?}");
}

#[test]
fn restore_from_a_terminal_shows_progress() {
    let db = TestDb::new("tty");
    fill_random(&db, 2);
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let target = TestDb::reserved("tty_dst");
    let cmd = format!(
        "{} --config {} restore {id} --target {} --create",
        env!("CARGO_BIN_EXE_pgmedic"),
        pgm.config.display(),
        target.name
    );
    // `script` runs the command on a pseudo-terminal, as an operator's shell would.
    let out = std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains(&format!("restoring {id}: ")) && screen.contains("/s, ") && screen.contains(" left"),
        "{screen}"
    );
    assert!(screen.contains(&format!("restored {id}")), "{screen}");
}

/// Relative paths in the configuration are from its own folder, wherever pgmedic starts: a CLI
/// snapshot run from elsewhere writes where the file says, and says it runs in-process.
#[test]
fn relative_paths_are_from_the_configuration_files_folder() {
    let db = TestDb::new("relpaths");
    db.sql("CREATE TABLE t (x int)");
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = home.path().join("pgmedic.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nsocket = \"run/pgmedic.sock\"\nstate_dir = \"state\"\n[storage]\nbackend = \"local\"\npath = \"snapshots\"\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n",
            db.url()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgmedic"))
        .args(["--config", &config.display().to_string(), "snapshot", "--db", "app"])
        .env("PGMEDIC_LOG", "info")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(home.path().join("snapshots/app").is_dir(), "the snapshot is beside the configuration: {stderr}");
    assert!(!elsewhere.path().join("snapshots").exists(), "nothing where pgmedic was started");
    let socket = home.path().join("run/pgmedic.sock");
    assert!(stderr.contains(&format!("no daemon at {}; running in-process", socket.display())), "{stderr}");
}
