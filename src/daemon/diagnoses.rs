//! The daemon's diagnosis of each failed migration, for the status page: computed once, when
//! the watcher first sees the failure (it replays on a scratch server, so never per request),
//! one at a time across the daemon, on its tracker; given up at the drain. The board keeps the
//! result by the migration's id until the failure clears.

use std::sync::Arc;

use chrono::Utc;

use super::Shared;
use crate::config::{DatabaseConfig, MigrationsConfig};
use crate::diagnose::{self, Report};
use crate::pg::{self, PgTools};
use crate::watch::{self, Migration, TableState};
use crate::web::Diagnosis;

/// A failure's key on the board: its id and name (markerless tools' half-applied migrations
/// have no id of their own).
fn key(m: &Migration) -> String {
    format!("{}\u{0}{}", m.id, m.name)
}

/// Starts the diagnosis of `m` unless the board has one for it.
pub fn start(shared: &Arc<Shared>, db: &DatabaseConfig, mig: &MigrationsConfig, m: &Migration) {
    let mut known = false;
    shared.board.update(&db.name, |s| {
        known = s.diagnoses.iter().any(|(k, _)| *k == key(m));
        if !known {
            let running = Diagnosis::Running { migration: m.name.clone(), since: Utc::now() };
            s.diagnoses.push((key(m), running));
        }
    });
    if known {
        return;
    }
    let (shared, db, mig, m) = (shared.clone(), db.clone(), mig.clone(), m.clone());
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        let result = tokio::select! {
            r = compute(&shared, &db, &mig, &m) => r,
            _ = shared.draining.cancelled() => return,
        };
        let held = match result {
            Ok(report) => {
                tracing::info!(database = %db.name, migration = %m.name, "failed migration diagnosed");
                Diagnosis::Done { at: Utc::now(), report: Arc::new(report) }
            }
            Err(error) => {
                tracing::warn!(database = %db.name, migration = %m.name, error = %error, "cannot diagnose the failed migration");
                Diagnosis::Failed { migration: m.name.clone(), at: Utc::now(), error }
            }
        };
        shared.board.update(&db.name, |s| {
            // Only while the failure is still there: a cleared one was dropped meanwhile.
            if let Some(slot) = s.diagnoses.iter_mut().find(|(k, _)| *k == key(&m)) {
                slot.1 = held;
            }
        });
    });
}

/// Forgets the diagnoses of failures that are gone.
pub fn keep_only(shared: &Shared, db: &str, failing: &[Migration]) {
    shared.board.update(db, |s| s.diagnoses.retain(|(k, _)| failing.iter().any(|m| key(m) == *k)));
}

async fn compute(
    shared: &Shared,
    db: &DatabaseConfig,
    mig: &MigrationsConfig,
    m: &Migration,
) -> Result<Report, String> {
    let _slot = shared.diagnose_slots.acquire().await.map_err(|e| e.to_string())?;
    let rt = shared.current();
    let cfg = &rt.config;
    let storage = rt.snapshotter.storage.clone();
    let session = pg::connect(&db.url).await.map_err(|e| e.to_string())?;
    let dialect = watch::dialect(mig);
    // The row as it is now (the one the watcher saw may have moved on).
    let state = diagnose::read_state(&session, dialect.as_ref(), &storage, &db.name)
        .await
        .map_err(|e| e.to_string())?;
    let TableState::Rows { migrations } = state else {
        return Err("the migrations table cannot be read".into());
    };
    let now_row = migrations.iter().rev().find(|x| key(x) == key(m)).unwrap_or(m);
    let tools = PgTools::new(cfg.snapshot.pg_bin_dir.clone());
    let env = diagnose::Env {
        scratch: &cfg.scratch,
        state_dir: &cfg.daemon.state_dir,
        pg_bin_dir: &cfg.snapshot.pg_bin_dir,
        tools: &tools,
    };
    let analysis = diagnose::analyse(session.client(), db, mig, dialect.as_ref(), &storage, now_row, env)
        .await
        .map_err(|e| e.to_string())?;
    let schema_now = rt.snapshotter.schema_now(db, &shared.draining).await;
    let baseline = schema_now.map(|t| crate::sql::Baseline::parse(&t)).map_err(|e| e.to_string());
    Ok(diagnose::report(&analysis, session.client(), &mig.schema, baseline.as_ref().map_err(Clone::clone))
        .await)
}
