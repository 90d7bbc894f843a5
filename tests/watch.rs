//! The daemon's side of repairs: the watcher notices a failure and reacts, SIGUSR1 and the
//! socket trigger repairs, and an unreachable server or a missing table is a state, not a crash.

mod common;

use common::prisma::*;
use common::*;
use serde_json::Value;

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

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
    // The trail shows a run from its start (`started`, `running`): wait for its end.
    wait_for("the SIGUSR1 repair", MINUTE, || {
        audit(&pgm).iter().any(|r| {
            r["trigger"] == "signal:SIGUSR1" && !matches!(r["outcome"].as_str(), Some("started" | "running"))
        })
    });
    assert_eq!(audit(&pgm)[0]["outcome"], "succeeded", "{:?}", audit(&pgm));

    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let rec = run.json();
    assert_eq!((rec["trigger"].as_str(), rec["outcome"].as_str()), (Some("socket"), Some("noop")), "{rec}");
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
