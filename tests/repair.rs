//! Repairs on the real P3009 database that Prisma 6.19.3 left behind: the rows they leave are
//! the rows Prisma itself leaves, a snapshot always comes first, and every unsafe moment
//! (storage down, a second repair, a deploy holding Prisma's lock) stops the repair.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::prisma::*;
use common::*;
use serde_json::Value;

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

#[test]
fn hotfix_and_resolve_applied_leave_the_rows_prisma_leaves() {
    let db = p3009();
    let pgm = with_playbook(Backend::Local, &db, "", hotfix_playbook);
    let before = pgm.run(&["migrations", "--json"]).json();
    let failed: Vec<&Value> =
        before["app"]["migrations"].as_array().unwrap().iter().filter(|m| m["status"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["logs"].as_str().unwrap().contains("No such table: Users"));

    let dry = pgm.run(&["repair", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(dry.json()["outcome"], "dry_run");
    assert_eq!(dry.json()["steps"].as_array().unwrap().len(), 3);
    assert!(pgm.snapshot_ids().is_empty(), "a dry run changes nothing, not even snapshots");

    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let rec = run.json();
    assert_eq!(rec["outcome"], "succeeded", "{rec}");
    assert_eq!(rec["migration"], FAILED);
    assert_eq!(
        prisma_rows(&db),
        normalise(&std::fs::read_to_string(fixture("after-resolve-applied.txt")).unwrap())
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_constraint WHERE conname = 'PluginCredential_userId_fkey'"),
        "1"
    );

    // The snapshot came first, and restoring it gives back the failed state.
    let snap = rec["snapshot_id"].as_str().unwrap();
    assert!(snap.contains("-pre-repair-"), "{snap}");
    let back = TestDb::reserved("p3009_back");
    let restore = pgm.run(&["restore", snap, "--target", &back.name, "--create"]);
    assert_eq!(restore.code, 0, "{restore:?}");
    assert_eq!(
        back.sql(
            "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL"
        ),
        "1"
    );

    // The audit trail has the run, with the rows before and after, fsynced locally and stored.
    let audit = pgm.run(&["audit", "--db", "app", "--since", "1h", "--json"]).json();
    let records = audit.as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["run_id"], rec["run_id"]);
    assert_eq!(
        (
            records[0]["rows_before"].as_array().unwrap().len(),
            records[0]["rows_after"].as_array().unwrap().len()
        ),
        (2, 3)
    );
    assert!(records[0]["steps"].as_array().unwrap().iter().all(|s| s["outcome"] == "ok"));
    let stored = pgm
        .snapshots_dir()
        .join("_pgmedic/audit/app")
        .join(format!("{}.json", rec["run_id"].as_str().unwrap()));
    assert!(stored.exists(), "audit copy in storage at {}", stored.display());

    let again = pgm.run(&["repair", "--json"]);
    assert_eq!((again.code, again.json()["outcome"].clone()), (0, "noop".into()), "{again:?}");
}

#[test]
fn cleanup_and_resolve_rolled_back_leave_the_rows_prisma_leaves() {
    let db = p3009();
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        "\n[[playbooks]]\nname = \"undo\"\nsteps = [ { sql = 'DROP TABLE IF EXISTS \"PluginCredential\"' }, { resolve = \"rolled-back\" } ]\n".into()
    });
    let run = pgm.run(&["repair"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        prisma_rows(&db),
        normalise(&std::fs::read_to_string(fixture("after-resolve-rolled-back.txt")).unwrap())
    );
    assert_eq!(db.sql("SELECT to_regclass('\"PluginCredential\"') IS NULL"), "t");
}

#[test]
fn storage_down_means_no_step_runs() {
    let db = p3009();
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        "\n[[playbooks]]\nname = \"marker\"\nsteps = [ { sql = \"CREATE TABLE step_ran(x int)\" }, { resolve = \"applied\" } ]\n".into()
    });
    // Storage that cannot be written: its directory is a file.
    std::fs::write(pgm.snapshots_dir(), b"not a directory").unwrap();
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 3, "a failed pre-repair snapshot is a refusal: {run:?}");
    let rec = run.json();
    assert_eq!(rec["outcome"], "snapshot_failed");
    assert!(rec["error"].as_str().unwrap().contains("no step was run"), "{rec}");
    assert_eq!(db.sql("SELECT to_regclass('step_ran') IS NULL"), "t", "the first step did not run");
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL"
        ),
        "1"
    );
    let audit = pgm.run(&["audit", "--json"]).json();
    assert_eq!(audit[0]["outcome"], "snapshot_failed", "the refusal is in the audit trail");
}

#[test]
fn a_deploy_holding_prismas_lock_makes_the_repair_wait_then_refuse() {
    let db = p3009();
    let pgm = with_playbook(Backend::Local, &db, "lock_wait = \"1s\"\n", hotfix_playbook);
    let _deploy = LockHolder::take(&db, "pg_advisory_lock(72707369)");
    let started = std::time::Instant::now();
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "it waited lock_wait first");
    let rec = run.json();
    assert_eq!(rec["outcome"], "refused");
    let why = rec["error"].as_str().unwrap();
    assert!(why.contains("72707369") && why.contains("pid "), "names the lock and its holder: {why}");
    assert!(pgm.snapshot_ids().is_empty(), "refused before the snapshot");
}

