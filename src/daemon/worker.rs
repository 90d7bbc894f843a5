//! One worker per database runs every snapshot of it, so two never overlap. Its queue has one
//! slot: a trigger that finds a job waiting or running joins it (and is counted as coalesced)
//! instead of queuing another dump of the same data. Before dumping, a job waits for a slot
//! of the daemon-wide gate (`snapshot.max_concurrent`; pre-repair jobs first).

use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::board::{LastSnapshot, RunningJob};
use super::Shared;
use crate::snapshot::{self, Manifest, Request, PRE_REPAIR};

/// What a waiter learns: the manifest, or the error's text.
pub type Outcome = Result<Manifest, String>;

#[derive(Clone)]
pub struct Job {
    pub reason: String,
    pub trigger: String,
    /// Scheduled snapshots are followed by the retention policy.
    pub scheduled: bool,
    /// The configuration this job must use: a repair's own, captured when the run started, so
    /// a reload mid-repair never points its pre-repair snapshot at another server. `None`: the
    /// configuration current when the job starts.
    pub pinned: Option<Arc<super::Runtime>>,
    /// A scheduled run's due time: one snapshot per slot across every installation sharing
    /// the storage.
    pub slot: Option<chrono::DateTime<Utc>>,
    /// A pre-repair snapshot's scope (full otherwise), and why.
    pub scope: crate::snapshot::Scope,
    pub scope_reason: Option<String>,
}

