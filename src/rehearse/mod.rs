//! A deploy rehearsed on a fresh copy: the newest snapshot (or the one named, or a new one)
//! restored into a scratch database on the scratch server (pgmedic's own ephemeral cluster by
//! default; the source's server or another only when configured, `rehearse.target` first), the
//! deploy command run against it, the migrations table read before and after, the failed
//! migration diagnosed there, and the scratch dropped — also on timeout and cancel, and at the
//! next rehearsal when a killed one left it. The source database is only ever read, and
//! proven untouched: a deploy that changed it fails the rehearsal.

pub mod deploy;
mod locks;
mod report;
mod source;

use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DatabaseConfig, ScratchServer};
use crate::diagnose::{self, Report as Diagnosis};
use crate::pg::{self, scratch, PgTools};
use crate::restore::{Progress, RestoreOptions, Restorer};
use crate::scratch::{Access, Server};
use crate::snapshot::{self, Manifest, Request, Snapshotter};
use crate::sql::Baseline;
use crate::storage::Storage;
use crate::watch::{self, Migration, TableState};

pub use locks::LockSeen;
pub use report::touched_detail;

#[derive(Debug, thiserror::Error)]
pub enum RehearseError {
    #[error("rehearse of {database} refused: {why}")]
    Refused { database: String, why: String },
    #[error("rehearse of {database} failed: {why}")]
    Failed { database: String, why: String },
    #[error("rehearse of {database} was cancelled; its scratch database {scratch} was dropped")]
    Cancelled { database: String, scratch: String },
}

impl RehearseError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, RehearseError::Refused { .. })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub snapshot: Option<String>,
    pub fresh: bool,
    pub keep: bool,
    /// The deploy command; the database's `rehearse_command` when empty.
    pub command: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Applied {
    pub name: String,
    pub duration_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub database: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub snapshot_id: String,
    pub scratch_database: String,
    pub dropped: bool,
    pub command: Vec<String>,
    pub migrations_before: Vec<Migration>,
    pub migrations_after: Vec<Migration>,
    /// Migration folders not applied before the deploy (with `migrations.dir`).
    pub pending: Vec<String>,
    /// `ephemeral`, `source`, or the scratch server's URL without its password.
    pub scratch_server: String,
    /// The deploy changed the source database (its migration rows or its catalog).
    pub source_changed: bool,
    /// Each change to the source, named.
    pub source_changes: Vec<String>,
    /// Why the rehearsal failed although the deploy may have exited 0.
    pub problem: Option<String>,
    pub applied: Vec<Applied>,
    pub failed: Vec<String>,
    pub duration_s: f64,
    pub output: String,
    pub locks: Vec<LockSeen>,
    pub diagnosis: Vec<Diagnosis>,
}

pub struct Rehearser {
    pub config: Arc<Config>,
    pub storage: Arc<dyn Storage>,
}

fn rows(state: TableState) -> Vec<Migration> {
    match state {
        TableState::Rows { migrations } => migrations,
        _ => Vec::new(),
    }
}

impl Rehearser {
    fn tools(&self) -> PgTools {
        PgTools::new(self.config.snapshot.pg_bin_dir.clone())
    }

