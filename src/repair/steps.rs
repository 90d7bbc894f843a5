//! One step of a playbook, run: what each kind of step does, the retries of a step whose
//! statement gave up waiting for a lock, and a `command` that may be the tool itself (which
//! needs the tool's lock released while it runs).

use super::{assert, command, drafted, locks, sql, Repairer, StepFailure, Target};
use crate::config::{DatabaseConfig, MigrationsConfig, ResolveAs, Step};
use crate::pg::DbError;

impl Repairer {
    pub(super) fn drafted<'a>(
        &'a self,
        db: &'a DatabaseConfig,
        mig: &'a MigrationsConfig,
        name: &'a str,
        scope: &'a crate::snapshot::Scope,
    ) -> drafted::Ctx<'a> {
        let tools = crate::pg::PgTools::new(self.config.snapshot.pg_bin_dir.clone());
        drafted::Ctx { config: &self.config, db, mig, storage: &self.storage, tools, migration: name, scope }
    }

    /// A step whose statement gave up waiting for a lock (lock_timeout) is retried with backoff;
    /// finish and undo retry each of their segments themselves.
    pub(super) async fn step(&self, run: &Target<'_>, step: &Step) -> Result<String, StepFailure> {
        let retried = !matches!(
            step,
            Step::Finish { .. } | Step::Undo { .. } | Step::Command { .. } | Step::AssertSql { .. }
        );
        let mut attempt = 0;
        let mut notes = String::new();
        loop {
            match self.step_once(run, step).await {
                Err(StepFailure(e))
                    if retried && e.contains("lock timeout") && attempt < self.config.repair.lock_retries =>
                {
                    attempt += 1;
                    notes.push_str(&format!(
                        "note: gave up waiting for a lock ({e}); retry {attempt} of {}\n",
                        self.config.repair.lock_retries
                    ));
                    tokio::time::sleep(std::time::Duration::from_millis(
                        (250u64 << attempt.min(5)).min(5_000),
                    ))
                    .await;
                }
                Ok(out) => return Ok(format!("{notes}{out}")),
                Err(e) => return Err(e),
            }
        }
    }

    async fn step_once(&self, run: &Target<'_>, step: &Step) -> Result<String, StepFailure> {
        let default = self.config.repair.statement_timeout;
        let (session, name) = (run.session, run.migration.name.as_str());
        let drafted = || self.drafted(run.db, run.mig, name, run.scope);
        let own = |r: Result<String, String>| r.map_err(StepFailure);
        match step {
            Step::Finish { timeout } => {
                drafted::finish(session, &drafted(), timeout.unwrap_or(default)).await
            }
            Step::Undo { allow_data_loss, timeout } => {
                drafted::undo(session, &drafted(), *allow_data_loss, timeout.unwrap_or(default)).await
            }
            Step::Sql { sql, timeout } => sql::run(session, sql, timeout.unwrap_or(default)).await,
            Step::SqlFile { path, timeout } => {
                // Read again when it runs: it must still write only what the snapshot holds.
                if !run.scope.is_full() {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| StepFailure(format!("cannot read {}: {e}", path.display())))?;
                    let stmts = crate::sql::parse::parse(&text)
                        .map_err(|e| StepFailure(format!("{}: {e}", path.display())))?;
                    super::scope::check(run.scope, &stmts, &run.mig.schema).map_err(StepFailure)?;
                }
                sql::run_file(session, path, timeout.unwrap_or(default)).await
            }
            Step::Resolve(ResolveAs::FromDiagnosis) => {
                let (how, cleared) = drafted::decide(session, &drafted()).await?;
                let done = own(run.dialect.resolve(session, run.mig, run.migration, how).await)?;
                Ok(format!("diagnosis: {how:?}; {cleared}{done}"))
            }
            Step::Resolve(how) => own(run.dialect.resolve(session, run.mig, run.migration, *how).await),
            Step::ReleaseLock => own(run.dialect.release_lock(session).await),
            Step::AcceptChecksums => own(run.dialect.accept_checksums(session, run.mig).await),
            Step::AssertSql { sql } => assert::run(session, sql).await,
            Step::Command { argv, cwd, env, timeout } => {
                self.command(run, argv, cwd.as_ref(), env, *timeout).await
            }
        }
    }

    /// The command may be the tool itself (`prisma migrate deploy`), which needs its own lock.
    async fn command(
        &self,
        run: &Target<'_>,
        argv: &[String],
        cwd: Option<&std::path::PathBuf>,
        env: &std::collections::BTreeMap<String, String>,
        timeout: std::time::Duration,
    ) -> Result<String, StepFailure> {
        let Some(key) = run.dialect.advisory_key(run.db.url.dbname()) else {
            return command::run(argv, cwd, env, timeout).await;
        };
        let lost = |e: DbError| StepFailure(e.to_string());
        locks::release_tool_lock(run.session, key).await.map_err(lost)?;
        let result = command::run(argv, cwd, env, timeout).await;
        let retaken =
            locks::take_tool_lock(run.session, key, self.config.repair.lock_wait).await.map_err(lost)?;
        if let Err(holder) = retaken {
            return Err(StepFailure(format!(
                "could not take {}'s lock back after the command ({holder})",
                run.dialect.tool()
            )));
        }
        result
    }
}
