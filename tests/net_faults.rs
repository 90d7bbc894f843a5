//! A bad network between pgmedic and its servers, made by the fault proxy in `common::proxy`:
//! PostgreSQL connections cut in the middle of a dump, a restore or the watcher's polling, and an
//! S3 endpoint that stalls past `storage.timeout` or resets part uploads. Whatever the network
//! does, a failure must leave nothing listed, nothing committed and no upload open, and what
//! can be retried must succeed.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;

const MIB: u64 = 1024 * 1024;
const MINUTE: Duration = Duration::from_secs(60);

fn postgres_proxy() -> Proxy {
    Proxy::start(format!("{PG_HOST}:{PG_PORT}").parse().unwrap())
}

/// A connection URL for `db` that goes through `proxy`.
fn via(proxy: &Proxy, db: &str) -> String {
    format!("postgresql://postgres@{PG_HOST}:{}/{db}", proxy.port())
}

/// A config on `s3` whose storage endpoint is `proxy` (which forwards to the moto server).
fn s3_via(proxy: &Proxy, s3: &S3Server, url: &str, storage_extra: &str) -> Pgmedic {
    let pgm = Pgmedic::new(Backend::S3(s3), &[("app", url)], storage_extra, "");
    let text = std::fs::read_to_string(&pgm.config).unwrap();
    pgm.write_config(&text.replace(&s3.endpoint, &format!("http://{}", proxy.addr())));
    pgm
}

fn s3_proxy(s3: &S3Server) -> Proxy {
    let addr: SocketAddr = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    Proxy::start(addr)
}

/// A pgmedic command running while the test breaks the network. Its output goes to files: a
/// pipe nobody reads could fill and block it.
struct Background {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    fn start(pgm: &Pgmedic, args: &[&str]) -> Background {
        let tag = format!("{:08x}", rand::random::<u32>());
        let (out, err) =
            (pgm.dir.path().join(format!("{tag}.out")), pgm.dir.path().join(format!("{tag}.err")));
        let child = (pgm.command(args))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Background { child, out, err }
    }

