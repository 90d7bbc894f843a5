//! The review's defects in repairs and the daemon, on the real P3009 fixture and the real
//! binary: SIGTERM in the middle of a repair, a repair killed outright, a command step's
//! background children and environment, redaction, who asked, and a migrations table the
//! watcher cannot read.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::prisma::*;
use common::*;
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

/// A fifo the test opens to let a playbook's command go on, and the file that command touches
/// when it starts waiting.
struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    fn new() -> Gate {
        let dir = tempfile::tempdir().unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(dir.path().join("fifo"))
            .status()
            .unwrap()
            .success());
        Gate { dir }
    }

    /// A command step that marks it has started, then waits for `open`.
    fn step(&self) -> String {
        let (started, fifo) = (self.dir.path().join("started"), self.dir.path().join("fifo"));
        format!(
            "{{ command = [\"sh\", \"-c\", \"touch {}; read x < {}\"] }}",
            started.display(),
            fifo.display()
        )
    }

    fn wait_started(&self) {
        let started = self.dir.path().join("started");
        wait_for("the command step", MINUTE, || started.exists());
    }

    fn open(&self) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.path().join("fifo"))
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
    }
}

fn gated_playbook(gate: &Gate) -> impl Fn(&Path) -> String + '_ {
    move |_| {
        format!(
            "\n[[playbooks]]\nname = \"slow\"\nsteps = [ {{ sql = \"CREATE TABLE step_one(x int)\" }}, {}, {{ resolve = \"rolled-back\" }} ]\n",
            gate.step()
        )
    }
}

fn failed_rows(db: &TestDb) -> String {
    db.sql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL")
}

#[test]
fn sigterm_during_a_repair_lets_it_finish_and_records_it() {
    let db = p3009();
    let gate = Gate::new();
    let pgm = with_playbook(Backend::Local, &db, "", gated_playbook(&gate));
    // Listen as systemd does: the stop timeout must be extended to cover the repair.
    let systemd = NotifyListener::bind(pgm.dir.path().join("notify.sock"));
    let mut daemon = Daemon::start_env(&pgm, &[("NOTIFY_SOCKET", systemd.path.to_str().unwrap())]);
    let socket = daemon.socket.clone();
    let client = std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
        s.write_all(b"{\"cmd\":\"repair\",\"db\":\"app\"}\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    });
    gate.wait_started();
    daemon.signal(libc::SIGTERM);
    daemon.wait_log("waiting for running repairs to finish", MINUTE);
    // sql 5m + command 10m5s + resolve 5m (the defaults), Prisma's lock wait 30s twice, the
    // snapshot's shutdown timeout 60s and abort grace 30s: 22m35s.
    wait_for("EXTEND_TIMEOUT_USEC", MINUTE, || systemd.saw("EXTEND_TIMEOUT_USEC=1355000000"));
    gate.open();
    assert_eq!(daemon.wait_exit(MINUTE), 0, "{}", daemon.log());
    let reply: Value = serde_json::from_str(client.join().unwrap().trim()).expect("the client got its reply");
    assert_eq!(reply["runs"][0]["outcome"], "succeeded", "{reply}");
    assert_eq!(failed_rows(&db), "0", "the last step ran");
    let audit = pgm.run(&["audit", "--json"]).json();
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["outcome"], "succeeded", "{audit}");
}

