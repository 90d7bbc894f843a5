//! The deploy under rehearsal: any migration tool's command, argv without a shell, in its own
//! process group from a cleared environment plus `DATABASE_URL` and `PG*` pointing at the
//! scratch database (a password goes through a 0600 `PGPASSFILE`, never the environment), killed
//! with its group at the timeout or on cancel. While it runs, a second session samples the
//! locks it holds on tables, so the report can say which tables a deploy locked and how.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::config::Host;
use tokio_util::sync::CancellationToken;

use crate::config::{passfile_line, DbUrl};
use crate::pg;
use crate::process::{self, Group, TERM_GRACE};

const OUTPUT_CAP: u64 = 256 * 1024;

pub struct Outcome {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub output: String,
    pub seconds: f64,
    pub locks: Vec<LockSeen>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockSeen {
    pub table: String,
    pub mode: String,
    pub table_bytes: i64,
    /// How long the lock was seen held (sampled every 200 ms).
    pub held_s: f64,
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The variables a migration tool reads: `DATABASE_URL` and libpq's `PG*`, no password.
fn env_for(url: &DbUrl) -> BTreeMap<String, String> {
    let cfg = url.pg_config();
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let (user, db) = (url.user().to_string(), url.dbname().to_string());
    let (host, database_url) = match cfg.get_hosts().first() {
        Some(Host::Unix(dir)) => {
            let dir = dir.display().to_string();
            (dir.clone(), format!("postgresql://{}@/{}?host={}&port={port}", enc(&user), enc(&db), enc(&dir)))
        }
        Some(Host::Tcp(h)) => {
            let bracketed = if h.contains(':') { format!("[{h}]") } else { h.clone() };
            (h.clone(), format!("postgresql://{}@{bracketed}:{port}/{}", enc(&user), enc(&db)))
        }
        None => ("localhost".into(), format!("postgresql://{}@localhost:{port}/{}", enc(&user), enc(&db))),
    };
    BTreeMap::from([
        ("DATABASE_URL".into(), database_url),
        ("PGHOST".into(), host),
        ("PGPORT".into(), port),
        ("PGUSER".into(), user),
        ("PGDATABASE".into(), db),
    ])
}

/// Runs `argv` against `url` until it exits, `timeout` passes or `cancel` fires.
pub async fn run(
    argv: &[String],
    url: &DbUrl,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Outcome, String> {
    let mut cmd = process::command(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env_for(url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let passfile = match url.password() {
        Some(pw) => {
            let mut f =
                tempfile::Builder::new().prefix(".pgmedic-pgpass-").tempfile().map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut f, passfile_line(&pw).as_bytes()).map_err(|e| e.to_string())?;
            cmd.env("PGPASSFILE", f.path());
            Some(f)
        }
        None => None,
    };
    let started = Instant::now();
    let mut group = Group::spawn(&mut cmd).map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let child = group.child();
    let out = tokio::spawn(process::read_head(child.stdout.take().expect("piped"), OUTPUT_CAP));
    let err = tokio::spawn(process::read_head(child.stderr.take().expect("piped"), OUTPUT_CAP));
    let sampler = CancellationToken::new();
    let locks = tokio::spawn(sample_locks(url.clone(), sampler.clone()));
    let (status, timed_out) = tokio::select! {
        s = group.child().wait() => (s.ok(), false),
        _ = tokio::time::sleep(timeout) => { group.terminate(TERM_GRACE).await; (None, true) }
        _ = cancel.cancelled() => { group.terminate(TERM_GRACE).await; (None, false) }
    };
    group.kill().await;
    sampler.cancel();
    drop(passfile);
    let (stdout, stderr) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    Ok(Outcome {
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        output: format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)),
        seconds: started.elapsed().as_secs_f64(),
        locks: locks.await.unwrap_or_default(),
    })
}

const LOCKS: &str = "SELECT n.nspname || '.' || c.relname, l.mode, pg_total_relation_size(c.oid) \
    FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.granted \
      AND l.pid <> pg_backend_pid() AND c.relkind IN ('r', 'p', 'm') \
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'";

/// Strongest mode first: PostgreSQL's lock modes in the order of what they block.
fn strength(mode: &str) -> usize {
    [
        "AccessShareLock",
        "RowShareLock",
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    ]
    .iter()
    .position(|m| *m == mode)
    .unwrap_or(0)
}

/// The largest tables' strongest locks, until `stop`; best effort (no session, no samples).
async fn sample_locks(url: DbUrl, stop: CancellationToken) -> Vec<LockSeen> {
    let Ok(session) = pg::connect(&url).await else { return Vec::new() };
    let mut seen: BTreeMap<String, LockSeen> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(rows) = session.client().query(LOCKS, &[]).await else { continue };
        for r in rows {
            let (table, mode, bytes): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            let e = seen.entry(table.clone()).or_insert(LockSeen {
                table,
                mode: mode.clone(),
                table_bytes: bytes,
                held_s: 0.0,
            });
            if strength(&mode) > strength(&e.mode) {
                e.mode = mode;
            }
            e.held_s += 0.2;
        }
    }
    let mut out: Vec<LockSeen> = seen.into_values().collect();
    out.sort_by(|a, b| b.table_bytes.cmp(&a.table_bytes).then(a.table.cmp(&b.table)));
    out.truncate(10);
    out
}