    /// Waits for the exit, failing (with what it printed) if it takes longer than `limit`.
    fn finish(mut self, limit: Duration) -> Run {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            let stderr = std::fs::read_to_string(&self.err).unwrap_or_default();
            assert!(start.elapsed() < limit, "still running after {limit:?}:\n{stderr}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        Run { code: status.code().unwrap_or(-1), stdout: read(&self.out), stderr: read(&self.err) }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Dumps `app` through a throttled proxy, waits for `in_flight` (stored data on its way), then
/// cuts every PostgreSQL connection: pg_dump and pgmedic's own session both lose the server.
fn cut_mid_dump(pgm: &Pgmedic, proxy: &Proxy, in_flight: impl FnMut() -> bool) {
    // 4 MiB/s: the 22 MiB dump would take over 5 s, so the cut lands well inside it.
    proxy.throttle(Some(4 * MIB));
    let running = Background::start(pgm, &["snapshot", "--db", "app"]);
    wait_for("stored data on its way", MINUTE, in_flight);
    proxy.cut();
    let run = running.finish(MINUTE);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("pg_dump failed"), "pg_dump's failure is the reason given: {run:?}");
    assert!(pgm.snapshot_ids().is_empty(), "a snapshot cut short must not be listed");
}

#[test]
fn postgres_cut_mid_dump_s3_leaves_no_upload() {
    let s3 = S3Server::start();
    let db = TestDb::new("cutdump");
    fill_random(&db, 24);
    let proxy = postgres_proxy();
    let pgm = Pgmedic::new(Backend::S3(&s3), &[("app", &via(&proxy, &db.name))], "part_size_mib = 5\n", "");
    // A part already stored in S3 proves the upload was well under way when the server went.
    cut_mid_dump(&pgm, &proxy, || s3.parts() >= 1);
    assert_eq!(s3.uploads(), 0, "the multipart upload was aborted");
    assert_eq!(s3.keys(), Vec::<String>::new(), "no object of the failed snapshot is left");
}

#[test]
fn postgres_cut_mid_dump_local_leaves_no_file() {
    let db = TestDb::new("cutdump_local");
    fill_random(&db, 24);
    let proxy = postgres_proxy();
    let pgm = Pgmedic::new(Backend::Local, &[("app", &via(&proxy, &db.name))], "", "");
    let dir = pgm.snapshots_dir();
    // The dump's temporary file growing (not the globals, stored whole before the dump starts).
    let dump_growing = || {
        files_under(&dir).iter().any(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(".dump.zst.pgmedic-tmp-") && f.metadata().map(|m| m.len() > 0).unwrap_or(false)
        })
    };
    cut_mid_dump(&pgm, &proxy, dump_growing);
    assert_eq!(files_under(&dir), Vec::<PathBuf>::new(), "no file of the failed snapshot is left");
}

#[test]
fn postgres_cut_mid_restore_drops_the_created_database() {
    let src = TestDb::new("cutrestore");
    fill_random(&src, 8);
    let pgm = Pgmedic::new(Backend::Local, &[("app", &src.url())], "", "");
    let m = pgm.snapshot("app");
    let (id, raw) = (m["id"].as_str().unwrap(), m["raw_bytes"].as_u64().unwrap());

    let proxy = postgres_proxy();
    // 2 MiB/s up: pg_restore's ~7 MiB of COPY data takes seconds to go through.
    proxy.throttle(Some(2 * MIB));
    let target = TestDb::reserved("cutrestore_dst");
    let url = via(&proxy, &target.name);
    let running = Background::start(&pgm, &["restore", id, "--target", &url, "--create"]);
    wait_for("pg_restore to be streaming rows", MINUTE, || proxy.bytes_up() > 2 * MIB);
    assert!(target.exists(), "the restore created its target");
    let at_cut = proxy.bytes_up();
    proxy.cut();
    // pgmedic drops what it created over a new connection, which the proxy still forwards.
    let run = running.finish(MINUTE);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("pg_restore"), "the restore's failure is the reason given: {run:?}");
    assert!(at_cut < raw, "the cut came before the end of the restore ({at_cut} of {raw} bytes)");
    assert!(!target.exists(), "the database this restore created was dropped: {run:?}");
}

#[test]
fn s3_stalled_past_the_timeout_fails_in_bounded_time_and_the_next_snapshot_cleans() {
    let s3 = S3Server::start();
    let db = TestDb::new("stall");
    fill_random(&db, 24); // ~11 MiB stored: two 5 MiB parts and a small last one
    let proxy = s3_proxy(&s3);
    let pgm = s3_via(&proxy, &s3, &db.url(), "timeout = \"1s\"\npart_size_mib = 5\n");
    // 8 MiB/s sends a 5 MiB part in 0.6 s, inside the 1 s attempt timeout, and lets the test see
    // the first part's body going up: the upload exists and is mid-part when the stall starts.
    proxy.throttle(Some(8 * MIB));
    let running = Background::start(&pgm, &["snapshot", "--db", "app"]);
    wait_for("the first part to be going up", MINUTE, || proxy.bytes_up() > MIB);
    proxy.set_stalled(true);
    let (stalled_at, accepted) = (Instant::now(), proxy.connections_accepted());
    let run = running.finish(MINUTE);
    let took = stalled_at.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("storage s3://") && run.stderr.contains("timed out"), "{run:?}");
    assert!(run.stderr.contains("tried 4 times, each attempt limited by storage.timeout"), "{run:?}");
    // Four attempts of 1 s and their backoff for the part, the abort and the globals' delete.
    assert!(took < Duration::from_secs(45), "retries are bounded: failed {took:?} into the stall");
    // A timed-out attempt's connection is dropped, so each retry is a new connection.
    let retries = proxy.connections_accepted() - accepted;
    assert!(retries >= 3, "the requests were retried ({retries} new connections): {run:?}");

    // Connections that lived through the stall go, so nothing sent into it arrives late.
    proxy.cut();
    proxy.set_stalled(false);
    proxy.throttle(None);
    assert_eq!(s3.uploads(), 1, "the abort could not get through either: the upload is left open");
    assert!(pgm.snapshot_ids().is_empty(), "nothing listed after the failed upload");

    let second = pgm.snapshot("app");
    let id = second["id"].as_str().unwrap();
    assert_eq!(pgm.snapshot_ids(), vec![id.to_string()]);
    assert_eq!(s3.uploads(), 0, "the next snapshot aborted the upload the stall left open");
    let keys = s3.keys();
    assert!(keys.iter().all(|k| k.contains(id)), "what the failed snapshot stored was removed: {keys:?}");
}