#[test]
fn a_repair_killed_mid_run_is_shown_interrupted_at_the_next_start() {
    let db = p3009();
    let gate = Gate::new();
    let pgm = with_playbook(Backend::Local, &db, "", gated_playbook(&gate));
    let mut repair = pgm.command(&["repair"]).spawn().unwrap();
    gate.wait_started();
    repair.kill().unwrap(); // SIGKILL, as the OOM killer would
    repair.wait().unwrap();
    gate.open(); // the command step's own process group outlived pgmedic: let it end
    let audit = pgm.run(&["audit", "--json"]).json();
    let rec = &audit[0];
    assert_eq!(rec["outcome"], "interrupted", "{audit}");
    assert_eq!(
        (rec["steps"][0]["outcome"].as_str(), rec["steps"][2]["outcome"].as_str()),
        (Some("ok"), Some("planned"))
    );
    assert!(rec["snapshot_id"].as_str().is_some(), "{rec}");

    let (hook, received) = webhook("/hook");
    let text =
        std::fs::read_to_string(&pgm.config).unwrap() + &format!("\n[[notify]]\nwebhook = \"{hook}\"\n");
    pgm.write_config(&text);
    let daemon = Daemon::start(&pgm);
    let last = &daemon.status()["databases"]["app"]["last_repair"];
    assert_eq!(last["outcome"], "interrupted", "{last}");
    let request = received.join().unwrap();
    let event: Value = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(
        (event["event"].as_str(), event["detail"]["run_id"].as_str()),
        (Some("repair_interrupted"), rec["run_id"].as_str())
    );
    drop(daemon);
    // Reported once: the next start finds nothing left to close.
    let again = Daemon::start(&pgm);
    assert!(again.status()["databases"]["app"]["last_repair"].is_null(), "{}", again.log());
    let lines = std::fs::read_to_string(pgm.dir.path().join("state/audit.jsonl")).unwrap();
    assert_eq!(lines.matches("\"outcome\":\"interrupted\"").count(), 1, "{lines}");
}

