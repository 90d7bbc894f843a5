//! The daemon as a service: schedules that never overlap, signals, the control socket under
//! garbage, reloads good and bad, draining on SIGTERM, peers by uid, metrics and webhooks.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::*;
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

fn db_entry(name: &str, url: &str, schedule: Option<&str>) -> String {
    let schedule = schedule.map(|s| format!("schedule = \"{s}\"\n")).unwrap_or_default();
    format!("\n[[databases]]\nname = \"{name}\"\nurl = \"{url}\"\n{schedule}")
}

fn manifests(pgm: &Pgmedic) -> Vec<Value> {
    let run = pgm.run(&["snapshots", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.json().as_array().unwrap().clone()
}

fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn scheduled_snapshots_never_overlap_with_a_slow_pg_dump() {
    let db = TestDb::new("sched");
    db.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let slow = slow_tools(1.5);
    let snapshot_extra = format!("pg_bin_dir = \"{}\"\n", slow.path().display());
    let tail = db_entry("app", &db.url(), Some("* * * * * *"));
    let pgm = Pgmedic::custom(Backend::Local, "", "", &snapshot_extra, &tail);
    let daemon = Daemon::start(&pgm);
    wait_for("three scheduled snapshots", MINUTE, || manifests(&pgm).len() >= 3);
    let list = manifests(&pgm);
    for pair in list.windows(2) {
        assert!(
            time(&pair[0]["finished_at"]) <= time(&pair[1]["taken_at"]),
            "snapshots overlap: {} and {}",
            pair[0]["id"],
            pair[1]["id"]
        );
    }
    assert!(list.iter().all(|m| m["reason"] == "scheduled"), "{list:?}");
    let status = daemon.status();
    let app = &status["databases"]["app"];
    assert!(app["coalesced_total"].as_u64().unwrap() >= 1, "every-second triggers meet 1.5 s dumps: {app}");
    assert!(app["next_run"].is_string() && app["schedule"] == "* * * * * *", "{app}");
}

#[test]
fn sigusr2_socket_and_cli_each_take_one_snapshot() {
    let db = TestDb::new("trig");
    db.sql("CREATE TABLE t(x int)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let daemon = Daemon::start(&pgm);

    daemon.signal(libc::SIGUSR2);
    wait_for("the SIGUSR2 snapshot", MINUTE, || manifests(&pgm).len() == 1);
    assert_eq!(manifests(&pgm)[0]["trigger"], "signal:SIGUSR2");

    let reply = daemon.request(r#"{"cmd":"snapshot","db":"app","reason":"from socket"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["snapshots"][0]["reason"], "from socket");
    assert!(reply["snapshots"][0]["trigger"].as_str().unwrap().starts_with("socket:uid="), "{reply}");

    let run = pgm.run(&["snapshot", "--db", "app", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("asking the running daemon"), "the CLI went through the daemon: {run:?}");
    assert!(run.json()["trigger"].as_str().unwrap().starts_with("socket:"), "{run:?}");
    assert_eq!(manifests(&pgm).len(), 3);
    let status = daemon.status();
    assert_eq!(status["databases"]["app"]["snapshots_success_total"], 3, "{status}");
    let human = pgm.run(&["status"]);
    assert!(human.code == 0 && human.stdout.contains("app") && human.stdout.contains("success"), "{human:?}");
}

fn raw_exchange(socket: &std::path::Path, bytes: &[u8]) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

#[test]
fn garbage_on_the_socket_gets_an_error_and_hurts_nobody() {
    let db = TestDb::new("garbage");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let daemon = Daemon::start(&pgm);
    let bad = daemon.request("this is not json");
    assert_eq!(
        (bad["ok"].clone(), bad["error"]["code"].clone()),
        (Value::Bool(false), "bad_request".into()),
        "{bad}"
    );
    let unknown = daemon.request(r#"{"cmd":"format_disk"}"#);
    assert_eq!(unknown["error"]["code"], "bad_request", "{unknown}");
    let missing = daemon.request(r#"{"cmd":"snapshot","db":"nope"}"#);
    assert_eq!(missing["error"]["code"], "unknown_database", "{missing}");
    let huge = raw_exchange(&daemon.socket, &vec![b'x'; 200 * 1024]);
    assert!(huge.contains("too_large"), "{huge}");
    let binary = raw_exchange(&daemon.socket, &[0xff, 0xfe, 0x00, b'\n']);
    assert!(binary.contains("\"ok\":false"), "{binary}");
    drop(std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap()); // connect and hang up
    assert_eq!(daemon.status()["ok"], true, "the daemon still answers");
}

#[test]
fn sighup_keeps_a_broken_config_out_and_takes_a_good_one() {
    let a = TestDb::new("hup_a");
    let b = TestDb::new("hup_b");
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &db_entry("one", &a.url(), None));
    let daemon = Daemon::start(&pgm);
    let good = std::fs::read_to_string(&pgm.config).unwrap();

    pgm.write_config(&good.replace("compression_level", "compresion_level"));
    daemon.signal(libc::SIGHUP);
    wait_for("the failed reload in status", MINUTE, || daemon.status()["last_reload"]["ok"] == false);
    let error = daemon.status()["last_reload"]["error"].as_str().unwrap().to_string();
    assert!(error.contains("compresion_level"), "the reload error names the key: {error}");
    let reply = daemon.request(r#"{"cmd":"snapshot","db":"one"}"#);
    assert_eq!(reply["ok"], true, "the old configuration still works: {reply}");

    pgm.write_config(&format!("{good}{}", db_entry("two", &b.url(), None)));
    let reply = daemon.request(r#"{"cmd":"reload"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let status = daemon.status();
    assert_eq!(status["last_reload"]["ok"], true);
    assert!(status["databases"]["two"].is_object(), "a database added by reload: {status}");
    let reply = daemon.request(r#"{"cmd":"snapshot","db":"two"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
}

#[test]
fn sigterm_mid_upload_aborts_after_the_timeout_and_exits_0() {
    let s3 = S3Server::start();
    let db = TestDb::new("term");
    fill_random(&db, 2);
    let gated = GatedTools::new();
    let pgm = Pgmedic::custom(
        Backend::S3(&s3),
        "shutdown_timeout = \"1s\"\n",
        "",
        &gated.snapshot_extra(),
        &db_entry("app", &db.url(), None),
    );
    let mut daemon = Daemon::start(&pgm);
    let reply = daemon.request(r#"{"cmd":"snapshot","db":"app","wait":false}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    wait_for("the upload to start", MINUTE, || s3.uploads() == 1);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(MINUTE), 0, "{}", daemon.log());
    assert!(daemon.log().contains("aborting the snapshot in flight"), "{}", daemon.log());
    assert_eq!(s3.uploads(), 0, "the multipart upload was aborted");
    assert!(manifests(&pgm).is_empty(), "no partial snapshot is listed");
    assert!(!daemon.socket.exists(), "the socket is removed on exit");
}

#[test]
fn sigterm_lets_a_snapshot_finish_within_the_timeout() {
    let db = TestDb::new("finish");
    db.sql("CREATE TABLE t(x int)");
    let gated = GatedTools::new();
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", &gated.snapshot_extra());
    let mut daemon = Daemon::start(&pgm);
    daemon.request(r#"{"cmd":"snapshot","db":"app","wait":false}"#);
    wait_for("the snapshot to run", MINUTE, || daemon.status()["databases"]["app"]["running"].is_object());
    daemon.signal(libc::SIGTERM);
    daemon.wait_log("draining", MINUTE);
    gated.open();
    assert_eq!(daemon.wait_exit(MINUTE), 0, "{}", daemon.log());
    assert_eq!(manifests(&pgm).len(), 1, "the in-flight snapshot completed: {}", daemon.log());
}

#[test]
fn peers_are_checked_by_uid() {
    let db = TestDb::new("peer");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let daemon = Daemon::start(&pgm);
    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o660, "created 0660");
    // Let `nobody` reach the socket through the file system, so only the uid check stands.
    for p in [pgm.dir.path(), daemon.socket.as_path()] {
        std::process::Command::new("chmod").arg("777").arg(p).status().unwrap();
    }
    let reply = status_as_nobody(&daemon.socket);
    assert!(reply.contains("forbidden") && reply.contains("uid 65534"), "{reply}");
    assert!(daemon.log().contains("refused a peer"), "{}", daemon.log());
    assert_eq!(daemon.status()["ok"], true, "root is allowed");
    drop(daemon);

    let pgm2 = Pgmedic::custom(
        Backend::Local,
        "allowed_uids = [65534]\n",
        "",
        "",
        &db_entry("app", &db.url(), None),
    );
    let daemon = Daemon::start(&pgm2);
    for p in [pgm2.dir.path(), daemon.socket.as_path()] {
        std::process::Command::new("chmod").arg("777").arg(p).status().unwrap();
    }
    let reply = status_as_nobody(&daemon.socket);
    assert!(reply.contains("\"ok\":true"), "allowed_uids admits uid 65534: {reply}");

    // Taken out and reloaded (SIGHUP): refused at once, not at the next restart.
    let text = std::fs::read_to_string(&pgm2.config).unwrap().replace("allowed_uids = [65534]\n", "");
    pgm2.write_config(&text);
    assert_eq!(daemon.request(r#"{"cmd":"reload"}"#)["ok"], true);
    let reply = status_as_nobody(&daemon.socket);
    assert!(
        reply.contains("forbidden") && reply.contains("uid 65534"),
        "the reload took the uid's access away: {reply}"
    );
}

/// Asks for `status` as uid 65534 (nobody) and returns what came back, stderr included.
fn status_as_nobody(socket: &std::path::Path) -> String {
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'{\"cmd\":\"status\"}\\n')\nprint(s.makefile().readline())";
    let out =
        std::process::Command::new("python3").arg("-c").arg(script).arg(socket).uid(65534).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn metrics_reflect_a_finished_snapshot() {
    let db = TestDb::new("metrics");
    db.sql("CREATE TABLE t(x int)");
    let pgm = Pgmedic::custom(
        Backend::Local,
        "metrics_listen = \"127.0.0.1:0\"\n",
        "",
        "",
        &db_entry("app", &db.url(), None),
    );
    let daemon = Daemon::start(&pgm);
    let addr = daemon.status()["metrics_listen"].as_str().unwrap().to_string();
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(&addr, "/readyz").starts_with("HTTP/1.1 200"));
    let before = http_get(&addr, "/metrics");
    assert!(before.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{before}");
    let om =
        http_get_accept(&addr, "/metrics", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
    assert!(om.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{om}");
    assert!(
        om.contains("pgmedic_snapshots_total{database=\"app\",outcome=\"success\"} 0")
            && om.ends_with("# EOF\n"),
        "{om}"
    );
    assert!(before.contains("pgmedic_snapshots_total{database=\"app\",outcome=\"success\"} 0"), "{before}");
    let reply = daemon.request(r#"{"cmd":"snapshot","db":"app"}"#);
    let size = reply["snapshots"][0]["stored_bytes"].as_u64().unwrap();
    let after = http_get(&addr, "/metrics");
    assert!(after.contains("pgmedic_snapshots_total{database=\"app\",outcome=\"success\"} 1"), "{after}");
    assert!(
        after.contains(&format!("pgmedic_snapshot_last_size_bytes{{database=\"app\"}} {size}")),
        "{after}"
    );
    assert!(after.contains("pgmedic_snapshot_last_success_timestamp_seconds{database=\"app\"} 1"), "{after}");
    assert!(after.contains("pgmedic_build_info{version="), "{after}");
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn a_missed_run_is_made_up_once_at_start() {
    let db = TestDb::new("missed");
    db.sql("CREATE TABLE t(x int)");
    let tail = db_entry("app", &db.url(), Some("0 0 3 * * *"));
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let mut daemon = Daemon::start(&pgm);
    wait_for("the catch-up snapshot", MINUTE, || manifests(&pgm).len() == 1);
    assert_eq!(manifests(&pgm)[0]["trigger"], "catch-up");
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(MINUTE), 0);

    let daemon = Daemon::start(&pgm);
    daemon.wait_log("no scheduled run was missed", MINUTE);
    assert_eq!(manifests(&pgm).len(), 1, "a fresh snapshot means nothing to make up");
}

#[test]
fn a_live_socket_is_never_stolen_and_a_stale_one_is_replaced() {
    let db = TestDb::new("sock");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let mut first = Daemon::start(&pgm);
    let second = pgm.run(&["daemon"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(second.stderr.contains("another pgmedic daemon is answering"), "{second:?}");
    assert_eq!(first.status()["ok"], true, "the first daemon keeps its socket");
    first.signal(libc::SIGKILL);
    first.wait_exit(MINUTE);
    assert!(first.socket.exists(), "a killed daemon leaves its socket file");
    let third = Daemon::start(&pgm);
    assert!(third.log().contains("replacing a stale control socket"), "{}", third.log());
}

#[test]
fn a_failed_snapshot_is_posted_to_the_webhook() {
    let (hook, receiver) = webhook("/hooks/T0K3N");
    let missing = TestDb::reserved("hook");
    let tail = format!("{}\n[[notify]]\nwebhook = \"{hook}\"\n", db_entry("app", &missing.url(), None));
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let daemon = Daemon::start(&pgm);
    let reply = daemon.request(r#"{"cmd":"snapshot","db":"app"}"#);
    assert_eq!(reply["error"]["code"], "failed", "{reply}");
    let request = receiver.join().unwrap();
    assert!(request.starts_with("POST /hooks/T0K3N"), "{request}");
    let body: Value = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["event"], "snapshot_failed");
    assert_eq!(body["database"], "app");
    assert!(body["detail"]["error"].as_str().unwrap().contains("does not exist"), "{body}");
    assert!(!daemon.log().contains("T0K3N"), "the webhook's token stays out of the logs");
}

#[test]
fn systemd_unit_verifies() {
    let analyze = which("systemd-analyze");
    if !analyze.exists() {
        eprintln!("systemd-analyze is not installed: the unit was not verified");
        return;
    }
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/pgmedic.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgmedic.service");
    std::fs::write(&path, unit.replace("/usr/bin/pgmedic", env!("CARGO_BIN_EXE_pgmedic"))).unwrap();
    let out = std::process::Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("pgmedic.service")).collect();
    assert!(out.status.success() && problems.is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let db = TestDb::new("notify");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let systemd = NotifyListener::bind(pgm.dir.path().join("notify.sock"));
    let notify = systemd.path.display().to_string();
    let mut daemon = Daemon::start_env(&pgm, &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "200000")]);
    let saw = |text: &str| systemd.saw(text);
    wait_for("READY=1", MINUTE, || saw("READY=1\nSTATUS=watching 1 database(s)"));
    wait_for("WATCHDOG=1", MINUTE, || saw("WATCHDOG=1"));
    daemon.signal(libc::SIGHUP);
    wait_for("RELOADING=1 then READY=1", MINUTE, || saw("RELOADING=1") && saw("READY=1\nSTATUS=reloaded"));
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(MINUTE), 0);
    assert!(saw("STOPPING=1"), "{}", systemd.all());
}

#[test]
fn retention_follows_each_scheduled_snapshot() {
    let db = TestDb::new("retain");
    db.sql("CREATE TABLE t(x int)");
    let retention = "retention = { keep_last = 1, keep_daily = 0, keep_weekly = 0, keep_monthly = 0 }\n";
    let pgm =
        Pgmedic::custom(Backend::Local, "", "", retention, &db_entry("app", &db.url(), Some("* * * * * *")));
    let daemon = Daemon::start(&pgm);
    wait_for("three scheduled snapshots", MINUTE, || {
        daemon.status()["databases"]["app"]["snapshots_success_total"].as_u64().unwrap_or(0) >= 3
    });
    wait_for("the last snapshot's pruning", MINUTE, || {
        daemon.status()["databases"]["app"]["running"].is_null()
    });
    let left = manifests(&pgm).len();
    assert!(left <= 2, "keep_last = 1 prunes after each scheduled run ({left} left, one may be new)");
}

#[test]
fn the_queue_depth_returns_to_zero_once_the_job_runs() {
    let db = TestDb::new("depth");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let daemon = Daemon::start(&pgm);
    let reply = daemon.request(r#"{"cmd":"snapshot","db":"app"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let app = daemon.status()["databases"]["app"].clone();
    assert_eq!((app["queued"].as_u64(), app["running"].is_null()), (Some(0), true), "{app}");
}

#[test]
fn a_client_that_sends_nothing_is_timed_out() {
    let db = TestDb::new("silent");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let daemon = Daemon::start(&pgm);
    let mut s = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply); // the daemon answers, then hangs up
    assert!(reply.contains("\"code\":\"timeout\""), "{reply}");
    assert_eq!(daemon.status()["ok"], true);
}

/// A metrics client that sends half a request and stalls is cut off within the listener's
/// 10 s limit, and another one stalled at shutdown does not hold the daemon up.
#[test]
fn a_stalled_metrics_client_is_cut_off_and_does_not_hold_up_shutdown() {
    use std::io::{Read, Write};
    let db = TestDb::new("stalled");
    let pgm = Pgmedic::custom(
        Backend::Local,
        "metrics_listen = \"127.0.0.1:0\"\n",
        "",
        "",
        &db_entry("app", &db.url(), None),
    );
    let mut daemon = Daemon::start(&pgm);
    let addr = daemon.status()["metrics_listen"].as_str().unwrap().to_string();
    let stall = || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let mut first = stall();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(first.read(&mut buf).expect("closed by the daemon, not left to time out here"), 0);
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let _second = stall();
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"), "others are still answered");
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(8)), 0, "{}", daemon.log());
}

/// Another installation snapshotting the same database (an HA pair's other daemon holds
/// pgmedic's snapshot lock): this one's snapshot is skipped, not failed — in status and metrics,
/// so no failure alert fires every night.
#[test]
fn a_snapshot_another_daemon_is_taking_is_skipped_not_failed() {
    let db = TestDb::new("skipped");
    db.sql("CREATE TABLE t(x int)");
    let pgm = Pgmedic::custom(
        Backend::Local,
        "metrics_listen = \"127.0.0.1:0\"\n",
        "",
        "",
        &db_entry("app", &db.url(), None),
    );
    let _other = common::prisma::LockHolder::take(&db, "pg_advisory_lock(1885826404, 1)");
    let daemon = Daemon::start(&pgm);
    let reply = daemon.request(r#"{"cmd":"snapshot","db":"app"}"#);
    assert_eq!(reply["ok"], false, "{reply:#}");
    let status = daemon.status();
    let s = &status["databases"]["app"];
    assert_eq!(s["last_snapshot"]["outcome"], "skipped", "{status:#}");
    assert_eq!(
        (s["snapshots_failure_total"].as_u64(), s["snapshots_skipped_total"].as_u64()),
        (Some(0), Some(1)),
        "{status:#}"
    );
    let addr = status["metrics_listen"].as_str().unwrap().to_string();
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.contains("pgmedic_snapshots_total{database=\"app\",outcome=\"failure\"} 0"), "{metrics}");
    assert!(metrics.contains("pgmedic_snapshots_total{database=\"app\",outcome=\"skipped\"} 1"), "{metrics}");
}
