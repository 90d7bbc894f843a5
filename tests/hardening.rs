//! The review's defects in snapshots, storage and the command line, each reproduced on real
//! PostgreSQL, the real client tools and the real binary: a database named `audit`, prune and
//! other installations, the snapshot lock, the connection string the tools get, the `--clean`
//! prompt, TOML errors, TLS defaults, an interrupted restore, `verify --deep`, lock waits and
//! the daemon-wide snapshot limit.

mod common;

use std::time::Duration;

use common::prisma::LockHolder;
use common::*;

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_database_named_audit_is_listed_verified_restored_and_pruned() {
    let db = TestDb::new("audit_named");
    db.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1), (2)");
    let pgm = Pgmedic::new(
        Backend::Local,
        &[("audit", &db.url())],
        "",
        "retention = { keep_last = 1, keep_daily = 0, keep_weekly = 0, keep_monthly = 0 }",
    );
    // An audit copy where versions before 0.2 wrote them: it must stay, and stay out of the way.
    let legacy = pgm.snapshots_dir().join("audit/app/20261101T000000Z-abcdef.json");
    std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    std::fs::write(&legacy, "{}").unwrap();
    let first = pgm.snapshot("audit")["id"].as_str().unwrap().to_string();
    let second = pgm.snapshot("audit")["id"].as_str().unwrap().to_string();
    assert_eq!(pgm.snapshot_ids(), [first.clone(), second.clone()]);
    let verify = pgm.run(&["verify", &second, "--json"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let target = TestDb::reserved("audit_copy");
    let restore = pgm.run(&["restore", &second, "--target", &target.name, "--create"]);
    assert_eq!(restore.code, 0, "{restore:?}");
    assert_eq!(target.sql("SELECT sum(x) FROM t"), "3");
    let prune = pgm.run(&["prune", "--json"]);
    assert_eq!(prune.code, 0, "{prune:?}");
    assert_eq!(pgm.snapshot_ids(), [second]);
    assert!(legacy.exists(), "an old audit record is neither a snapshot nor an orphan");

    let reserved = Pgmedic::new(Backend::Local, &[("_pgmedic", &db.url())], "", "");
    let run = reserved.run(&["check-config"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("databases[0].name") && run.stderr.contains("reserved"), "{run:?}");
}

#[test]
fn prune_without_db_leaves_other_installations_alone() {
    let (a, b) = (TestDb::new("prune_a"), TestDb::new("prune_b"));
    let keep_one = "retention = { keep_last = 1, keep_daily = 0, keep_weekly = 0, keep_monthly = 0 }";
    let mine = Pgmedic::new(Backend::Local, &[("a", &a.url())], "", keep_one);
    // Another installation writing to the same directory, with a database this one does not know.
    let theirs = Pgmedic::new(Backend::Local, &[("b", &b.url())], "", keep_one);
    let shared_path = mine.snapshots_dir().display().to_string();
    let text = std::fs::read_to_string(&theirs.config)
        .unwrap()
        .replace(&theirs.snapshots_dir().display().to_string(), &shared_path);
    theirs.write_config(&text);
    for _ in 0..2 {
        mine.snapshot("a");
        theirs.snapshot("b");
    }
    let run = mine.run(&["prune"]);
    assert_eq!(run.code, 0, "{run:?}");
    let count = |db: &str| mine.run(&["snapshots", "--db", db, "--json"]).json().as_array().unwrap().len();
    assert_eq!(count("a"), 1);
    assert_eq!(
        theirs.run(&["snapshots", "--db", "b", "--json"]).json().as_array().unwrap().len(),
        2,
        "prune touched a database that is not in its configuration"
    );
}

/// A child that is killed if the test fails first (a gated snapshot would wait forever).
struct Killed(Option<std::process::Child>);

impl Killed {
    fn wait(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pid of the session holding pgmedic's snapshot lock on `db`, once there is one.
fn snapshot_lock_pid(db: &TestDb) -> String {
    let sql = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885826404 AND objid = 1 AND objsubid = 2 \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let mut pid = String::new();
    wait_for("the snapshot lock", MINUTE, || {
        pid = db.sql(sql);
        !pid.is_empty()
    });
    pid
}

#[test]
fn idle_session_timeout_cannot_take_the_snapshot_lock() {
    let db = TestDb::new("idle_lock");
    db.sql(&format!("CREATE TABLE t(x int); ALTER DATABASE {} SET idle_session_timeout = '500ms'", db.name));
    let gated = GatedTools::new();
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", &gated.snapshot_extra());
    let first = Killed(Some(
        pgm.command(&["snapshot", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap(),
    ));
    let pid = snapshot_lock_pid(&db);
    // The lock session now sits idle while pg_dump waits at the gate: give the database's
    // idle_session_timeout three times its length to end it, as it would without the fix.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(snapshot_lock_pid(&db), pid, "the lock session survived idle_session_timeout");
    let real = real_bin_dir();
    let second = pgm.run_env(&["snapshot"], &[(real.0, &real.1)]);
    assert_eq!(second.code, 3, "a second snapshot is refused while the first runs: {second:?}");
    gated.open();
    let out = first.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(pgm.snapshot_ids().len(), 1);
}

#[test]
fn a_snapshot_that_lost_its_lock_fails_and_is_not_listed() {
    let db = TestDb::new("lost_lock");
    db.sql("CREATE TABLE t(x int)");
    let gated = GatedTools::new();
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", &gated.snapshot_extra());
    let first =
        Killed(Some(pgm.command(&["snapshot"]).stderr(std::process::Stdio::piped()).spawn().unwrap()));
    let pid = snapshot_lock_pid(&db);
    db.sql(&format!("SELECT pg_terminate_backend({pid})"));
    gated.open();
    let out = first.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("snapshot lock on it was lost"), "{stderr}");
    assert!(pgm.snapshot_ids().is_empty(), "a snapshot that lost its lock is never listed");
}

#[test]
fn the_tools_get_the_whole_connection_string() {
    let db = TestDb::new("conninfo");
    db.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (42)");
    // A host name nobody resolves, reachable only through hostaddr: without hostaddr, pg_dump
    // would look the name up and fail.
    let by_addr =
        format!("postgresql://postgres@db.invalid:{PG_PORT}/{}?hostaddr=127.0.0.1&sslmode=disable", db.name);
    // Two hosts, the first down: both pgmedic's session and pg_dump must reach the second.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let two_hosts = format!(
        "postgresql://postgres@127.0.0.1:{closed},127.0.0.1:{PG_PORT}/{}?target_session_attrs=read-write&connect_timeout=5",
        db.name
    );
    for url in [by_addr, two_hosts] {
        let pgm = Pgmedic::new(Backend::Local, &[("app", &url)], "", "");
        let snap = pgm.run(&["snapshot", "--json"]);
        assert_eq!(snap.code, 0, "{url}: {snap:?}");
        let target = TestDb::reserved("conninfo_copy");
        let restore =
            pgm.run(&["restore", snap.json()["id"].as_str().unwrap(), "--target", &target.name, "--create"]);
        assert_eq!(restore.code, 0, "{url}: {restore:?}");
        assert_eq!(target.sql("SELECT x FROM t"), "42");
    }
}

#[test]
fn restore_clean_asks_for_the_parsed_database_name() {
    let db = TestDb::new("clean_src");
    db.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (7)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let target = TestDb::new("clean_dst");
    target.sql("CREATE TABLE other(y int)");
    let url = format!("postgresql://postgres@{PG_HOST}:{PG_PORT}/{}?sslmode=disable", target.name);
    let cmd = format!(
        "{} --config {} restore {id} --target '{url}' --clean",
        env!("CARGO_BIN_EXE_pgmedic"),
        pgm.config.display()
    );
    // On a pseudo-terminal (script), typing the database's name confirms.
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{Read, Write};
    // stdin stays open until the restore is done: script ends when its input does.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", target.name).unwrap();
    let mut screen = String::new();
    child.stdout.take().unwrap().read_to_string(&mut screen).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(screen.contains(&format!("in database {}.", target.name)), "{screen}");
    assert!(status.success(), "{screen}");
    assert_eq!(target.sql("SELECT x FROM t"), "7");
}

#[test]
fn a_toml_syntax_error_never_echoes_the_password() {
    let db = TestDb::new("toml");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let good = std::fs::read_to_string(&pgm.config).unwrap();
    let broken = format!("{good}\n[[databases]]\nname = \"x\"\nurl = \"postgresql://u:hunter2@h/db\n");
    pgm.write_config(&broken);
    let run = pgm.run(&["check-config"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(!run.stderr.contains("hunter2") && run.stderr.contains("line "), "{run:?}");

    pgm.write_config(&good);
    let daemon = Daemon::start(&pgm);
    pgm.write_config(&broken);
    let reply = daemon.request(r#"{"cmd":"reload"}"#);
    assert_eq!(reply["ok"], false, "{reply}");
    let status = daemon.status();
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(!error.contains("hunter2") && error.contains("line "), "{error}");
    assert!(!daemon.log().contains("hunter2"), "{}", daemon.log());
}

#[test]
fn tls_finds_the_root_certificate_where_libpq_does() {
    assert_eq!(psql("postgres", "SHOW ssl"), "on", "this test needs the local PostgreSQL to offer TLS");
    let ca = psql("postgres", "SHOW ssl_cert_file");
    let db = TestDb::new("tls_home");
    db.sql("CREATE TABLE t(x int)");
    let url = |mode: &str| format!("postgresql://postgres@127.0.0.1:{PG_PORT}/{}?sslmode={mode}", db.name);
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().display().to_string();
    let as_home = |mode: &str, args: &[&str]| {
        Pgmedic::new(Backend::Local, &[("app", &url(mode))], "", "").run_env(args, &[("HOME", &home_str)])
    };
    // `migrations` uses only pgmedic's own session: it must refuse exactly as libpq does (the
    // system's CAs are not libpq's default, even where they would trust the server).
    let missing = as_home("verify-ca", &["migrations"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    let want = format!("root certificate file \"{home_str}/.postgresql/root.crt\" does not exist");
    assert!(missing.stderr.contains(&want), "{missing:?}");
    // A root.crt that does not sign the server's certificate fails even `require`, as in libpq.
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy("/etc/ssl/certs/ISRG_Root_X1.pem", home.path().join(".postgresql/root.crt")).unwrap();
    let wrong = as_home("require", &["migrations"]);
    assert_eq!(wrong.code, 1, "{wrong:?}");
    // With the server's own certificate there, both the session and the tools verify it.
    std::fs::copy(&ca, home.path().join(".postgresql/root.crt")).unwrap();
    for mode in ["require", "verify-ca"] {
        let found = as_home(mode, &["snapshot"]);
        assert_eq!(found.code, 0, "{mode}: {found:?}");
    }
}

/// A pg_bin_dir whose pg_restore announces itself (a file) and then waits: a restore that is
/// provably in flight.
fn waiting_restore_tools(dir: &std::path::Path) -> std::path::PathBuf {
    let started = dir.join("pg_restore-started");
    let script = format!("#!/bin/sh\ntouch '{}'\nexec sleep 600\n", started.display());
    std::fs::write(dir.join("pg_restore"), script).unwrap();
    std::process::Command::new("chmod").arg("755").arg(dir.join("pg_restore")).status().unwrap();
    for tool in ["pg_dump", "pg_dumpall", "psql"] {
        std::os::unix::fs::symlink(which(tool), dir.join(tool)).unwrap();
    }
    started
}

#[test]
fn an_interrupted_restore_drops_what_it_created_and_its_temporary_file() {
    let db = TestDb::new("ctrlc");
    fill_random(&db, 2);
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let tools = tempfile::tempdir().unwrap();
    let started = waiting_restore_tools(tools.path());
    let bin = ("PGMEDIC_SNAPSHOT__PG_BIN_DIR", tools.path().to_str().unwrap());
    for jobs in ["1", "2"] {
        let _ = std::fs::remove_file(&started);
        let target = TestDb::reserved("ctrlc_dst");
        let mut cmd = pgm.command(&["restore", &id, "--target", &target.name, "--create", "--jobs", jobs]);
        let child = cmd.env(bin.0, bin.1).stderr(std::process::Stdio::piped()).spawn().unwrap();
        wait_for("pg_restore to start", MINUTE, || started.exists());
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("interrupted") && stderr.contains("was dropped"), "{stderr}");
        assert!(!target.exists(), "the database the restore created is gone (--jobs {jobs})");
        let leftovers: Vec<_> = std::fs::read_dir(pgm.dir.path().join("state"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(leftovers.iter().all(|n| !n.to_string_lossy().starts_with("restore-")), "{leftovers:?}");
    }
}

/// Now, as the heartbeat in a label writes it.
fn chrono_now() -> String {
    psql("postgres", "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')")
}

#[test]
fn verify_deep_drops_its_scratch_database_and_reports_no_failure() {
    let db = TestDb::new("deep");
    db.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let run = pgm.run(&["verify", &id, "--deep", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains("failed"), "a successful verify logs no failure: {run:?}");
    assert_eq!(run.json()["deep"]["scratch_server"], "ephemeral", "not on the production server by default");
    assert_eq!(run.json()["deep"]["tables"], 1, "{run:?}");
    let scratch = run.json()["deep"]["scratch_database"].as_str().unwrap().to_string();
    assert_eq!(
        psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{scratch}'")),
        "0"
    );
}

/// Scratch databases that a killed `verify --deep` or `diagnose` left (labelled, made on this
/// host by a process that is gone, or on another host with a heartbeat silent for ten minutes)
/// are dropped by the next run that makes one on that server; a live run's, another host's
/// beating one and any database pgmedic did not label are kept.
#[test]
fn scratch_databases_of_killed_runs_are_swept_and_no_others() {
    let db = TestDb::new("sweep");
    db.sql("CREATE TABLE t(x int)");
    let tail = format!("server = \"source\"\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n", db.url());
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let host = String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout).unwrap();
    let now = "2026-01-01T00:00:00+00:00";
    let made = [
        ("pgmedic_verify_0dead001", format!("pgmedic verify host={} pid={dead} started={now}", host.trim())),
        (
            "pgmedic_baseline_0dead02",
            format!("pgmedic baseline host={} pid={dead} started={now}", host.trim()),
        ),
        (
            "pgmedic_verify_0live003",
            format!("pgmedic verify host={} pid={} started={now}", host.trim(), std::process::id()),
        ),
        (
            "pgmedic_verify_0else004",
            format!("pgmedic verify host=elsewhere pid={dead} started={now} beat={}", chrono_now()),
        ),
        ("pgmedic_verify_0else006", format!("pgmedic verify host=elsewhere pid={dead} started={now}")),
        ("pgmedic_keep_0mine005", String::new()),
    ];
    let exists = |name: &str| {
        psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")) == "1"
    };
    for (name, label) in &made {
        psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        psql("postgres", &format!("CREATE DATABASE {name}"));
        if !label.is_empty() {
            psql("postgres", &format!("COMMENT ON DATABASE {name} IS '{label}'"));
        }
    }
    // A rehearsal's database kept with --keep is the operator's: its maker is gone too.
    let rehearsal =
        pgm.run(&["rehearse", "--db", "app", "--snapshot", &id, "--keep", "--json", "--", "true"]);
    assert_eq!(rehearsal.code, 0, "{rehearsal:?}");
    let kept_by_hand = rehearsal.json()["scratch_database"].as_str().unwrap().to_string();
    let run = pgm.run(&["verify", &id, "--deep", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(exists(&kept_by_hand), "a --keep database survives the sweep: {}", run.stderr);
    psql("postgres", &format!("DROP DATABASE {kept_by_hand}"));
    let kept: Vec<&str> = made.iter().map(|(n, _)| *n).filter(|n| exists(n)).collect();
    for (name, _) in &made {
        psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
    }
    assert_eq!(
        kept,
        ["pgmedic_verify_0live003", "pgmedic_verify_0else004", "pgmedic_keep_0mine005"],
        "{}",
        run.stderr
    );
}

#[test]
fn a_table_lock_fails_the_snapshot_in_time_and_names_its_holder() {
    let db = TestDb::new("lockwait");
    db.sql("CREATE TABLE busy(x int)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "lock_wait_timeout = \"1s\"");
    let _holder = LockHolder::take(&db, "1; BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE");
    let started = std::time::Instant::now();
    let run = pgm.run(&["snapshot"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(started.elapsed() < MINUTE, "gave up after lock_wait_timeout");
    for want in ["public.busy", "snapshot.lock_wait_timeout", "AccessExclusiveLock", "pid "] {
        assert!(run.stderr.contains(want), "{want}: {run:?}");
    }
    assert!(pgm.snapshot_ids().is_empty());
}

#[test]
fn max_concurrent_runs_one_snapshot_at_a_time_across_databases() {
    let dbs: Vec<TestDb> = (0..3).map(|_| TestDb::new("limit")).collect();
    let slow = slow_tools(0.7);
    let names = ["d0", "d1", "d2"];
    let entries: Vec<(&str, String)> = names.iter().zip(&dbs).map(|(n, d)| (*n, d.url())).collect();
    let refs: Vec<(&str, &str)> = entries.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let extra = format!("pg_bin_dir = \"{}\"\nmax_concurrent = 1\n", slow.path().display());
    let pgm = Pgmedic::new(Backend::Local, &refs, "", &extra);
    let daemon = Daemon::start(&pgm);
    daemon.signal(libc::SIGUSR2);
    wait_for("three snapshots", MINUTE, || pgm.snapshot_ids().len() == 3);
    let run = pgm.run(&["snapshots", "--json"]);
    let time = |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let mut spans: Vec<_> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (time(&m["taken_at"]), time(&m["finished_at"])))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "snapshots overlapped: {spans:?}");
    }
    let metrics = daemon.status();
    assert_eq!(metrics["snapshots"]["max_concurrent"], 1, "{metrics}");
}

fn mode(p: &std::path::Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777
}

fn tree(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(tree(&e.path()));
        }
    }
    out
}

/// A CLI snapshot under umask 022 (no daemon: in-process) writes a whole database: every file
/// it leaves is 0600 and every folder 0700; as root, they belong to the storage root's owner,
/// so that user's daemon can prune them. A snapshot prune cannot delete stops only itself.
#[test]
fn local_snapshots_are_private_whatever_the_umask_and_prune_goes_on_past_one_it_cannot_delete() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let db = TestDb::new("modes");
    db.sql("CREATE TABLE secret (v text); INSERT INTO secret VALUES ('card 4111')");
    let retention = "retention = { keep_last = 1, keep_daily = 0, keep_weekly = 0, keep_monthly = 0, keep_pre_repair_days = 0 }\n";
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", retention);
    let root = pgm.snapshots_dir();
    let nobody = unsafe { libc::geteuid() } == 0;
    if nobody {
        // The storage root belongs to the daemon's user; this CLI runs as root (sudo).
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    }
    let snap = || {
        let out = unsafe {
            pgm.command(&["snapshot", "--db", "app", "--json"])
                .pre_exec(|| {
                    libc::umask(0o022);
                    Ok(())
                })
                .output()
                .unwrap()
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    snap();
    let made = tree(&root);
    assert!(made.iter().any(|p| p.ends_with("dump.zst")), "{made:?}");
    for p in &made {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(p), want, "{} is {:o}", p.display(), mode(p));
        if nobody {
            assert_eq!(
                std::fs::metadata(p).unwrap().uid(),
                65534,
                "{} belongs to the storage root's owner",
                p.display()
            );
        }
    }

    // Three snapshots, keep the newest: the oldest's dump cannot be deleted (a folder in its place).
    snap();
    snap();
    let ids = pgm.snapshot_ids();
    let stuck = root.join("app").join(&ids[0]).join("dump.zst");
    std::fs::remove_file(&stuck).unwrap();
    std::fs::create_dir_all(stuck.join("in-the-way")).unwrap();
    let run = pgm.run(&["prune", "--json"]);
    assert_eq!(run.code, 1, "a failed deletion is reported: {}", run.stderr);
    assert!(run.stderr.contains(&ids[0]), "{}", run.stderr);
    assert_eq!(pgm.snapshot_ids(), [ids[2].clone()], "the others were pruned all the same");
}

/// A manifest is believed only about itself: a snapshot folder copied under another id is not
/// a second snapshot, and one naming an object outside the layout (`../../state/audit.jsonl`,
/// which prune would delete) is not used at all; each is skipped with a warning naming its key.
#[test]
fn manifests_that_do_not_match_their_key_or_the_layout_are_skipped() {
    let db = TestDb::new("forged");
    db.sql("CREATE TABLE t (x int)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let folder = pgm.snapshots_dir().join("app");
    let last = id.chars().last().unwrap();
    let other = format!("{}{}", &id[..id.len() - 1], if last == '0' { '1' } else { '0' });
    std::fs::create_dir(folder.join(&other)).unwrap();
    for e in std::fs::read_dir(folder.join(&id)).unwrap().map(Result::unwrap) {
        std::fs::copy(e.path(), folder.join(&other).join(e.file_name())).unwrap();
    }
    let run = pgm.run(&["snapshots", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ids: Vec<String> =
        run.json().as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, [id.clone()], "the copy is not another snapshot");
    assert!(
        run.stderr.contains(&format!("app/{other}/manifest.json"))
            && run.stderr.contains("copied or renamed"),
        "{}",
        run.stderr
    );

    let manifest = folder.join(&id).join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["object"] = serde_json::json!("../../state/audit.jsonl");
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let run = pgm.run(&["snapshots", "--json"]);
    assert_eq!(run.json(), serde_json::json!([]), "{}", run.stderr);
    assert!(run.stderr.contains("names the object `../../state/audit.jsonl`"), "{}", run.stderr);
}

/// A tool's table with a value pgmedic cannot read (a NULL where the tool never writes one) is
/// an error naming the column, in the CLI and in the daemon's status — never a panic.
#[test]
fn an_unreadable_migrations_table_is_an_error_naming_the_column_not_a_panic() {
    let db = TestDb::new("badcol");
    db.sql("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean); INSERT INTO schema_migrations VALUES (5, NULL)");
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ntool = \"golang-migrate\"\nwatch_interval = \"1s\"\n",
        db.url()
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let run = pgm.run(&["migrations", "--json"]);
    assert_eq!(run.code, 1, "an error, not a panic (101): {}", run.stderr);
    assert!(run.stderr.contains("column dirty of") && !run.stderr.contains("panicked"), "{}", run.stderr);
    let daemon = Daemon::start(&pgm);
    wait_for("the watcher's state", Duration::from_secs(30), || {
        daemon.status()["databases"]["app"]["migrations"]["state"] == "unreachable"
    });
    let status = daemon.status();
    assert!(
        status["databases"]["app"]["migrations"]["error"].as_str().unwrap().contains("column dirty of"),
        "{status:#}"
    );
    let reply = daemon.request(r#"{"cmd":"repair","db":"app","dry_run":true}"#);
    assert!(reply.is_object(), "the socket answers: {reply}");
}

/// Item 7: a snapshot is complete only once its folder's entry in the database folder, and that
/// folder's in the storage root, are on disk: a power loss right after "snapshot complete" must
/// not lose it. Observed with strace: every folder from the snapshot's up to the root is fsynced.
#[test]
fn a_local_snapshot_fsyncs_every_folder_up_to_the_storage_root() {
    let db = TestDb::new("fsync");
    db.sql("CREATE TABLE t (x int)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let cmd = pgm.command(&["snapshot", "--db", "app", "--json"]);
    let trace = pgm.dir.path().join("strace.txt");
    let mut strace = std::process::Command::new("strace");
    strace
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => strace.env(k, v),
            None => strace.env_remove(k),
        };
    }
    let out = strace.output().expect("strace runs (scripts/test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(&trace).unwrap();
    let root = pgm.snapshots_dir();
    for dir in [root.join("app").join(&id), root.join("app"), root.clone()] {
        let synced =
            text.lines().any(|l| l.contains("fsync(") && l.contains(&format!("<{}>)", dir.display())));
        assert!(synced, "no fsync of {} in\n{text}", dir.display());
    }
}