#[test]
fn a_command_timeout_kills_the_whole_process_group() {
    let db = p3009();
    let marker = format!("30.{}", rand::random::<u16>());
    let late = tempfile::tempdir().unwrap();
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        format!(
            "\n[[playbooks]]\nname = \"bg\"\nsteps = [ {{ command = [\"sh\", \"-c\", \"(sleep {marker}; date > {}/late) & sleep {marker}\"], timeout = \"1s\" }} ]\n",
            late.path().display()
        )
    });
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.json()["steps"][0]["error"].as_str().unwrap().contains("timed out"), "{run:?}");
    let left = std::process::Command::new("pgrep").args(["-f", &marker]).output().unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes of the step outlived it: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn command_steps_get_a_clean_environment_and_secrets_stay_out_of_the_audit() {
    let db = p3009();
    let forms = [
        "PASSWORD E'hunter2'",
        "PASSWORD  'hunter2'",
        "PASSWORD $$hunter2$$",
        "password = 'hunter2'",
        "host=db password=hunter2 dbname=x",
        "curl -u admin:hunter2 x",
        "Authorization: Bearer hunter2",
    ];
    let printf: Vec<String> = forms.iter().map(|f| format!("{f:?}")).collect();
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        format!(
            "\n[[playbooks]]\nname = \"env\"\nsteps = [ {{ command = [\"env\"], env = {{ STEP_VAR = \"mine\" }} }}, \
             {{ command = [\"printf\", \"%s\\\\n\", {}] }}, {{ resolve = \"rolled-back\" }} ]\n",
            printf.join(", ")
        )
    });
    let run =
        pgm.run_env(&["repair", "--json"], &[("LEAKY_VAR", "from-the-daemon"), ("SUDO_USER", "mallory")]);
    assert_eq!(run.code, 0, "{run:?}");
    let rec = run.json();
    let env = rec["steps"][0]["output"].as_str().unwrap();
    assert!(env.contains("STEP_VAR=mine") && env.contains("PATH="), "{env}");
    for absent in ["AWS_SECRET_ACCESS_KEY", "LEAKY_VAR", "PGMEDIC_LOG"] {
        assert!(!env.contains(absent), "{absent} reached the command: {env}");
    }
    assert_eq!(rec["steps"][1]["output"].as_str().unwrap().lines().count(), forms.len(), "{rec}");
    let state = pgm.dir.path().join("state");
    let stored = std::fs::read_to_string(
        pgm.snapshots_dir().join(format!("_pgmedic/audit/app/{}.json", rec["run_id"].as_str().unwrap())),
    )
    .unwrap();
    for text in [run.stdout.as_str(), &std::fs::read_to_string(state.join("audit.jsonl")).unwrap(), &stored] {
        assert!(!text.contains("hunter2"), "a secret reached the audit: {text}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&state), mode(&state.join("audit.jsonl"))), (0o700, 0o600));
    let uid = unsafe { libc::getuid() };
    let who = rec["requested_by"].as_str().unwrap();
    assert!(who.contains(&format!("(uid={uid})")) && who.ends_with(",sudo_user=mallory"), "{who}");
}

#[test]
fn a_table_the_watcher_cannot_read_is_a_state_not_a_crash() {
    let db = TestDb::new("odd_rows");
    db.sql(
        "CREATE TABLE _prisma_migrations (id varchar(36) PRIMARY KEY, checksum varchar(64), finished_at timestamptz, \
         migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz, started_at timestamptz NOT NULL DEFAULT now(), \
         applied_steps_count int NOT NULL DEFAULT 0); \
         INSERT INTO _prisma_migrations (id, checksum, migration_name, finished_at) VALUES ('a', NULL, '20250101000000_init', now())",
    );
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\nwatch_interval = \"200ms\"\n",
        db.url()
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let run = pgm.run(&["migrations", "--json"]);
    assert_eq!(run.code, 0, "a NULL checksum is data, not a crash: {run:?}");
    assert_eq!(run.json()["app"]["migrations"][0]["status"], "applied");

    let daemon = Daemon::start(&pgm);
    let state = || daemon.status()["databases"]["app"]["migrations"].clone();
    wait_for("the watcher's first read", MINUTE, || state()["state"] == "ok");
    db.sql("ALTER TABLE _prisma_migrations ALTER COLUMN applied_steps_count TYPE text");
    wait_for("the unreadable table in status", MINUTE, || state()["state"] == "unreachable");
    assert!(state()["error"].as_str().unwrap().contains("cannot read as Prisma's"), "{}", state());
    db.sql(
        "ALTER TABLE _prisma_migrations ALTER COLUMN applied_steps_count TYPE int USING applied_steps_count::int; \
         INSERT INTO _prisma_migrations (id, checksum, migration_name, logs) VALUES ('b', 'c', '20250102000000_next', 'boom')",
    );
    wait_for("the failure noticed by the same watcher", MINUTE, || state()["state"] == "failed");
}

#[test]
fn watchers_share_a_few_short_connections() {
    let dbs: Vec<TestDb> = (0..8).map(|_| TestDb::new("watched")).collect();
    let tail: String = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            format!("\n[[databases]]\nname = \"w{i}\"\nurl = \"{}\"\n[databases.migrations]\nwatch_interval = \"50ms\"\n", db.url())
        })
        .collect();
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let daemon = Daemon::start(&pgm);
    let watched = |name: &str| daemon.status()["databases"][name]["migrations"]["state"] == "missing";
    wait_for("every watcher's first read", MINUTE, || (0..8).all(|i| watched(&format!("w{i}"))));
    let names: Vec<String> = dbs.iter().map(|d| format!("'{}'", d.name)).collect();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgmedic@%' AND datname IN ({})",
        names.join(", ")
    );
    // A measurement over time, not a wait: 100 samples while the watchers read every 50 ms.
    let mut most = 0;
    for _ in 0..100 {
        most = most.max(psql("postgres", &sql).parse::<u32>().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(most <= 4, "{most} watcher connections at once: more than the daemon's 4");
}

/// The fixture's failed row made to look crashed (no log) at `started`, an SQL time expression.
fn crashed_at(db: &TestDb, started: &str) {
    db.sql(&format!(
        "UPDATE _prisma_migrations SET logs = NULL, started_at = {started} WHERE migration_name = '{FAILED}'"
    ));
}

fn rolled_back_playbook(_: &Path) -> String {
    "\n[[playbooks]]\nname = \"back\"\nsteps = [ { resolve = \"rolled-back\" } ]\n".into()
}

#[test]
fn a_crash_younger_than_the_grace_period_is_not_repaired() {
    let db = p3009();
    crashed_at(&db, "now() - interval '20 seconds'");
    let pgm = with_playbook(Backend::Local, &db, "crash_grace = \"2m\"", rolled_back_playbook);
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 3, "a deploy without its lock looks crashed: refused {run:?}");
    let rec = run.json();
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.contains("repair.crash_grace (2m)") && error.contains("PRISMA_SCHEMA_DISABLE_ADVISORY_LOCK"),
        "{error}"
    );
    assert!(rec["snapshot_id"].is_null(), "nothing was done, not even a snapshot: {rec}");
    assert_eq!(failed_rows(&db), "1");

    crashed_at(&db, "now() - interval '3 minutes'");
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 0, "older than the grace: repaired {run:?}");
    assert_eq!(failed_rows(&db), "0");
}