    pub async fn rehearse(
        &self,
        db: &DatabaseConfig,
        opts: &Options,
        cancel: &CancellationToken,
    ) -> Result<Report, RehearseError> {
        let fail = |why: String| RehearseError::Failed { database: db.name.clone(), why };
        let mig = db.migrations_or_default();
        let command =
            if opts.command.is_empty() { mig.rehearse_command.clone() } else { opts.command.clone() };
        if command.is_empty() {
            return Err(RehearseError::Refused {
                database: db.name.clone(),
                why: "no deploy command: give one after `--`, or set databases.migrations.rehearse_command"
                    .into(),
            });
        }
        let choice = match &self.config.rehearse.target {
            Some(t) => ScratchServer::Url(t.clone()),
            None => self.config.scratch.server.clone(),
        };
        if opts.keep && matches!(choice, ScratchServer::Ephemeral) {
            return Err(RehearseError::Refused {
                database: db.name.clone(),
                why: "--keep needs a scratch server that outlives the rehearsal: pgmedic's ephemeral one is removed when it ends (set scratch.server = \"source\" or a URL, or rehearse.target)".into(),
            });
        }
        let m = self.snapshot(db, opts, cancel).await?;
        Server::check_room(&choice, &self.config.scratch, &m.id, m.raw_bytes)
            .map_err(|e| RehearseError::Refused { database: db.name.clone(), why: e.to_string() })?;
        let access = if deploy::needs_tcp(&mig.tool, &command) { Access::Loopback } else { Access::Socket };
        let major = pg::locate::major_of_version(&m.server_version);
        let (scratch_cfg, state_dir) = (&self.config.scratch, &self.config.daemon.state_dir);
        let server = Server::open_with(
            &choice,
            scratch_cfg,
            state_dir,
            db,
            &self.config.snapshot.pg_bin_dir,
            access,
            major,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        let result = self.on_server(db, &m, &server, &command, opts, cancel).await;
        server.close().await;
        result
    }

    /// On the opened scratch server: its leftovers swept, the source's roles adopted, a scratch
    /// database made, rehearsed on, and dropped (or kept).
    async fn on_server(
        &self,
        db: &DatabaseConfig,
        m: &Manifest,
        server: &Server,
        command: &[String],
        opts: &Options,
        cancel: &CancellationToken,
    ) -> Result<Report, RehearseError> {
        let fail = |why: String| RehearseError::Failed { database: db.name.clone(), why };
        if !server.is_ephemeral() {
            scratch::sweep(server.admin())
                .await
                .map_err(|e| fail(format!("cannot clear old scratch databases: {e}")))?;
        }
        let source = pg::connect(&db.url).await.map_err(|e| fail(e.to_string()))?;
        server.adopt_roles(source.client()).await.map_err(|e| fail(e.to_string()))?;
        drop(source);
        let scratch = scratch::Scratch::create(server.admin(), scratch::Purpose::Rehearse)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let result = self.on_scratch(db, m, server, &scratch, command, cancel).await;
        let dropped = if opts.keep && !cancel.is_cancelled() {
            // Kept for inspection: relabelled so that no sweep takes it from under the operator.
            if let Err(e) = scratch.keep().await {
                tracing::warn!(database = %scratch.name(), error = %e, "could not mark the kept scratch database; the next sweep may drop it");
            }
            false
        } else {
            match scratch.drop().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(database = %scratch.name(), error = %e, "could not drop the scratch database; the next rehearsal will");
                    false
                }
            }
        };
        if cancel.is_cancelled() {
            return Err(RehearseError::Cancelled {
                database: db.name.clone(),
                scratch: scratch.name().to_string(),
            });
        }
        let mut report = result.map_err(fail)?;
        report.dropped = dropped;
        Ok(report)
    }

    /// The snapshot to rehearse on: named, new (`--fresh`), or the newest if fresh enough.
    async fn snapshot(
        &self,
        db: &DatabaseConfig,
        opts: &Options,
        cancel: &CancellationToken,
    ) -> Result<Manifest, RehearseError> {
        let refuse = |why: String| RehearseError::Refused { database: db.name.clone(), why };
        if let Some(id) = &opts.snapshot {
            let m = snapshot::find(&self.storage, id).await.map_err(|e| refuse(e.to_string()))?;
            if m.database != db.name {
                return Err(refuse(format!("snapshot {id} is of `{}`, not `{}`", m.database, db.name)));
            }
            return Ok(m);
        }
        if opts.fresh {
            let snapshotter = Snapshotter {
                storage: Arc::clone(&self.storage),
                tools: self.tools(),
                cfg: self.config.snapshot.clone(),
            };
            let req = Request::asked("rehearse", "rehearse");
            return snapshotter
                .take(db, &req, cancel)
                .await
                .map_err(|e| refuse(format!("the fresh snapshot failed: {e}")));
        }
        let all = snapshot::list(&self.storage, Some(&db.name)).await.map_err(|e| refuse(e.to_string()))?;
        // A scoped pre-repair snapshot holds a few tables' rows: nothing to rehearse a deploy on.
        let m = all
            .into_iter()
            .filter(|m| m.scope.is_full())
            .last()
            .ok_or_else(|| refuse(format!("{} has no snapshot yet: --fresh takes one", db.name)))?;
        let age = Utc::now() - m.taken_at;
        let max = self.config.rehearse.max_age;
        if age.to_std().unwrap_or_default() > max {
            return Err(refuse(format!(
                "its newest snapshot {} is {} old, over rehearse.max_age ({}): --fresh takes a new one, --snapshot {} uses it anyway",
                m.id,
                humantime::format_duration(std::time::Duration::from_secs(age.num_seconds().max(0) as u64)),
                humantime::format_duration(max),
                m.id
            )));
        }
        Ok(m)
    }

    async fn on_scratch(
        &self,
        db: &DatabaseConfig,
        m: &Manifest,
        server: &Server,
        scratch: &scratch::Scratch,
        command: &[String],
        cancel: &CancellationToken,
    ) -> Result<Report, String> {
        self.restore(m, scratch, cancel).await?;
        let mig = db.migrations_or_default();
        let dialect = watch::dialect(&mig);
        let session = pg::connect(&scratch.url).await.map_err(|e| e.to_string())?;
        let before = rows(watch::read(&session, dialect.as_ref()).await.map_err(|e| e.to_string())?);
        // On pgmedic's own cluster the deploy connects as the source's role (made to log in
        // there); elsewhere with the credentials pgmedic uses on that server.
        let user = if server.is_ephemeral() { db.url.user() } else { server.admin().user() };
        let login = server.login(scratch.name(), user).await.map_err(|e| e.to_string())?;
        let cwd = self.config.rehearse_cwd(&mig);
        let target = deploy::Target { url: &login.url, loopback: login.loopback, cwd: &cwd };
        let source_before = source::read(db, dialect.as_ref())
            .await
            .map_err(|e| format!("cannot read the source before the deploy: {e}"))?;
        let ran = deploy::run(command, &target, self.config.rehearse.timeout, cancel).await?;
        let source_after = source::read(db, dialect.as_ref())
            .await
            .map_err(|e| format!("cannot read the source after the deploy: {e}"))?;
        let source_changes = source_before.changes(&source_after);
        let after = rows(watch::read(&session, dialect.as_ref()).await.map_err(|e| e.to_string())?);
        let failed: Vec<&Migration> = after.iter().filter(|m| m.status.needs_repair()).collect();
        let on_scratch = DatabaseConfig { url: scratch.url.clone(), schedule: None, ..db.clone() };
        let diagnosis = if failed.is_empty() {
            Vec::new()
        } else {
            self.diagnose(&session, &on_scratch, &failed, cancel).await?
        };
        let pending = report::pending(&mig, &before);
        let applied = report::applied_now(&before, &after);
        let locks = locks::attribute(&ran.samples, &after, &before, ran.started_at, ran.ended_at);
        let problem = report::problem(&db.name, &ran, &pending, &applied, &source_changes);
        Ok(Report {
            ok: ran.exit_code == Some(0) && failed.is_empty() && problem.is_none(),
            database: db.name.clone(),
            scratch_server: server.label().to_string(),
            source_changed: !source_changes.is_empty(),
            source_changes,
            problem,
            exit_code: ran.exit_code,
            timed_out: ran.timed_out,
            snapshot_id: m.id.clone(),
            scratch_database: scratch.name().to_string(),
            dropped: false,
            command: command.iter().map(|a| crate::redact::redact(a)).collect(),
            pending,
            failed: failed.iter().map(|m| m.name.clone()).collect(),
            applied,
            migrations_before: before,
            migrations_after: after,
            duration_s: ran.seconds,
            output: crate::redact::redact(&ran.output),
            locks,
            diagnosis,
        })
    }

    /// The snapshot into the (empty) scratch database, in one transaction.
    async fn restore(
        &self,
        m: &Manifest,
        scratch: &scratch::Scratch,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let restorer = Restorer {
            storage: Arc::clone(&self.storage),
            tools: self.tools(),
            config: Arc::clone(&self.config),
        };
        let opts = RestoreOptions {
            target: scratch.name().to_string(),
            create: false,
            clean: false,
            jobs: 1,
            no_owner: false,
            no_subscriptions: true,
        };
        let progress = Progress::hidden();
        restorer
            .restore_into(m, &scratch.url, &opts, &progress, cancel)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Each failed migration diagnosed on the scratch copy, the restored snapshot its baseline.
    async fn diagnose(
        &self,
        session: &pg::Session,
        on_scratch: &DatabaseConfig,
        failed: &[&Migration],
        cancel: &CancellationToken,
    ) -> Result<Vec<Diagnosis>, String> {
        let mig = on_scratch.migrations_or_default();
        let dialect = watch::dialect(&mig);
        let snapshotter = Snapshotter {
            storage: Arc::clone(&self.storage),
            tools: self.tools(),
            cfg: self.config.snapshot.clone(),
        };
        let now = snapshotter
            .schema_now(on_scratch, cancel)
            .await
            .map(|t| Baseline::parse(&t))
            .map_err(|e| e.to_string());
        let tools = self.tools();
        let env = diagnose::Env {
            scratch: &self.config.scratch,
            state_dir: &self.config.daemon.state_dir,
            pg_bin_dir: &self.config.snapshot.pg_bin_dir,
            tools: &tools,
        };
        let mut diagnosis = Vec::new();
        for f in failed {
            let a = diagnose::analyse(
                session.client(),
                on_scratch,
                &mig,
                dialect.as_ref(),
                &self.storage,
                f,
                env,
            )
            .await
            .map_err(|e| e.to_string())?;
            diagnosis.push(
                diagnose::report(&a, session.client(), &mig.schema, now.as_ref().map_err(Clone::clone)).await,
            );
        }
        Ok(diagnosis)
    }
}
