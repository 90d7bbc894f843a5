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

/// A failed `CREATE UNIQUE INDEX CONCURRENTLY` (duplicates) leaves an invalid index whatever the
/// tool recorded: seen on a database with no migrations section, by `migrations` and by the
/// daemon (status, metric, one webhook), and gone from all three once it is dropped.
#[test]
fn an_invalid_index_is_reported_on_a_database_without_a_migrations_section() {
    let db = TestDb::new("invalid");
    db.sql("CREATE TABLE emails (addr text); INSERT INTO emails VALUES ('a'), ('a'), ('b')");
    let failed = std::process::Command::new("psql")
        .args(["-h", PG_HOST, "-p", PG_PORT, "-U", "postgres", "-d", &db.name, "-Xq", "-c"])
        .arg("CREATE UNIQUE INDEX CONCURRENTLY emails_addr_key ON emails (addr)")
        .output()
        .unwrap();
    assert!(!failed.status.success(), "the build fails over the duplicates");
    let (hook, received) = webhook("/idx");
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n\n[[notify]]\nwebhook = \"{hook}\"\n",
        db.url()
    );
    let pgm = Pgmedic::custom(Backend::Local, "metrics_listen = \"127.0.0.1:0\"\n", "", "", &tail);
    let run = pgm.run(&["migrations", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed = &run.json()["app"]["invalid_indexes"];
    assert_eq!(listed[0]["index"], "emails_addr_key", "{listed:#}");
    assert_eq!((listed[0]["schema"].as_str(), listed[0]["table"].as_str()), (Some("public"), Some("emails")));
    assert!(
        listed[0]["definition"].as_str().unwrap().starts_with("CREATE UNIQUE INDEX emails_addr_key"),
        "{listed:#}"
    );
    let text = pgm.run(&["migrations"]);
    assert!(text.stdout.contains("invalid index public.emails_addr_key on emails"), "{}", text.stdout);

    let daemon = Daemon::start(&pgm);
    let event = received.join().unwrap();
    assert!(event.contains("\"event\":\"invalid_index\"") && event.contains("emails_addr_key"), "{event}");
    let status = daemon.status();
    assert_eq!(status["databases"]["app"]["invalid_indexes"][0]["index"], "emails_addr_key", "{status:#}");
    assert!(
        status["databases"]["app"]["migrations"].is_null(),
        "no migrations section, no migrations state: {status:#}"
    );
    let addr = status["metrics_listen"].as_str().unwrap().to_string();
    assert!(http_get(&addr, "/metrics").contains("pgmedic_invalid_indexes{database=\"app\"} 1"));

    db.sql("DROP INDEX emails_addr_key");
    assert_eq!(pgm.run(&["migrations", "--json"]).json()["app"]["invalid_indexes"], serde_json::json!([]));
}

/// The `migration_failed` webhook carries the tool's log redacted: the server's DETAIL quotes
/// row values, and the failed statement may hold a password.
#[test]
fn the_migration_failed_webhook_is_redacted() {
    let db = p3009();
    let log = "Database error code: 23505\n\nDatabase error:\nERROR: duplicate key value violates unique constraint \"User_email_key\"\nDETAIL: Key (email)=(alice@example.com) already exists.\n\nALTER ROLE app PASSWORD 'hunter2';";
    db.sql(&format!("UPDATE _prisma_migrations SET logs = $l${log}$l$ WHERE migration_name = '{FAILED}'"));
    let (hook, received) = webhook("/failed");
    let pgm = setup(
        Backend::Local,
        &db,
        "",
        &format!("watch_interval = \"1s\"\n\n[[notify]]\nwebhook = \"{hook}\"\n"),
    );
    let _daemon = Daemon::start(&pgm);
    let event = received.join().unwrap();
    assert!(event.contains("\"event\":\"migration_failed\"") && event.contains(FAILED), "{event}");
    assert!(event.contains("Key (email)=(***)"), "{event}");
    assert!(!event.contains("alice@example.com") && !event.contains("hunter2"), "{event}");
}