#[test]
fn the_table_is_read_again_after_the_pre_repair_snapshot() {
    let db = p3009();
    let gated = GatedTools::new();
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ndir = \"{}\"\n{}",
        db.url(),
        fixture("migrations").display(),
        rolled_back_playbook(Path::new("."))
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", &gated.snapshot_extra(), &tail);
    let repair = pgm.command(&["repair", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    wait_for("the pre-repair snapshot", MINUTE, || gated.waiting() > 0);
    // Meanwhile the migration is finished by its own tool (a deploy that ran without its lock).
    db.sql(&format!(
        "UPDATE _prisma_migrations SET finished_at = now(), logs = NULL WHERE migration_name = '{FAILED}'"
    ));
    gated.open();
    let out = repair.wait_with_output().unwrap();
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("changed while the pre-repair snapshot"), "{rec}");
    assert!(rec["snapshot_id"].is_string(), "{rec}");
    assert_eq!(rec["steps"][0]["outcome"], "planned", "no step ran: {rec}");
    let state = db.sql(&format!(
        "SELECT finished_at IS NOT NULL AND rolled_back_at IS NULL FROM _prisma_migrations WHERE migration_name = '{FAILED}'"
    ));
    assert_eq!(state, "t", "the finished migration was not marked rolled back");
}

#[test]
fn a_reload_during_a_repair_does_not_change_the_server_its_snapshot_reads() {
    let db = p3009();
    let other = TestDb::new("elsewhere");
    other.sql("CREATE TABLE only_elsewhere (x int)");
    let gated = GatedTools::new();
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ndir = \"{}\"\n{}",
        db.url(),
        fixture("migrations").display(),
        rolled_back_playbook(Path::new("."))
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", &gated.snapshot_extra(), &tail);
    let daemon = Daemon::start(&pgm);
    // A snapshot holds the worker, so the repair's own snapshot waits behind it.
    assert_eq!(daemon.request(r#"{"cmd":"snapshot","db":"app","wait":false}"#)["ok"], true);
    wait_for("the first snapshot", MINUTE, || daemon.status()["databases"]["app"]["running"].is_object());
    let socket = daemon.socket.clone();
    let client = std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
        s.write_all(b"{\"cmd\":\"repair\",\"db\":\"app\"}\n").unwrap();
        let mut reply = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut reply).unwrap();
        reply
    });
    wait_for("the pre-repair snapshot queued", MINUTE, || daemon.status()["databases"]["app"]["queued"] == 1);
    let text = std::fs::read_to_string(&pgm.config).unwrap().replace(&db.url(), &other.url());
    pgm.write_config(&text);
    assert_eq!(daemon.request(r#"{"cmd":"reload"}"#)["ok"], true);
    gated.open();
    let reply: Value = serde_json::from_str(client.join().unwrap().trim()).unwrap();
    let run = &reply["runs"][0];
    assert_eq!(run["outcome"], "succeeded", "{reply}");
    let id = run["snapshot_id"].as_str().unwrap();
    let listed = pgm.run(&["snapshots", "--json"]).json();
    let snap =
        listed.as_array().unwrap().iter().find(|m| m["id"] == id).unwrap_or_else(|| panic!("{listed}"));
    let tables = snap["tables"].to_string();
    assert!(
        tables.contains("_prisma_migrations") && !tables.contains("only_elsewhere"),
        "the pre-repair snapshot is of the database the run repaired: {tables}"
    );
    assert_eq!(failed_rows(&db), "0");
}

#[test]
fn a_dry_run_that_cannot_read_the_table_does_not_say_nothing_failed() {
    let db = TestDb::new("wrongtable");
    // Another tool's table under Prisma's name: not Prisma's columns.
    db.sql("CREATE TABLE _prisma_migrations (version bigint, dirty boolean)");
    let pgm = with_playbook(Backend::Local, &db, "", rolled_back_playbook);
    let run = pgm.run(&["repair", "--dry-run"]);
    assert_ne!(run.code, 0, "{run:?}");
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(!text.contains("nothing failed"), "{text}");
    assert!(text.contains("_prisma_migrations"), "the error names the table: {text}");
}
