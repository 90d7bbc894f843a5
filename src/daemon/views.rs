//! The daemon's state as the web pages' views (`web`): per configured database, the board,
//! the snapshot list the catalog holds (read again when a snapshot finished since, or after
//! `LIST_TTL`) and the audit trail's runs; and the fleet's heartbeats, read per request.
//! Nothing here computes a diagnosis or touches a database.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::board::DbStatus;
use super::Shared;
use crate::audit::RunRecord;
use crate::web::{DbView, MigrationsView, StatusView};

/// The snapshot list is read again after this long even when the daemon took none (another
/// installation's snapshots, a prune).
const LIST_TTL: chrono::Duration = chrono::Duration::seconds(30);
/// How long a page waits for that read before it shows the list it has.
const LIST_WAIT: Duration = Duration::from_secs(5);
/// Repair runs shown per database.
const RUNS_SHOWN: usize = 5;
/// The watcher's period for a database without a migrations section.
const DEFAULT_WATCH: Duration = Duration::from_secs(30);

pub async fn status(shared: &Arc<Shared>) -> StatusView {
    let board = shared.board.get();
    let newest_job = board.values().filter_map(|s| s.last_snapshot.as_ref().map(|l| l.finished_at)).max();
    let stale_at = Utc::now() - LIST_TTL;
    let fresh_after = newest_job.map_or(stale_at, |t| t.max(stale_at));
    if shared.catalog.listing().read_at.is_none_or(|at| at <= fresh_after) {
        // On the tracker: a page that stops waiting leaves the read to finish for the next one.
        let s = shared.clone();
        let storage = shared.current().snapshotter.storage.clone();
        let read = shared.tasks.spawn(async move { s.catalog.refresh_unless(&storage, fresh_after).await });
        let _ = tokio::time::timeout(LIST_WAIT, read).await;
    }
    let rt = shared.current();
    let state_dir = rt.config.daemon.state_dir.clone();
    let s = shared.clone();
    let runs = shared.tasks.spawn_blocking(move || s.catalog.runs(&state_dir)).await.unwrap_or_default();
    let listing = shared.catalog.listing();
    let databases = rt
        .config
        .databases
        .iter()
        .map(|d| {
            let s = board.get(&d.name).cloned().unwrap_or_default();
            let mut v = database(&d.name, s, &runs);
            let now = Utc::now();
            v.schedule = d.schedule.as_ref().map(|x| x.as_str().to_string());
            v.next_run = d.schedule.as_ref().and_then(|x| x.next_after(now));
            v.drill_schedule = d.drill.as_ref().map(|x| x.as_str().to_string());
            v.drill_next = d.drill.as_ref().and_then(|x| x.next_after(now));
            v.snapshots = listing.by_db.get(&d.name).cloned().unwrap_or_else(|| Arc::from(Vec::new()));
            let interval = d.migrations.as_ref().map_or(DEFAULT_WATCH, |m| m.watch_interval);
            if let Some(m) = v.migrations.as_mut() {
                m.interval = interval;
            }
            v
        })
        .collect();
    StatusView {
        instance: rt.config.daemon.instance.clone(),
        host: crate::snapshot::hostname(),
        version: env!("CARGO_PKG_VERSION").into(),
        now: Utc::now(),
        started_at: shared.started_at,
        listed_at: listing.read_at,
        list_error: listing.error.clone(),
        draining: shared.draining.is_cancelled(),
        databases,
    }
}

fn database(name: &str, s: DbStatus, runs: &[RunRecord]) -> DbView {
    let mine: Vec<&RunRecord> = runs.iter().filter(|r| r.database == name).collect();
    let running = match (&s.running, s.waiting_for_slot) {
        (Some(r), _) => {
            Some(format!("a {} snapshot runs since {}", r.reason, r.since.format("%H:%M:%S UTC")))
        }
        (None, true) => Some("a snapshot waits for a slot (snapshot.max_concurrent)".into()),
        (None, false) => None,
    };
    DbView {
        name: name.to_string(),
        running,
        attempts: s.attempts.iter().cloned().collect(),
        migrations: s.migrations.map(|m| MigrationsView {
            state: m.state,
            failed: m.failed,
            checked_at: m.checked_at,
            error: m.error,
            interval: DEFAULT_WATCH,
        }),
        diagnoses: s.diagnoses.into_iter().map(|(_, d)| d).collect(),
        invalid_indexes: s.invalid_indexes,
        repairs: mine.iter().rev().take(RUNS_SHOWN).map(|r| (*r).clone()).collect(),
        repairs_more: mine.len().saturating_sub(RUNS_SHOWN),
        drill: s.last_drill,
        drill_running: s.drill_running,
        ..DbView::default()
    }
}
