//! Restore drills on the daemon: started by a database's `drill` schedule or a socket
//! request, one at a time per database, on the daemon's tracker (the drain cancels it and its
//! scratch server goes with it). The outcome goes to the board (`status`, `/metrics`) and, when
//! the drill fails, to the webhooks as `drill_failed`.

use std::sync::Arc;

use super::Shared;
use crate::pg::PgTools;
use crate::restore::{DrillReport, Restorer};

/// Runs a drill of `database` unless one is running; returns its report (None: one was running).
pub async fn run(shared: Arc<Shared>, database: String) -> Option<DrillReport> {
    let mut already = false;
    shared.board.update(&database, |s| {
        already = s.drill_running;
        s.drill_running = true;
    });
    if already {
        tracing::info!(database = %database, "a restore drill is already running: this one is skipped");
        return None;
    }
    let rt = shared.current();
    let restorer = Restorer {
        storage: rt.snapshotter.storage.clone(),
        tools: PgTools::new(rt.config.snapshot.pg_bin_dir.clone()),
        config: rt.config.clone(),
    };
    let cancel = shared.draining.clone();
    let name = database.clone();
    let task = shared.tasks.spawn(async move { restorer.drill(&name, &cancel).await });
    let report = match task.await {
        Ok(r) => r,
        Err(e) => {
            shared.board.update(&database, |s| s.drill_running = false);
            tracing::error!(database = %database, error = %e, "the restore drill task failed");
            return None;
        }
    };
    record(&shared, &report);
    Some(report)
}

fn record(shared: &Shared, report: &DrillReport) {
    shared.board.update(&report.database, |s| {
        s.drill_running = false;
        if report.ok {
            s.last_drill_success_at = Some(
                report.started_at + chrono::Duration::milliseconds((report.duration_seconds * 1000.0) as i64),
            );
            s.last_drill_success_seconds = Some(report.duration_seconds);
        }
        s.last_drill = Some(report.clone());
    });
    if report.ok {
        tracing::info!(database = %report.database, snapshot = ?report.snapshot_id, tables = report.tables, seconds = report.duration_seconds, "restore drill passed");
    } else {
        let why = report.error.clone().unwrap_or_default();
        tracing::error!(database = %report.database, snapshot = ?report.snapshot_id, error = %why, "restore drill FAILED");
        let detail = serde_json::json!({
            "snapshot_id": report.snapshot_id,
            "error": why,
            "mismatches": report.mismatches,
            "scratch_server": report.scratch_server,
        });
        shared.notifier().send("drill_failed", &report.database, detail);
    }
}
