//! One watcher per database: one cheap read every `watch_interval` (30 s without a
//! `[databases.migrations]` section), on a connection opened for that read (and at most a few at
//! once across the daemon), of the migrations table where there is one and of the database's
//! invalid indexes in every case; each new failure reacted to once (`on_failure`: notify,
//! snapshot or repair) and diagnosed once for the status page (`diagnoses`), each new invalid
//! index announced once. A
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
/// How often a database without a migrations section is read (for its invalid indexes).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// What the watcher has reacted to already: failed migrations by id, invalid indexes by name.
#[derive(Default)]
struct Seen {
    failures: HashSet<String>,
    indexes: HashSet<String>,
}

/// Runs `db`'s watcher until `cancel`, restarting it after a panic.
pub async fn supervise(shared: Arc<Shared>, db: String, cancel: CancellationToken) {
    let mut seen = Seen::default();
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

async fn watch(shared: &Arc<Shared>, db: &str, cancel: &CancellationToken, seen: &mut Seen) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let rt = shared.current();
        let Some(cfg) = rt.config.database(db).cloned() else { return };
        let mig = cfg.migrations.clone();
        drop(rt);
        let interval = mig.as_ref().map_or(DEFAULT_INTERVAL, |m| m.watch_interval);
        // A connect to a host that stopped answering can take minutes: shutdown does not wait.
        let ticked = tokio::select! {
            r = tick(shared, &cfg, mig.as_ref(), seen) => r,
            _ = cancel.cancelled() => return,
        };
        let wait = match ticked {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                interval
            }
            Err(e) => {
                tracing::warn!(database = %db, error = %e, retry_in = ?backoff, "cannot read the database's migrations and indexes");
                if mig.is_some() {
                    set_state(shared, db, "unreachable", Some(e.to_string()));
                }
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF).max(interval);
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
    mig: Option<&MigrationsConfig>,
    seen: &mut Seen,
) -> Result<(), DbError> {
    let (state, invalid) = {
        let _slot = shared.watch_slots.acquire().await.expect("the semaphore is never closed");
        let session = pg::connect(&cfg.url).await?;
        let state = match mig {
            Some(m) => {
                let storage = Arc::clone(&shared.current().snapshotter.storage);
                let dialect = watch::dialect(m);
                Some(crate::diagnose::read_state(&session, dialect.as_ref(), &storage, &cfg.name).await?)
            }
            None => None,
        };
        (state, watch::indexes::invalid(&session).await?)
    };
    indexes(shared, &cfg.name, invalid, &mut seen.indexes);
    let (Some(state), Some(mig)) = (state, mig) else { return Ok(()) };
    let failing: Vec<Migration> = state.needing_repair().into_iter().cloned().collect();
    let label = match &state {
        TableState::Missing => "missing",
        TableState::Standby => "standby",
        TableState::Unrecognised { .. } => "unrecognised",
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
    seen.failures.retain(|id| failing.iter().any(|m| &m.id == id));
    super::diagnoses::keep_only(shared, &cfg.name, &failing);
    let grace = shared.current().config.repair.crash_grace;
    for m in failing {
        // A crash younger than the grace may be a deploy without its lock: looked at again later.
        if m.status == watch::Status::Crashed && m.started_at.is_some_and(|t| young(t, grace)) {
            continue;
        }
        if seen.failures.insert(m.id.clone()) {
            // For the status page: once per failure, held until it clears.
            super::diagnoses::start(shared, cfg, mig, &m);
            react(shared, cfg, mig.on_failure, &m);
        }
    }
    Ok(())
}

fn young(started: chrono::DateTime<chrono::Utc>, grace: std::time::Duration) -> bool {
    (chrono::Utc::now() - started).to_std().map_or(true, |age| age < grace)
}

/// The board's invalid indexes, and one `invalid_index` webhook for each new one.
fn indexes(
    shared: &Shared,
    db: &str,
    invalid: Vec<watch::indexes::InvalidIndex>,
    seen: &mut HashSet<String>,
) {
    let key = |i: &watch::indexes::InvalidIndex| format!("{}.{}", i.schema, i.index);
    seen.retain(|k| invalid.iter().any(|i| &key(i) == k));
    for i in &invalid {
        if seen.insert(key(i)) {
            tracing::warn!(database = %db, index = %key(i), definition = %i.definition, "invalid index found");
            shared.notifier().send("invalid_index", db, json!(i));
        }
    }
    shared.board.update(db, |s| s.invalid_indexes = Some(invalid));
}

fn react(shared: &Arc<Shared>, cfg: &DatabaseConfig, on_failure: OnFailure, m: &Migration) {
    // Redacted before it leaves: a tool's log quotes the server's DETAIL (row values) and the
    // failed statement (a PASSWORD literal).
    let raw = m.logs.as_deref().unwrap_or("(no log: the deploying process died)");
    let log: String = crate::redact::redact(raw).chars().take(2000).collect();
    tracing::warn!(database = %cfg.name, migration = %m.name, status = ?m.status, "failed migration found");
    shared.notifier().send(
        "migration_failed",
        &cfg.name,
        json!({ "migration": m.name, "status": m.status, "log": log }),
    );
    match on_failure {
        OnFailure::Notify => {}
        OnFailure::Snapshot => {
            let job = Job::new("migration-failed", "watch", false);
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
