//! The daemon's heartbeat: every `daemon.heartbeat_interval` (and once at start) the snapshot
//! list is refreshed and `_pgmedic/hosts/<instance>.json` written with what the board says of
//! each database; after the drain one last heartbeat marked `stopped`. A write that fails is
//! logged and tried again at the next beat: the fleet then sees this host go silent, which is
//! the truth about what it can see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::fleet::{
    self, DbBeat, DrillBeat, FailureBeat, Heartbeat, MigrationsBeat, RepairBeat, SnapshotBeat,
};
use crate::redact::redact;

/// The longest a heartbeat write (or the snapshot list before it) may take before it is given up.
const WRITE_LIMIT: Duration = Duration::from_secs(30);
/// The same for the stopped heartbeat at exit.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// Beats until `shutdown`.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = warn_if_taken(&shared) => {}
    }
    loop {
        let interval = shared.current().config.daemon.heartbeat_interval;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = beat(&shared) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One heartbeat, with the snapshot list read again first.
pub async fn beat(shared: &Shared) {
    let storage = shared.current().snapshotter.storage.clone();
    let refreshed = tokio::time::timeout(WRITE_LIMIT, shared.catalog.refresh_unless(&storage, Utc::now()));
    if refreshed.await.is_err() {
        tracing::warn!(
            "the snapshot list took longer than {WRITE_LIMIT:?} to read; the heartbeat uses the last one"
        );
    }
    write(shared, "running", WRITE_LIMIT).await;
}

/// The last heartbeat, after the drain: what the board holds, written within `STOP_LIMIT` (a
/// storage that does not answer must not hold the exit up).
pub async fn stopped(shared: &Shared) {
    write(shared, "stopped", STOP_LIMIT).await;
}

async fn write(shared: &Shared, state: &str, limit: Duration) {
    let storage = shared.current().snapshotter.storage.clone();
    let doc = heartbeat(shared, state);
    let key = fleet::key(&doc.instance);
    let body = Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default());
    match tokio::time::timeout(limit, storage.put(&key, body)).await {
        Ok(Ok(())) => tracing::debug!(key = %key, state, "heartbeat written"),
        Ok(Err(e)) => tracing::warn!(key = %key, error = %e, "cannot write the heartbeat"),
        Err(_) => tracing::warn!(key = %key, "the heartbeat write took longer than {limit:?}; given up"),
    }
}

/// Two daemons writing one heartbeat would each hide the other from the fleet: says so when
/// the instance's heartbeat is fresh and another live daemon's (another host's, or another
/// pgmedic process on this one).
async fn warn_if_taken(shared: &Shared) {
    let rt = shared.current();
    let instance = &rt.config.daemon.instance;
    let found =
        tokio::time::timeout(STOP_LIMIT, fleet::one(&rt.snapshotter.storage, instance, Utc::now())).await;
    let Ok(found) = found else { return };
    let Some(b) = found.heartbeat.as_ref().filter(|_| found.is_up()) else { return };
    let me = crate::snapshot::hostname();
    let other_here = b.host == me
        && b.pid != std::process::id()
        && std::fs::read(format!("/proc/{}/cmdline", b.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("pgmedic"));
    if b.host != me || other_here {
        tracing::warn!(instance = %instance, host = %b.host, pid = b.pid, "another daemon writes its heartbeat as this instance: set daemon.instance on one of them, or the fleet view shows only one");
    }
}

/// The heartbeat document: the board per configured database, every text redacted.
pub fn heartbeat(shared: &Shared, state: &str) -> Heartbeat {
    let rt = shared.current();
    let board = shared.board.get();
    let listing = shared.catalog.listing();
    let mut databases = BTreeMap::new();
    for db in &rt.config.databases {
        let s = board.get(&db.name).cloned().unwrap_or_default();
        let newest = listing.by_db.get(&db.name).and_then(|l| l.last());
        let beat = DbBeat {
            last_snapshot: newest.map(|p| SnapshotBeat {
                id: p.id.clone(),
                taken_at: p.taken_at,
                finished_at: p.finished_at,
                stored_bytes: p.stored_bytes,
                reason: p.reason.clone(),
            }),
            last_failure: s.attempts.back().map(|a| FailureBeat {
                at: a.at,
                outcome: a.outcome.clone(),
                error: a.error.as_deref().map(redact),
            }),
            next_run: db.schedule.as_ref().and_then(|x| x.next_after(Utc::now())),
            migrations: s.migrations.as_ref().map(|m| MigrationsBeat {
                state: m.state.clone(),
                failed: m.failed.clone(),
                checked_at: m.checked_at,
            }),
            invalid_indexes: s.invalid_indexes.as_ref().map_or(0, Vec::len),
            last_repair: s.last_repair.as_ref().map(repair),
            last_drill: s.last_drill.as_ref().map(|d| DrillBeat {
                ok: d.ok,
                at: d.started_at,
                snapshot_id: d.snapshot_id.clone(),
                error: d.error.as_deref().map(redact),
            }),
        };
        databases.insert(db.name.clone(), beat);
    }
    let now = Utc::now();
    Heartbeat {
        format_version: fleet::FORMAT_VERSION,
        instance: rt.config.daemon.instance.clone(),
        host: crate::snapshot::hostname(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        started_at: shared.started_at,
        written_at: now,
        interval_seconds: rt.config.daemon.heartbeat_interval.as_secs().max(1),
        state: state.into(),
        databases,
    }
}

/// The board's repair summary (`run_id`, `outcome`, `at`, `error`).
fn repair(v: &serde_json::Value) -> RepairBeat {
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    RepairBeat {
        run_id: text("run_id").unwrap_or_default(),
        outcome: text("outcome").unwrap_or_default(),
        at: text("at").and_then(|t| t.parse().ok()),
        error: text("error").as_deref().map(redact),
    }
}
