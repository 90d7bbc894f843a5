//! A repair run: take pgmedic's repair lock and Prisma's, re-read the table, pick the first
//! playbook that matches the failed migration, take a `pre-repair` snapshot (no snapshot, no
//! step: fail closed), run the steps in order stopping at the first failure, re-read, and write
//! one audit record, fsynced, before the run is reported done.

mod assert;
mod command;
mod drafted;
mod locks;
mod preflight;
mod record;
mod scope;
mod sql;
mod steps;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use record::{cap, planned};

use crate::audit::{self, redact, AuditError, AuditLog, RunRecord};
use crate::config::{Config, DatabaseConfig, MigrationsConfig, Playbook, Step};
use crate::pg::{self, DbError, Session};
use crate::snapshot::{Manifest, Request, Scope, Snapshotter};
use crate::storage::Storage;
use crate::watch::{self, Dialect, Migration, TableState};

/// Why a step failed, in words for the audit record.
#[derive(Debug)]
pub struct StepFailure(pub String);

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("database `{0}` is not in the configuration")]
    UnknownDatabase(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("repair of {database} refused, nothing was done: {source}; fix daemon.state_dir so that runs can be recorded")]
    AuditUnavailable { database: String, source: AuditError },
    #[error("repair run {run_id} of {database} ended `{outcome}` but its audit record could not be written ({source}); the record was copied to storage if it was reachable")]
    AuditLost { run_id: String, database: String, outcome: String, source: AuditError },
}

impl RepairError {
    /// Refusals exit 3: nothing was done because it was not safe to go on.
    pub fn is_refusal(&self) -> bool {
        matches!(self, RepairError::AuditUnavailable { .. })
    }
}

/// How the pre-repair snapshot is taken: in-process, or through the daemon's worker.
#[async_trait]
pub trait PreRepairSnapshot: Send + Sync {
    /// A snapshot of `db` holding `scope` (the whole schema always), `reason` saying why.
    async fn take(
        &self,
        db: &DatabaseConfig,
        trigger: &str,
        scope: &Scope,
        reason: &str,
    ) -> Result<Manifest, String>;
}

pub struct InProcessSnapshots(pub Snapshotter);

#[async_trait]
impl PreRepairSnapshot for InProcessSnapshots {
    async fn take(
        &self,
        db: &DatabaseConfig,
        trigger: &str,
        scope: &Scope,
        reason: &str,
    ) -> Result<Manifest, String> {
        let mut req = Request::asked(crate::snapshot::PRE_REPAIR, trigger);
        (req.scope, req.scope_reason) = (scope.clone(), Some(reason.to_string()));
        self.0.take(db, &req, &CancellationToken::new()).await.map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub database: String,
    /// Use this playbook (it must still match); the first matching one when absent.
    pub playbook: Option<String>,
    pub dry_run: bool,
    pub trigger: String,
    pub requested_by: String,
}

pub struct Repairer {
    pub config: Arc<Config>,
    pub storage: Arc<dyn Storage>,
    pub snapshots: Arc<dyn PreRepairSnapshot>,
}

/// Outcomes that mean "refused for safety" (exit 3).
pub fn is_refusal(outcome: &str) -> bool {
    matches!(outcome, "refused" | "snapshot_failed")
}

impl Repairer {
    pub async fn run(&self, req: &RunRequest) -> Result<RunRecord, RepairError> {
        let db = self
            .config
            .database(&req.database)
            .ok_or_else(|| RepairError::UnknownDatabase(req.database.clone()))?;
        let mig = db.migrations_or_default();
        let log = AuditLog::new(&self.config.daemon.state_dir);
        if !req.dry_run {
            log.check_writable()
                .map_err(|source| RepairError::AuditUnavailable { database: db.name.clone(), source })?;
        }
        let started_at = Utc::now();
        let mut rec = RunRecord {
            run_id: audit::new_run_id(started_at),
            database: db.name.clone(),
            playbook: None,
            migration: None,
            trigger: req.trigger.clone(),
            requested_by: req.requested_by.clone(),
            dry_run: req.dry_run,
            snapshot_id: None,
            started_at,
            finished_at: started_at,
            outcome: "failed".into(),
            host: crate::snapshot::hostname(),
            pid: std::process::id(),
            error: None,
            rows_before: Vec::new(),
            rows_after: Vec::new(),
            steps: Vec::new(),
            snapshot_scope: None,
            snapshot_scope_reason: None,
        };
        if let Err(e) = self.attempt(db, &mig, req, &log, &mut rec).await {
            rec.outcome = "failed".into();
            rec.error = Some(e.to_string());
        }
        rec.finished_at = Utc::now();
        tracing::info!(run_id = %rec.run_id, database = %rec.database, outcome = %rec.outcome, error = ?rec.error, "repair run finished");
        if !req.dry_run {
            let appended = log.append(&rec);
            // The storage copy is attempted even when the local log failed: it may be the only one.
            audit::store_copy(&self.storage, &rec).await;
            appended.map_err(|source| RepairError::AuditLost {
                run_id: rec.run_id.clone(),
                database: rec.database.clone(),
                outcome: rec.outcome.clone(),
                source,
            })?;
        }
        Ok(rec)
    }

