//! Locks and rewrites at real size: while the deploy runs on the copy, a second session samples
//! every 200 ms the table locks it holds and each table's relfilenode (a new one: the table was
//! rewritten, or truncated). Afterwards each sample is given to the migration that was running
//! then, by the migrations table's own times, so the report says per migration which tables it
//! locked, how, for about how long, and which it rewrote. Tracers do this on empty databases;
//! here the copy holds the real rows, so the times are the ones production would see.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::DbUrl;
use crate::pg;
use crate::watch::{Migration, Status};

const TICK: Duration = Duration::from_millis(200);
/// Per migration, the largest tables' entries are kept.
const KEEP: usize = 10;

const USER_TABLES: &str = "c.relkind IN ('r', 'p', 'm') \
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'";

fn locks_query() -> String {
    format!(
        "SELECT n.nspname || '.' || c.relname, l.mode, pg_total_relation_size(c.oid) \
         FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.granted \
           AND l.pid <> pg_backend_pid() AND {USER_TABLES}"
    )
}

fn files_query() -> String {
    format!(
        "SELECT n.nspname || '.' || c.relname, c.relfilenode::bigint, pg_total_relation_size(c.oid) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_TABLES} AND c.relfilenode <> 0"
    )
}

/// What the sampler saw: each lock at each tick, and each table whose file changed.
#[derive(Debug, Default)]
pub struct Samples {
    locks: Vec<(DateTime<Utc>, String, String, i64)>,
    rewrites: Vec<(DateTime<Utc>, String, i64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockSeen {
    /// The migration running when it was seen (None: the deploy's own work outside any).
    pub migration: Option<String>,
    pub table: String,
    pub mode: String,
    pub table_bytes: i64,
    /// How long the lock was seen held (sampled every 200 ms; 0 when only its rewrite was seen).
    pub held_s: f64,
    /// The table got a new file (rewritten or truncated) during that migration.
    pub rewritten: bool,
}

/// Reads the tables' files now (before the deploy starts), then samples until `stop`.
pub async fn start(url: DbUrl, stop: CancellationToken) -> JoinHandle<Samples> {
    let session = pg::connect(&url).await.ok();
    let files = match &session {
        Some(s) => read_files(s).await,
        None => HashMap::new(),
    };
    tokio::spawn(async move {
        let Some(session) = session else { return Samples::default() };
        sample(session, files, stop).await
    })
}

async fn read_files(s: &pg::Session) -> HashMap<String, (i64, i64)> {
    let Ok(rows) = s.client().query(&files_query(), &[]).await else { return HashMap::new() };
    rows.iter().map(|r| (r.get::<_, String>(0), (r.get::<_, i64>(1), r.get::<_, i64>(2)))).collect()
}

/// Best effort: a failed query is a missed tick, not a failed rehearsal.
async fn sample(
    session: pg::Session,
    mut files: HashMap<String, (i64, i64)>,
    stop: CancellationToken,
) -> Samples {
    let mut out = Samples::default();
    let (locks_q, mut tick) = (locks_query(), tokio::time::interval(TICK));
    loop {
        let last = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let now = Utc::now();
        if !last {
            if let Ok(rows) = session.client().query(&locks_q, &[]).await {
                out.locks.extend(rows.iter().map(|r| (now, r.get(0), r.get(1), r.get(2))));
            }
        }
        for (table, (node, bytes)) in read_files(&session).await {
            if files.get(&table).is_some_and(|(old, _)| *old != node) {
                out.rewrites.push((now, table.clone(), bytes));
            }
            files.insert(table, (node, bytes));
        }
        if last {
            return out;
        }
    }
}

/// Each applied or failed migration's span: from its start (or the previous one's end, for
/// tools that record only an end) to its end (or the deploy's, when it never finished).
fn spans(
    after: &[Migration],
    before: &[Migration],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let mut ran: Vec<&Migration> = after
        .iter()
        .filter(|m| {
            !before.iter().any(|b| b.id == m.id && b.status == m.status && b.finished_at == m.finished_at)
        })
        .filter(|m| m.status == Status::Applied || m.status.needs_repair())
        .collect();
    ran.sort_by_key(|m| m.finished_at.or(m.started_at).unwrap_or(to));
    let mut out = Vec::new();
    let mut prev = from;
    for m in ran {
        let end = m.finished_at.unwrap_or(to);
        let start = m.started_at.unwrap_or(prev).min(end);
        out.push((m.name.clone(), start, end));
        prev = end;
    }
    out
}

/// The migration whose span holds `at`, else the last one that ended before it (a commit seen
/// at the next tick).
fn owner(spans: &[(String, DateTime<Utc>, DateTime<Utc>)], at: DateTime<Utc>) -> Option<String> {
    let slack = chrono::Duration::from_std(TICK * 2).unwrap_or_default();
    spans
        .iter()
        .find(|(_, s, e)| *s <= at && at <= *e)
        .or_else(|| spans.iter().rev().find(|(_, _, e)| *e <= at && at - *e <= slack))
        .map(|(n, _, _)| n.clone())
}

/// The migration whose commit a new file seen at `at` was: one that ended in the tick before
/// (a transaction's rewrite shows only once it commits, and the next migration may have
/// started by then), else the one running (a tool that commits statement by statement).
fn committer(spans: &[(String, DateTime<Utc>, DateTime<Utc>)], at: DateTime<Utc>) -> Option<String> {
    let slack = chrono::Duration::from_std(TICK * 2).unwrap_or_default();
    spans
        .iter()
        .rev()
        .find(|(_, _, e)| *e <= at && at - *e <= slack)
        .or_else(|| spans.iter().find(|(_, s, e)| *s <= at && at <= *e))
        .map(|(n, _, _)| n.clone())
}

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

/// Per migration, each table's strongest lock, how long it was seen, and whether it was
/// rewritten; the largest tables first.
pub fn attribute(
    samples: &Samples,
    after: &[Migration],
    before: &[Migration],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<LockSeen> {
    let spans = spans(after, before, from, to);
    let mut seen: BTreeMap<(Option<String>, String), LockSeen> = BTreeMap::new();
    for (at, table, mode, bytes) in &samples.locks {
        let migration = owner(&spans, *at);
        let e = seen.entry((migration.clone(), table.clone())).or_insert_with(|| LockSeen {
            migration,
            table: table.clone(),
            mode: mode.clone(),
            table_bytes: *bytes,
            held_s: 0.0,
            rewritten: false,
        });
        if strength(mode) > strength(&e.mode) {
            e.mode = mode.clone();
        }
        e.table_bytes = e.table_bytes.max(*bytes);
        e.held_s += TICK.as_secs_f64();
    }
    for (at, table, bytes) in &samples.rewrites {
        let migration = committer(&spans, *at);
        let e = seen.entry((migration.clone(), table.clone())).or_insert_with(|| LockSeen {
            migration,
            table: table.clone(),
            // A rewrite takes ACCESS EXCLUSIVE, however briefly the sampler missed it.
            mode: "AccessExclusiveLock".into(),
            table_bytes: *bytes,
            held_s: 0.0,
            rewritten: true,
        });
        e.rewritten = true;
    }
    let mut by_migration: BTreeMap<Option<String>, Vec<LockSeen>> = BTreeMap::new();
    for l in seen.into_values() {
        by_migration.entry(l.migration.clone()).or_default().push(l);
    }
    let order: Vec<Option<String>> = spans.iter().map(|(n, _, _)| Some(n.clone())).chain([None]).collect();
    let mut out = Vec::new();
    for key in order {
        if let Some(mut list) = by_migration.remove(&key) {
            list.sort_by(|a, b| b.table_bytes.cmp(&a.table_bytes).then(a.table.cmp(&b.table)));
            list.truncate(KEEP);
            out.extend(list);
        }
    }
    out
}
