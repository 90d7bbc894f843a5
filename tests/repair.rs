//! Repairs on the real P3009 database that Prisma 6.19.3 left behind: the rows they leave are
//! the rows Prisma itself leaves, a snapshot always comes first, and every unsafe moment
//! (storage down, a second repair, a deploy holding Prisma's lock) stops the repair.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

const FAILED: &str = "20250520130900_add_plugin_credential_model";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prisma-p3009").join(rel)
}

fn p3009() -> TestDb {
    let db = TestDb::new("p3009");
    psql_file(&db.name, &fixture("database.sql"));
    db
}

/// The query that produced the fixture's after-*.txt files, in psql's aligned format.
fn prisma_rows(db: &TestDb) -> String {
    let sql = "SELECT migration_name, checksum, finished_at IS NOT NULL AS finished, rolled_back_at IS NOT NULL AS rolled_back, \
               applied_steps_count, logs IS NULL AS logs_null, logs = '' AS logs_empty, started_at = finished_at AS started_eq_finished \
               FROM _prisma_migrations ORDER BY started_at, finished_at NULLS FIRST";
    let out = Command::new("psql")
        .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-X", "-c", sql])
        .output()
        .unwrap();
    normalise(&String::from_utf8_lossy(&out.stdout))
}

fn normalise(text: &str) -> String {
    text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

const HOTFIX: &str = r#"
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
fn setup(backend: Backend, db: &TestDb, repair: &str, playbooks: &str) -> Pgmedic {
    let tail = format!(
        "\n[repair]\n{repair}\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ndir = \"{}\"\n{playbooks}",
        db.url(),
        fixture("migrations").display()
    );
    Pgmedic::custom(backend, "", "", "", &tail)
}

fn hotfix_playbook(pgm_dir: &Path) -> String {
    let file = pgm_dir.join("hotfix.sql");
    std::fs::write(&file, HOTFIX).unwrap();
    format!(
        "\n[[playbooks]]\nname = \"finish-plugin-credential\"\nmatch = {{ migration = \"*_add_plugin_credential_model\", log_contains = \"Users\" }}\n\
         steps = [ {{ sql_file = \"{}\" }}, {{ resolve = \"applied\" }}, \
         {{ assert_sql = \"SELECT NOT EXISTS (SELECT 1 FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL)\" }} ]\n",
        file.display()
    )
}

fn with_playbook(backend: Backend, db: &TestDb, repair: &str, playbook: impl Fn(&Path) -> String) -> Pgmedic {
    let pgm = setup(backend, db, repair, "");
    let text = std::fs::read_to_string(&pgm.config).unwrap() + &playbook(pgm.dir.path());
    pgm.write_config(&text);
    pgm
}

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
    let stored =
        pgm.snapshots_dir().join("audit/app").join(format!("{}.json", rec["run_id"].as_str().unwrap()));
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

/// A psql session that holds an advisory lock until dropped.
struct LockHolder(Child);

impl LockHolder {
    fn take(db: &TestDb, lock_sql: &str) -> LockHolder {
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

fn watched(db: &TestDb, on_failure: &str) -> Pgmedic {
    let pgm = with_playbook(Backend::Local, db, "", hotfix_playbook);
    let text = std::fs::read_to_string(&pgm.config).unwrap().replace(
        "[databases.migrations]\n",
        &format!("[databases.migrations]\nwatch_interval = \"1s\"\non_failure = \"{on_failure}\"\n"),
    );
    pgm.write_config(&text);
    pgm
}

fn audit(pgm: &Pgmedic) -> Vec<Value> {
    pgm.run(&["audit", "--json"]).json().as_array().unwrap().clone()
}

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

#[test]
fn the_daemon_notices_the_failure_snapshots_first_and_repairs_it() {
    let db = p3009();
    let pgm = watched(&db, "repair");
    let daemon = Daemon::start(&pgm);
    wait_for("the watcher's repair", MINUTE, || audit(&pgm).iter().any(|r| r["outcome"] == "succeeded"));
    let rec = audit(&pgm).pop().unwrap();
    assert_eq!(
        (rec["trigger"].as_str(), rec["requested_by"].as_str()),
        (Some("watch"), Some("watcher")),
        "{rec}"
    );
    assert_eq!(
        prisma_rows(&db),
        normalise(&std::fs::read_to_string(fixture("after-resolve-applied.txt")).unwrap())
    );
    let snaps = pgm.run(&["snapshots", "--json"]).json();
    let snap = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == rec["snapshot_id"])
        .expect("the pre-repair snapshot is listed");
    assert_eq!(snap["reason"], "pre-repair");
    let first_step: chrono::DateTime<chrono::Utc> =
        rec["steps"][0]["started_at"].as_str().unwrap().parse().unwrap();
    let snapped: chrono::DateTime<chrono::Utc> = snap["finished_at"].as_str().unwrap().parse().unwrap();
    assert!(snapped <= first_step, "the snapshot finished before the first step started");
    wait_for("the watcher to see it healthy", MINUTE, || {
        daemon.status()["databases"]["app"]["migrations"]["state"] == "ok"
    });
    assert_eq!(audit(&pgm).len(), 1, "one failure, one repair");
}

#[test]
fn sigusr1_and_the_socket_trigger_repairs() {
    let db = p3009();
    let pgm = watched(&db, "notify");
    let daemon = Daemon::start(&pgm);
    wait_for("the watcher to see the failure", MINUTE, || {
        daemon.status()["databases"]["app"]["migrations"]["state"] == "failed"
    });
    let failed = daemon.status()["databases"]["app"]["migrations"]["failed"].clone();
    assert_eq!(failed, serde_json::json!([FAILED]));
    assert!(audit(&pgm).is_empty(), "on_failure = notify repairs nothing by itself");

    let dry = pgm.run(&["repair", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stderr.contains("asking the running daemon"), "{dry:?}");
    assert_eq!(dry.json()["outcome"], "dry_run");

    daemon.signal(libc::SIGUSR1);
    wait_for("the SIGUSR1 repair", MINUTE, || audit(&pgm).iter().any(|r| r["trigger"] == "signal:SIGUSR1"));
    assert_eq!(audit(&pgm)[0]["outcome"], "succeeded", "{:?}", audit(&pgm));

    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let rec = run.json();
    assert_eq!((rec["trigger"].as_str(), rec["outcome"].as_str()), (Some("socket"), Some("noop")), "{rec}");
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
fn the_watcher_reports_unreachable_and_missing_states_and_recovers() {
    let db = TestDb::reserved("later");
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\nwatch_interval = \"1s\"\n",
        db.url()
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let daemon = Daemon::start(&pgm);
    let state = || daemon.status()["databases"]["app"]["migrations"].clone();
    wait_for("the unreachable state", MINUTE, || state()["state"] == "unreachable");
    assert!(state()["error"].as_str().unwrap().contains("does not exist"), "{}", state());
    psql("postgres", &format!("CREATE DATABASE {}", db.name));
    wait_for("the missing-table state", MINUTE, || state()["state"] == "missing");
    psql_file(&db.name, &fixture("database.sql"));
    wait_for("the failed state", MINUTE, || state()["state"] == "failed");
    assert_eq!(daemon.status()["ok"], true, "the daemon took all of it in its stride");
}