    async fn attempt(
        &self,
        db: &DatabaseConfig,
        mig: &MigrationsConfig,
        req: &RunRequest,
        log: &AuditLog,
        rec: &mut RunRecord,
    ) -> Result<(), RepairError> {
        let session = pg::connect(&db.url).await?;
        let timeout_ms = self.config.repair.statement_timeout.as_millis().max(1);
        let lock_ms = self.config.repair.lock_timeout.as_millis().max(1);
        // The session idles while its snapshot runs: no idle timeout of the role's or the
        // database's may end it (and its locks) then; every statement waits for a lock at most
        // lock_timeout, so a queued ALTER never holds up that table's readers for longer.
        session.immune_to_timeouts().await?;
        (session
            .client()
            .batch_execute(&format!("SET statement_timeout = {timeout_ms}; SET lock_timeout = {lock_ms}")))
        .await
        .map_err(|e| session.err("set statement_timeout and lock_timeout", e))?;
        let dialect = watch::dialect(mig);
        // `auto` finds its tool (and so its lock) at the first read.
        let _ = watch::read(&session, dialect.as_ref()).await?;
        if !req.dry_run && !self.lock(&session, db, dialect.as_ref(), rec).await? {
            return Ok(());
        }
        let state = self.read(&session, db, dialect.as_ref()).await?;
        if let Some(why) = preflight::blocked(db, &state) {
            return refuse(rec, why);
        }
        let Some(target) = state.needing_repair().first().map(|m| (*m).clone()) else {
            rec.outcome = "noop".into();
            return Ok(());
        };
        rec.migration = Some(target.name.clone());
        let Some(playbook) = self.choose(db, &target, req.playbook.as_deref()) else {
            rec.outcome = "no_playbook".into();
            rec.error = Some(preflight::no_playbook(db, &target));
            return Ok(());
        };
        rec.playbook = Some(playbook.name.clone());
        let running = crate::diagnose::still_running(session.client(), dialect.as_ref(), mig, &target)
            .await
            .map_err(|e| session.err("look for the migrator's backends", e))?;
        if !running.is_empty() {
            return refuse(rec, preflight::still_running(&running));
        }
        let now = server_now(&session).await?;
        if let Some(why) = preflight::too_recent(&target, self.config.repair.crash_grace, now) {
            return refuse(rec, why);
        }
        rec.steps = playbook.steps.iter().enumerate().map(|(i, s)| planned(i, s, &target.name)).collect();
        let scoped =
            scope::plan(&session, self.config.repair.snapshot_full, dialect.as_ref(), mig, playbook, &target)
                .await;
        (rec.snapshot_scope, rec.snapshot_scope_reason) =
            (Some(scoped.scope.clone()), Some(scoped.reason.clone()));
        if req.dry_run {
            let name = target.name.clone();
            drafted::preview_steps(&session, &self.drafted(db, mig, &name, &Scope::Full), playbook, rec)
                .await;
            rec.outcome = "dry_run".into();
            return Ok(());
        }
        rec.rows_before = dialect.raw_rows(&session).await?;
        if !self.start(&session, db, log, &scoped, rec).await? {
            return Ok(());
        }
        // Read again: the snapshot took time, and a deploy without its lock may have moved on.
        if let Some(why) =
            preflight::changed_since(&target, &self.read(&session, db, dialect.as_ref()).await?)
        {
            return refuse(rec, why);
        }
        let run = Target {
            session: &session,
            db,
            mig,
            dialect: dialect.as_ref(),
            migration: &target,
            scope: &scoped.scope,
        };
        let failed = self.run_steps(&run, playbook, log, rec).await;
        rec.rows_after = dialect.raw_rows(&session).await?;
        if !failed {
            let after = self.read(&session, db, dialect.as_ref()).await?;
            (rec.outcome, rec.error) = preflight::outcome(&after);
        }
        Ok(())
    }

    /// Records the start (fsynced: a run killed from here on is seen as interrupted), then takes
    /// the pre-repair snapshot; false (with the record filled) when it failed: no step runs.
    async fn start(
        &self,
        session: &Session,
        db: &DatabaseConfig,
        log: &AuditLog,
        scoped: &scope::Planned,
        rec: &mut RunRecord,
    ) -> Result<bool, RepairError> {
        rec.outcome = "started".into();
        if let Err(source) = log.append(rec) {
            return Err(RepairError::AuditUnavailable { database: db.name.clone(), source });
        }
        let trigger = format!("repair:{}", rec.run_id);
        let taken =
            keep_alive(session, self.snapshots.take(db, &trigger, &scoped.scope, &scoped.reason)).await;
        match taken {
            Ok(m) => {
                rec.snapshot_id = Some(m.id);
                Ok(true)
            }
            Err(e) => {
                rec.outcome = "snapshot_failed".into();
                rec.error = Some(format!("the pre-repair snapshot failed, so no step was run: {e}"));
                Ok(false)
            }
        }
    }

