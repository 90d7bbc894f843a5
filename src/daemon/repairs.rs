//! Repairs inside the daemon: the pre-repair snapshot goes through the database's worker (so it
//! never overlaps another snapshot), webhooks announce the run, and the board remembers it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::oneshot;

use super::worker::Job;
use super::{Runtime, Shared};
use crate::audit::RunRecord;
use crate::config::DatabaseConfig;
use crate::repair::{PreRepairSnapshot, Repairer, RunRequest};
use crate::snapshot::{Manifest, Scope, PRE_REPAIR};

struct ViaWorker {
    shared: Weak<Shared>,
    /// The run's configuration: its snapshot is of the server the run repairs.
    runtime: Arc<Runtime>,
}

#[async_trait]
impl PreRepairSnapshot for ViaWorker {
    async fn take(
        &self,
        db: &DatabaseConfig,
        trigger: &str,
        scope: &Scope,
        reason: &str,
    ) -> Result<Manifest, String> {
        let shared = self.shared.upgrade().ok_or("the daemon is shutting down")?;
        let (tx, rx) = oneshot::channel();
        let mut job = Job::new(PRE_REPAIR, trigger, false);
        job.pinned = Some(self.runtime.clone());
        (job.scope, job.scope_reason) = (scope.clone(), Some(reason.to_string()));
        shared.request(&db.name, job, Some(tx)).map_err(|e| e.to_string())?;
        drop(shared);
        rx.await.map_err(|_| "the snapshot worker stopped before finishing".to_string())?
    }
}

impl Shared {
    pub async fn repair(self: &Arc<Self>, req: RunRequest) -> Result<RunRecord, String> {
        // Counted before the check, so the drain either sees this run or this run sees closing.
        self.repairs_running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(self);
        if self.closing.load(Ordering::SeqCst) && !req.dry_run {
            return Err("the daemon is shutting down; the repair was not started".into());
        }
        let rt = self.current();
        let repairer = Repairer {
            config: rt.config.clone(),
            storage: rt.snapshotter.storage.clone(),
            snapshots: Arc::new(ViaWorker { shared: Arc::downgrade(self), runtime: rt.clone() }),
        };
        let notifier = self.notifier();
        if !req.dry_run {
            notifier.send(
                "repair_started",
                &req.database,
                json!({ "trigger": req.trigger, "requested_by": req.requested_by }),
            );
        }
        let rec = repairer.run(&req).await.map_err(|e| e.to_string())?;
        let detail = json!({
            "run_id": rec.run_id, "migration": rec.migration, "playbook": rec.playbook,
            "snapshot_id": rec.snapshot_id, "outcome": rec.outcome, "error": rec.error,
            "snapshot_scope": rec.snapshot_scope, "snapshot_scope_reason": rec.snapshot_scope_reason,
        });
        match rec.outcome.as_str() {
            "succeeded" => notifier.send("repair_done", &rec.database, detail),
            "noop" | "dry_run" | "no_playbook" => {}
            _ => notifier.send("repair_failed", &rec.database, detail),
        }
        let summary = json!({ "run_id": rec.run_id, "outcome": rec.outcome, "at": rec.finished_at, "error": rec.error });
        self.board.update(&rec.database, |s| {
            s.last_repair = Some(summary);
            if !rec.dry_run {
                *s.repairs_total.entry(rec.outcome.clone()).or_default() += 1;
            }
        });
        Ok(rec)
    }
}

/// Keeps `repairs_running` right whichever way a run ends.
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.repairs_running.fetch_sub(1, Ordering::SeqCst);
    }
}