#[test]
fn s3_part_uploads_reset_are_retried_and_the_snapshot_restores() {
    let s3 = S3Server::start();
    let src = TestDb::new("reset");
    fill_random(&src, 24);
    let proxy = s3_proxy(&s3);
    let pgm = s3_via(&proxy, &s3, &src.url(), "part_size_mib = 5\n");
    // Requests carrying over 1 MiB are part uploads; small ones (create, complete) pass.
    proxy.reset_after(2, MIB);
    let m = pgm.snapshot("app");
    assert_eq!(proxy.resets_done(), 2, "two part uploads were reset mid-body");
    assert!(m["stored_bytes"].as_u64().unwrap() > 10 * MIB, "several parts: {m}");
    assert_eq!(s3.uploads(), 0);

    let dst = TestDb::reserved("reset_dst");
    let run = pgm.run(&["restore", m["id"].as_str().unwrap(), "--target", &dst.name, "--create"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(src.plain_dump() == dst.plain_dump(), "the restored database differs from its source");
}

const PRISMA_TABLE: &str = "CREATE TABLE _prisma_migrations (id varchar(36) PRIMARY KEY, \
    checksum varchar(64) NOT NULL, finished_at timestamptz, migration_name varchar(255) NOT NULL, \
    logs text, rolled_back_at timestamptz, started_at timestamptz NOT NULL DEFAULT now(), \
    applied_steps_count int NOT NULL DEFAULT 0); \
    INSERT INTO _prisma_migrations VALUES ('11111111-1111-1111-1111-111111111111', 'c0ffee', now(), \
    '20250101000000_init', NULL, NULL, now(), 1)";

#[test]
fn the_watcher_reconnects_after_its_connection_is_cut() {
    let db = TestDb::new("watchcut");
    db.sql(PRISMA_TABLE);
    let proxy = postgres_proxy();
    let tail = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ntool = \"prisma\"\n\
         watch_interval = \"200ms\"\non_failure = \"notify\"\n",
        via(&proxy, &db.name)
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let daemon = Daemon::start(&pgm);
    let state = || daemon.status()["databases"]["app"]["migrations"].clone();
    wait_for("the watcher to see the table healthy", MINUTE, || state()["state"] == "ok");
    let accepted = proxy.connections_accepted();

    proxy.cut();
    // Straight to the server: only the watcher's own connection went through the proxy.
    db.sql(
        "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, applied_steps_count) \
         VALUES ('22222222-2222-2222-2222-222222222222', 'bad', '20250601000000_broken', 'ERROR: boom', 0)",
    );
    wait_for("the watcher to see the failure", Duration::from_secs(30), || state()["state"] == "failed");
    assert_eq!(state()["failed"], serde_json::json!(["20250601000000_broken"]), "{}", state());
    assert!(proxy.connections_accepted() > accepted, "the watcher connected again through the proxy");
    assert_eq!(daemon.status()["ok"], true, "{}", daemon.log());
}
