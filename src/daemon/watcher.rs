//! One watcher per database with a `[databases.migrations]` section: one cheap read every
//! `watch_interval`, each new failure reacted to once (`on_failure`: notify, snapshot or
//! repair). A missing table, a standby or an unreachable server is a state shown in `status`;
//! the watcher backs off and reconnects, it never takes the daemon down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::board::MigrationsStatus;
use super::worker::Job;
use super::Shared;
use crate::config::{DatabaseConfig, MigrationsConfig, OnFailure};
use crate::pg::{self, DbError, Session};
use crate::repair::RunRequest;
use crate::watch::{self, Migration, TableState};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub async fn watch(shared: Arc<Shared>, db: String, cancel: CancellationToken) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut session: Option<Session> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let rt = shared.current();
        let Some(cfg) = rt.config.database(&db).cloned() else { return };
        let Some(mig) = cfg.migrations.clone() else { return };
        drop(rt);
        let wait = match tick(&shared, &cfg, &mig, &mut session, &mut seen).await {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                mig.watch_interval
            }
            Err(e) => {
                session = None;
                tracing::warn!(database = %db, error = %e, retry_in = ?backoff, "cannot read the migrations table");
                let status = MigrationsStatus {
                    state: "unreachable".into(),
                    failed: Vec::new(),
                    checked_at: chrono::Utc::now(),
                    error: Some(e.to_string()),
                };
                shared.board.update(&db, |s| s.migrations = Some(status));
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
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
    session: &mut Option<Session>,
    seen: &mut HashSet<String>,
) -> Result<(), DbError> {
    if session.is_none() {
        *session = Some(pg::connect(&cfg.url).await?);
    }
    let s = session.as_ref().expect("just connected");
    let state = watch::read(s, watch::dialect(mig).as_ref()).await?;
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
            let (shared, db) = (shared.clone(), cfg.name.clone());
            tokio::spawn(async move {
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