    /// Takes both locks; false (with the record filled) when refused.
    async fn lock(
        &self,
        session: &Session,
        db: &DatabaseConfig,
        dialect: &dyn Dialect,
        rec: &mut RunRecord,
    ) -> Result<bool, RepairError> {
        if let Err(holder) = locks::take_repair_lock(session).await? {
            refuse(
                rec,
                format!(
                    "another repair of {} is running: pgmedic's repair lock is held by {holder}",
                    db.name
                ),
            )?;
            return Ok(false);
        }
        let wait = self.config.repair.lock_wait;
        let Some(key) = dialect.advisory_key(db.url.dbname()) else { return Ok(true) };
        if let Err(holder) = locks::take_tool_lock(session, key, wait).await? {
            let (tool, wait) = (dialect.tool(), humantime::format_duration(wait));
            refuse(rec, format!("a migration deploy holds {tool}'s lock {key} ({holder}); waited {wait} (repair.lock_wait), try again once it is done"))?;
            return Ok(false);
        }
        Ok(true)
    }

    /// The tool's table, with a half-applied code migration found against the snapshots.
    async fn read(
        &self,
        session: &Session,
        db: &DatabaseConfig,
        dialect: &dyn Dialect,
    ) -> Result<TableState, DbError> {
        crate::diagnose::read_state(session, dialect, &self.storage, &db.name).await
    }

    fn choose<'a>(&'a self, db: &DatabaseConfig, m: &Migration, named: Option<&str>) -> Option<&'a Playbook> {
        let log = m.logs.as_deref().unwrap_or("");
        self.config
            .playbooks
            .iter()
            .filter(|p| named.is_none_or(|n| n == p.name))
            .find(|p| p.matches(&db.name, &m.name, log))
    }

    /// Runs the steps in order; true when one failed (the record says which and why).
    async fn run_steps(
        &self,
        run: &Target<'_>,
        playbook: &Playbook,
        log: &AuditLog,
        rec: &mut RunRecord,
    ) -> bool {
        for (i, step) in playbook.steps.iter().enumerate() {
            if i > 0 {
                // Progress, so that an interrupted run shows which steps had finished.
                rec.outcome = "running".into();
                if let Err(e) = log.append(rec) {
                    tracing::warn!(run_id = %rec.run_id, error = %e, "could not record the repair's progress");
                }
            }
            let started = Utc::now();
            let result = self.step(run, step).await;
            let r = &mut rec.steps[i];
            r.started_at = Some(started);
            r.finished_at = Some(Utc::now());
            match result {
                Ok(output) => {
                    r.outcome = "ok".into();
                    // The cap bounds what a child printed; the SQL pgmedic drafted and ran
                    // (finish, undo) is kept whole: the audit must show every statement.
                    let drafted = matches!(step, Step::Finish { .. } | Step::Undo { .. });
                    r.output = if drafted { redact(&output) } else { cap(&redact(&output)) };
                }
                Err(StepFailure(e)) => {
                    let e = cap(&redact(&e));
                    r.outcome = "failed".into();
                    r.error = Some(e.clone());
                    rec.outcome = "failed".into();
                    rec.error = Some(format!(
                        "step {} ({}) of playbook {} failed: {e}",
                        i + 1,
                        r.kind,
                        playbook.name
                    ));
                    return true;
                }
            }
        }
        false
    }
}

/// Runs `work` while the session, idle meanwhile, says something every 30 s: a proxy or
/// firewall that drops idle connections never takes the repair's locks with it.
async fn keep_alive<T>(session: &Session, work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                if let Err(e) = session.client().batch_execute("SELECT 1").await {
                    tracing::warn!(error = %crate::pg::error_text(&e), "the repair session did not answer while its snapshot ran");
                }
            }
        }
    }
}

/// What a run's steps act on.
struct Target<'a> {
    session: &'a Session,
    db: &'a DatabaseConfig,
    mig: &'a MigrationsConfig,
    dialect: &'a dyn Dialect,
    migration: &'a Migration,
    /// What the pre-repair snapshot holds: a step must not write outside it.
    scope: &'a Scope,
}

/// The server's clock: a migration's timestamps were written by it, not by this host.
async fn server_now(session: &Session) -> Result<chrono::DateTime<Utc>, RepairError> {
    let row = session
        .client()
        .query_one("SELECT now()", &[])
        .await
        .map_err(|e| session.err("read the server's clock", e))?;
    Ok(row.get(0))
}

fn refuse(rec: &mut RunRecord, why: String) -> Result<(), RepairError> {
    rec.outcome = "refused".into();
    rec.error = Some(why);
    Ok(())
}