impl Job {
    pub fn new(reason: impl Into<String>, trigger: impl Into<String>, scheduled: bool) -> Job {
        Job {
            reason: reason.into(),
            trigger: trigger.into(),
            scheduled,
            pinned: None,
            slot: None,
            scope: crate::snapshot::Scope::Full,
            scope_reason: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enqueued {
    Queued,
    Coalesced,
}

#[derive(Default)]
struct Slot {
    pending: Option<(Job, Vec<oneshot::Sender<Outcome>>)>,
    /// Waiters of the job running now; `None` when idle.
    running: Option<Vec<oneshot::Sender<Outcome>>>,
    closed: bool,
}

pub struct Worker {
    slot: Arc<Mutex<Slot>>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Worker {
    pub fn spawn(db: String, shared: Arc<Shared>, abort: CancellationToken) -> Worker {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let wake = Arc::new(Notify::new());
        let tasks = shared.tasks.clone();
        let task = tasks.spawn(run(db, slot.clone(), wake.clone(), shared, abort));
        Worker { slot, wake, task }
    }

    /// Queues `job`, or joins the one waiting or running. A pre-repair job never joins a running
    /// one (its snapshot must be marked pre-repair for retention) but upgrades a waiting one.
    /// `None` once the worker is closed.
    pub fn enqueue(&self, job: Job, waiter: Option<oneshot::Sender<Outcome>>) -> Option<Enqueued> {
        let mut guard = lock(&self.slot);
        let slot = &mut *guard;
        if slot.closed {
            return None;
        }
        let pre_repair = job.reason == PRE_REPAIR;
        match (&mut slot.pending, &mut slot.running) {
            (Some((pending, waiters)), _) => {
                if pre_repair {
                    // The waiting job was to dump everything: the repair gets a full snapshot.
                    let (scheduled, slot) = (pending.scheduled, pending.slot);
                    let widen = !job.scope.is_full() && pending.reason != PRE_REPAIR;
                    *pending = Job { scheduled, slot, ..job };
                    if widen {
                        pending.scope = crate::snapshot::Scope::Full;
                        pending.scope_reason = Some(
                            "full: it joined a snapshot of the whole database already waiting to run".into(),
                        );
                    }
                }
                waiters.extend(waiter);
                Some(Enqueued::Coalesced)
            }
            (None, Some(waiters)) if !pre_repair => {
                waiters.extend(waiter);
                Some(Enqueued::Coalesced)
            }
            _ => {
                slot.pending = Some((job, waiter.into_iter().collect()));
                drop(guard);
                self.wake.notify_one();
                Some(Enqueued::Queued)
            }
        }
    }

    /// Takes no more work; a waiting job is dropped (its waiters are told), a running one goes on.
    pub fn close(&self) {
        let mut slot = lock(&self.slot);
        slot.closed = true;
        if let Some((_, waiters)) = slot.pending.take() {
            for w in waiters {
                let _ = w.send(Err("the daemon is shutting down; the snapshot was not started".into()));
            }
        }
        drop(slot);
        self.wake.notify_one();
    }

    pub fn is_queued(&self) -> bool {
        lock(&self.slot).pending.is_some()
    }

    pub async fn join(self) {
        let _ = self.task.await;
    }
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run(
    db: String,
    slot: Arc<Mutex<Slot>>,
    wake: Arc<Notify>,
    shared: Arc<Shared>,
    abort: CancellationToken,
) {
    loop {
        let next = {
            let mut s = lock(&slot);
            match s.pending.take() {
                Some((job, waiters)) => {
                    s.running = Some(waiters);
                    // Under the slot's lock, so an enqueue racing with us cannot be undone.
                    shared.board.update(&db, |b| b.queued = 0);
                    Some(job)
                }
                None if s.closed => return,
                None => None,
            }
        };
        let Some(job) = next else {
            wake.notified().await;
            continue;
        };
        let outcome = run_job(&db, &job, &shared, &abort).await;
        let waiters = lock(&slot).running.take().unwrap_or_default();
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    }
}

/// A slot under `snapshot.max_concurrent`; `None` when the daemon stops first.
async fn wait_for_slot(
    db: &str,
    job: &Job,
    shared: &Shared,
    abort: &CancellationToken,
) -> Option<super::gate::Permit> {
    shared.board.update(db, |s| s.waiting_for_slot = true);
    let permit = tokio::select! {
        p = shared.gate.acquire(job.reason == PRE_REPAIR) => Some(p),
        // A job not yet started is dropped at shutdown rather than started late.
        _ = shared.draining.cancelled() => None,
        _ = abort.cancelled() => None,
    };
    shared.board.update(db, |s| s.waiting_for_slot = false);
    permit
}

async fn run_job(db: &str, job: &Job, shared: &Shared, abort: &CancellationToken) -> Outcome {
    let Some(_permit) = wait_for_slot(db, job, shared, abort).await else {
        return Err("the daemon is shutting down; the snapshot was not started".into());
    };
    let started = Utc::now();
    shared.board.update(db, |s| {
        s.running =
            Some(RunningJob { since: started, reason: job.reason.clone(), trigger: job.trigger.clone() })
    });
    let rt = job.pinned.clone().unwrap_or_else(|| shared.current());
    let req = Request {
        reason: job.reason.clone(),
        trigger: job.trigger.clone(),
        // A repair's snapshot is always taken: one that joined a waiting scheduled run is not
        // skipped for a standby or for a slot another installation took.
        scheduled: job.scheduled && job.reason != PRE_REPAIR,
        slot: job.slot.filter(|_| job.reason != PRE_REPAIR),
        scope: job.scope.clone(),
        scope_reason: job.scope_reason.clone(),
    };
    let mut busy = false;
    let mut covered_at = None;
    let outcome = match rt.config.database(db) {
        Some(cfg) => rt.snapshotter.take(cfg, &req, abort).await.map_err(|e| {
            // Another snapshot of it holds the lock (an HA pair's other daemon), or another
            // installation covers this run: skipped, not failed.
            busy = e.is_skip();
            if let crate::snapshot::SnapshotError::Skipped { newest_at, .. } = &e {
                covered_at = *newest_at;
            }
            e.to_string()
        }),
        None => Err(format!("database `{db}` is no longer in the configuration")),
    };
    let finished = Utc::now();
    shared.board.update(db, |s| {
        s.running = None;
        s.last_snapshot = Some(LastSnapshot {
            id: outcome.as_ref().ok().map(|m| m.id.clone()),
            reason: job.reason.clone(),
            trigger: job.trigger.clone(),
            started_at: started,
            finished_at: finished,
            duration_seconds: (finished - started).num_milliseconds() as f64 / 1000.0,
            stored_bytes: outcome.as_ref().ok().map(|m| m.stored_bytes),
            outcome: match (&outcome, busy) {
                (Ok(_), _) => "success",
                (Err(_), true) => "skipped",
                (Err(_), false) => "failure",
            },
            tools: outcome
                .as_ref()
                .ok()
                .map(|m| format!("{} in {}", m.pg_dump_version, m.pg_bin_dir.as_deref().unwrap_or("PATH"))),
        });
        // A job that stored nothing is kept for the status page's timeline.
        let attempt = |outcome: &str, e: &str| crate::web::Attempt {
            at: finished,
            outcome: outcome.into(),
            error: Some(crate::redact::redact(e)),
            duration_seconds: (finished - started).num_milliseconds() as f64 / 1000.0,
        };
        match &outcome {
            Ok(_) => {
                s.snapshots_success_total += 1;
                s.last_success_at = Some(finished);
                s.last_error = None;
            }
            Err(e) if busy => {
                s.snapshots_skipped_total += 1;
                s.last_skipped = Some(e.clone());
                // The database has a snapshot if storage, the shared truth, holds one: the
                // installation that skips is not stale for it.
                s.last_success_at = s.last_success_at.max(covered_at);
                s.remember_attempt(attempt("skipped", e));
            }
            Err(e) => {
                s.snapshots_failure_total += 1;
                s.last_error = Some(e.clone());
                s.remember_attempt(attempt("failure", e));
            }
        }
    });
    match &outcome {
        Ok(m) if job.scheduled => prune_after(db, m, shared).await,
        Ok(_) => {}
        Err(e) if busy => {
            tracing::info!(database = %db, reason = %e, "snapshot skipped")
        }
        Err(e) => {
            tracing::error!(database = %db, error = %e, "snapshot failed");
            shared.notifier().send(
                "snapshot_failed",
                db,
                serde_json::json!({ "error": e, "trigger": job.trigger }),
            );
        }
    }
    outcome
}

async fn prune_after(db: &str, m: &Manifest, shared: &Shared) {
    let rt = shared.current();
    let policy = rt.config.snapshot.retention;
    match snapshot::prune(&rt.snapshotter.storage, &policy, &[db], false).await {
        Ok(r) => {
            let gone = r.decisions.iter().filter(|d| !d.keep).count();
            if gone > 0 {
                tracing::info!(database = %db, after = %m.id, pruned = gone, "retention applied");
            }
        }
        Err(e) => tracing::warn!(database = %db, error = %e, "retention after the scheduled snapshot failed"),
    }
}