#[test]
fn a_second_repair_is_refused_and_told_who_holds_the_lock() {
    let db = p3009();
    let gate = tempfile::tempdir().unwrap();
    let fifo = gate.path().join("gate");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        format!("\n[[playbooks]]\nname = \"slow\"\nsteps = [ {{ command = [\"sh\", \"-c\", \"read x < {}\"] }}, {{ resolve = \"rolled-back\" }} ]\n", fifo.display())
    });
    let first =
        pgm.command(&["repair", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The first run is inside its command step once its pre-repair snapshot is listed.
    wait_for("the first repair's snapshot", std::time::Duration::from_secs(60), || {
        pgm.snapshot_ids().len() == 1
    });
    let second = pgm.run(&["repair", "--json"]);
    assert_eq!(second.code, 3, "{second:?}");
    let why = second.json()["error"].as_str().unwrap().to_string();
    assert!(why.contains("another repair of app is running") && why.contains("pgmedic@"), "{why}");
    std::fs::OpenOptions::new().write(true).open(&fifo).unwrap().write_all(b"go\n").unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_command_that_times_out_is_killed_and_stops_the_run() {
    let db = p3009();
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        "\n[[playbooks]]\nname = \"slow\"\nsteps = [ { command = [\"sleep\", \"30\"], timeout = \"1s\" }, { resolve = \"applied\" } ]\n".into()
    });
    let started = std::time::Instant::now();
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "killed at its timeout");
    let rec = run.json();
    assert_eq!(rec["steps"][0]["outcome"], "failed");
    assert!(rec["steps"][0]["error"].as_str().unwrap().contains("timed out after 1s"), "{rec}");
    assert_eq!(rec["steps"][1]["outcome"], "planned", "later steps do not run");
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL"
        ),
        "1"
    );
}

#[test]
fn a_failing_assertion_fails_the_run() {
    let db = p3009();
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        "\n[[playbooks]]\nname = \"check\"\nsteps = [ { assert_sql = \"SELECT count(*) = 42 FROM \\\"User\\\"\" }, { resolve = \"applied\" } ]\n".into()
    });
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.json()["error"].as_str().unwrap().contains("assertion returned false"), "{run:?}");
}

#[test]
fn a_migration_name_with_quotes_is_handled_as_data() {
    let db = TestDb::new("quotes");
    let name = r#"20250601000000_it's "quoted"; DROP TABLE x"#;
    db.sql(&format!(
        "CREATE TABLE x(y int); CREATE TABLE _prisma_migrations (id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL, \
         finished_at timestamptz, migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz, \
         started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count int NOT NULL DEFAULT 0); \
         INSERT INTO _prisma_migrations (id, checksum, migration_name, logs) VALUES ('a', 'c0ffee', {}, 'boom')",
        quote_literal(name)
    ));
    let pgm = Pgmedic::custom(
        Backend::Local,
        "",
        "",
        "",
        &format!("\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n\n[[playbooks]]\nname = \"any\"\nsteps = [ {{ resolve = \"applied\" }} ]\n", db.url()),
    );
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["migration"], name);
    assert_eq!(db.sql("SELECT to_regclass('x') IS NOT NULL"), "t");
    let applied = db.sql(&format!(
        "SELECT checksum FROM _prisma_migrations WHERE migration_name = {} AND finished_at IS NOT NULL AND rolled_back_at IS NULL",
        quote_literal(name)
    ));
    assert_eq!(applied, "c0ffee", "no dir configured: the failed row's checksum is kept");
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[test]
fn a_row_without_logs_is_in_progress_while_prismas_lock_is_held_and_crashed_after() {
    let db = p3009();
    db.sql(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at) \
         VALUES ('b', 'c', '20250601000000_next', NULL, now() + interval '1 minute')",
    );
    let pgm = setup(Backend::Local, &db, "", "");
    let status_of = |name: &str| {
        let state = pgm.run(&["migrations", "--json"]).json();
        let m = state["app"]["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap();
        m["status"].as_str().unwrap().to_string()
    };
    {
        let _deploy = LockHolder::take(&db, "pg_advisory_lock(72707369)");
        assert_eq!(status_of("20250601000000_next"), "in_progress");
    }
    wait_for("the lock to go with its session", MINUTE, || status_of("20250601000000_next") == "crashed");
    assert_eq!(status_of(FAILED), "failed");
    let human = pgm.run(&["migrations"]);
    assert!(human.stdout.contains("2 failed") && human.stdout.contains("No such table: Users"), "{human:?}");
}

#[test]
fn a_repair_that_could_not_be_recorded_does_not_start() {
    let db = p3009();
    let pgm = with_playbook(Backend::Local, &db, "", hotfix_playbook);
    std::fs::write(pgm.dir.path().join("state"), b"a file where the state directory should be").unwrap();
    let run = pgm.run(&["repair"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("nothing was done") && run.stderr.contains("daemon.state_dir"), "{run:?}");
    assert!(pgm.snapshot_ids().is_empty(), "not even the snapshot was taken");
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL"
        ),
        "1"
    );
}
