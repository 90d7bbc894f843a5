//! The daemon's two ends of a repair's life across restarts. At start: runs that an earlier
//! process left unfinished (killed by `kill -9` or the OOM killer) are closed as `interrupted`
//! in the audit trail, copied to storage, shown in `status` and announced by webhook. At stop:
//! the drain takes no new work, lets running repairs finish (each bounded by its steps'
//! timeouts, and systemd is told how long that may take), gives a snapshot in flight
//! `daemon.shutdown_timeout` before aborting it, and lets pending webhooks go out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::scheduler::Scheduler;
use super::systemd::{self, NotifyState};
use super::worker::Worker;
use super::Shared;
use crate::audit::{self, AuditLog};
use crate::config::{Config, Step};
use crate::process::TERM_GRACE;

/// How long aborting a snapshot (after the shutdown timeout) may take before the daemon exits anyway.
const ABORT_GRACE: Duration = Duration::from_secs(30);
/// How long pending webhooks may take at shutdown.
const WEBHOOK_GRACE: Duration = Duration::from_secs(15);

pub async fn report_interrupted_runs(shared: &Arc<Shared>) {
    let rt = shared.current();
    let closed = match AuditLog::new(&rt.config.daemon.state_dir).close_interrupted() {
        Ok(c) => c,
        Err(e) => return tracing::error!(error = %e, "cannot look for repair runs interrupted by a crash"),
    };
    for rec in closed {
        tracing::error!(run_id = %rec.run_id, database = %rec.database, pid = rec.pid, "a repair run was interrupted: its process died before it finished");
        audit::store_copy(&rt.snapshotter.storage, &rec).await;
        let detail = json!({
            "run_id": rec.run_id, "migration": rec.migration, "playbook": rec.playbook,
            "snapshot_id": rec.snapshot_id, "outcome": rec.outcome, "error": rec.error,
        });
        shared.notifier().send("repair_interrupted", &rec.database, detail);
        let summary = json!({ "run_id": rec.run_id, "outcome": rec.outcome, "at": rec.finished_at, "error": rec.error });
        shared.board.update(&rec.database, |s| {
            s.last_repair = Some(summary);
            *s.repairs_total.entry(rec.outcome.clone()).or_default() += 1;
        });
    }
}

/// Stops taking work and waits for what is in flight (see the module's note).
pub async fn drain(shared: Arc<Shared>, scheduler: Scheduler) {
    systemd::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    shared.closing.store(true, Ordering::SeqCst);
    shared.draining.cancel();
    scheduler.stop().await;
    let cfg = shared.current().config.clone();
    let repairs = shared.repairs_running.load(Ordering::SeqCst);
    if repairs > 0 {
        let bound = repair_bound(&cfg);
        tracing::warn!(repairs, bound = ?bound, "waiting for running repairs to finish before stopping");
        // systemd would otherwise kill the daemon after TimeoutStopSec, half way through a repair.
        // As text: the crate's typed ExtendTimeoutUsec is a u32, which caps at 71 minutes.
        let extend = format!("EXTEND_TIMEOUT_USEC={}", bound.as_micros());
        systemd::notify(&[NotifyState::Custom(&extend)]);
    }
    let workers = shared.take_workers();
    for w in &workers {
        w.close();
    }
    let timeout = cfg.daemon.shutdown_timeout;
    let mut joined = Box::pin(futures::future::join_all(workers.into_iter().map(Worker::join)));
    if tokio::time::timeout(timeout, &mut joined).await.is_err() {
        tracing::warn!(
            ?timeout,
            "shutdown timeout reached: aborting the snapshot in flight (no manifest is written)"
        );
        shared.abort.cancel();
        if tokio::time::timeout(ABORT_GRACE, &mut joined).await.is_err() {
            tracing::error!("the aborted snapshot did not stop in time; exiting anyway");
        }
    }
    // Repairs (on the socket's connections, the watchers' and SIGUSR1's tasks) and everything
    // else the daemon started; webhooks announcing their end are sent from these tasks too.
    shared.tasks.close();
    if tokio::time::timeout(repair_bound(&cfg) + WEBHOOK_GRACE, shared.tasks.wait()).await.is_err() {
        tracing::error!("tasks still running after the longest a repair may take; exiting anyway");
    }
}

/// The longest any playbook may run: its steps' timeouts, Prisma's lock wait twice (before the
/// run and after a command), and a pre-repair snapshot that is aborted at the shutdown timeout.
pub fn repair_bound(cfg: &Config) -> Duration {
    let statement = cfg.repair.statement_timeout;
    let steps = |steps: &[Step]| -> Duration {
        steps
            .iter()
            .map(|s| match s {
                Step::Command { timeout, .. } => *timeout + TERM_GRACE,
                Step::Sql { timeout, .. } | Step::SqlFile { timeout, .. } | Step::Finish { timeout } => {
                    timeout.unwrap_or(statement)
                }
                // Its check loads the baseline into a scratch database first.
                Step::Undo { timeout, .. } => timeout.unwrap_or(statement) * 2,
                Step::Resolve(_) | Step::AssertSql { .. } | Step::ReleaseLock | Step::AcceptChecksums => {
                    statement
                }
            })
            .sum()
    };
    let longest = cfg.playbooks.iter().map(|p| steps(&p.steps)).max().unwrap_or_default();
    longest + cfg.repair.lock_wait * 2 + cfg.daemon.shutdown_timeout + ABORT_GRACE
}
