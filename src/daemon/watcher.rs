//! One watcher per database with a `[databases.migrations]` section: one cheap read every
//! `watch_interval`, on a connection opened for that read (and at most a few at once across
//! the daemon), each new failure reacted to once (`on_failure`: notify, snapshot or repair). A
//! missing table, a standby, an unreachable server or a table it cannot read is a state shown
//! in `status`; the watcher backs off and tries again. A watcher that panics is restarted, with
//! backoff, by its supervisor, and the panic is shown in `status` too.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::board::MigrationsStatus;
use super::worker::Job;
use super::Shared;
use crate::config::{DatabaseConfig, MigrationsConfig, OnFailure};
use crate::pg::{self, DbError};
use crate::repair::RunRequest;
use crate::watch::{self, Migration, TableState};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Runs `db`'s watcher until `cancel`, restarting it after a panic.
pub async fn supervise(shared: Arc<Shared>, db: String, cancel: CancellationToken) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_secs(1);
    loop {
        let run = AssertUnwindSafe(watch(&shared, &db, &cancel, &mut seen)).catch_unwind().await;
        let Err(panic) = run else { return };
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        tracing::error!(database = %db, error = %what, retry_in = ?backoff, "the migrations watcher failed; restarting it");
        set_state(&shared, &db, "error", Some(format!("the watcher failed ({what}); restarting it")));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn set_state(shared: &Shared, db: &str, state: &str, error: Option<String>) {
    let status =
        MigrationsStatus { state: state.into(), failed: Vec::new(), checked_at: chrono::Utc::now(), error };
    shared.board.update(db, |s| s.migrations = Some(status));
}

async fn watch(shared: &Arc<Shared>, db: &str, cancel: &CancellationToken, seen: &mut HashSet<String>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let rt = shared.current();
        let Some(cfg) = rt.config.database(db).cloned() else { return };
        let Some(mig) = cfg.migrations.clone() else { return };
        drop(rt);
        // A connect to a host that stopped answering can take minutes: shutdown does not wait.
        let ticked = tokio::select! {
            r = tick(shared, &cfg, &mig, seen) => r,
            _ = cancel.cancelled() => return,
        };
        let wait = match ticked {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                mig.watch_interval
            }
            Err(e) => {
                tracing::warn!(database = %db, error = %e, retry_in = ?backoff, "cannot read the migrations table");
                set_state(shared, db, "unreachable", Some(e.to_string()));
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF).max(mig.watch_interval);
                w
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn tick(
    shared: &Arc<Shared>,
    cfg: &DatabaseConfig,
    mig: &MigrationsConfig,
    seen: &mut HashSet<String>,
) -> Result<(), DbError> {
    let state = {
        let _slot = shared.watch_slots.acquire().await.expect("the semaphore is never closed");
        let session = pg::connect(&cfg.url).await?;
        watch::read(&session, watch::dialect(mig).as_ref()).await?
    };
    let failing: Vec<Migration> = state.needing_repair().into_iter().cloned().collect();
    let label = match &state {
        TableState::Missing => "missing",
        TableState::Standby => "standby",
        TableState::Rows { .. } if failing.is_empty() => "ok",
        TableState::Rows { .. } => "failed",
    };
    let status = MigrationsStatus {
        state: label.into(),
        failed: failing.iter().map(|m| m.name.clone()).collect(),
        checked_at: chrono::Utc::now(),
        error: None,
    };
    shared.board.update(&cfg.name, |s| s.migrations = Some(status));
    // A failure is reacted to once; one that clears and comes back is new again.
    seen.retain(|id| failing.iter().any(|m| &m.id == id));
    for m in failing {
        if seen.insert(m.id.clone()) {
            react(shared, cfg, mig.on_failure, &m);
        }
    }
    Ok(())
}

fn react(shared: &Arc<Shared>, cfg: &DatabaseConfig, on_failure: OnFailure, m: &Migration) {
    let log: String =
        m.logs.as_deref().unwrap_or("(no log: the deploying process died)").chars().take(2000).collect();
    tracing::warn!(database = %cfg.name, migration = %m.name, status = ?m.status, "failed migration found");
    shared.notifier().send(
        "migration_failed",
        &cfg.name,
        json!({ "migration": m.name, "status": m.status, "log": log }),
    );
    match on_failure {
        OnFailure::Notify => {}
        OnFailure::Snapshot => {
            let job = Job { reason: "migration-failed".into(), trigger: "watch".into(), scheduled: false };
            let _ = shared.request(&cfg.name, job, None);
        }
        OnFailure::Repair => {
            let (shared, db, tasks) = (shared.clone(), cfg.name.clone(), shared.tasks.clone());
            tasks.spawn(async move {
                let req = RunRequest {
                    database: db.clone(),
                    playbook: None,
                    dry_run: false,
                    trigger: "watch".into(),
                    requested_by: "watcher".into(),
                };
                match shared.repair(req).await {
                    Ok(rec) if rec.outcome == "no_playbook" => {
                        let detail = json!({ "migration": rec.migration, "error": rec.error });
                        shared.notifier().send("failed_migration_no_playbook", &db, detail);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(database = %db, error = %e, "repair could not run"),
                }
            });
        }
    }
}
