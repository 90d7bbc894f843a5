//! `finish`, `undo` and `resolve = "from-diagnosis"`: the analysis `diagnose` prints, computed
//! again when the step runs (after the pre-repair snapshot, under the locks), whose repairs were
//! proven on copies of the baseline on the scratch server; only a proven plan runs here, with
//! `repair.lock_timeout` and its retries on every statement, and its result is checked against
//! the replay's expected shape before the last commit. The audit keeps exactly what ran.

use std::sync::Arc;
use std::time::Duration;

use super::StepFailure;
use crate::audit::RunRecord;
use crate::config::{Config, DatabaseConfig, MigrationsConfig, Playbook, ResolveAs, Step};
use crate::diagnose::plan::{self, Check, Plan, RowGuard, RunOpts, Segment};
use crate::diagnose::{self, Analysis};
use crate::pg::{PgTools, Session};
use crate::storage::Storage;
use crate::watch::{self, TableState};

pub struct Ctx<'a> {
    pub config: &'a Config,
    pub db: &'a DatabaseConfig,
    pub mig: &'a MigrationsConfig,
    pub storage: &'a Arc<dyn Storage>,
    pub tools: PgTools,
    pub migration: &'a str,
    /// What the pre-repair snapshot holds: the plan must write nothing outside it.
    pub scope: &'a crate::snapshot::Scope,
}

/// Err when finish or undo of the analysed migration would write a table the scoped
/// pre-repair snapshot does not hold (the plan is drafted from these statements).
async fn within_scope(session: &Session, ctx: &Ctx<'_>, a: &Analysis) -> Result<(), StepFailure> {
    let stmts: Vec<crate::sql::Statement> = a.statements.iter().map(|(s, _)| s.clone()).collect();
    super::scope::check_migration(session, ctx.scope, &stmts, &ctx.mig.schema).await.map_err(StepFailure)
}

async fn analysis(session: &Session, ctx: &Ctx<'_>) -> Result<Analysis, StepFailure> {
    let dialect = watch::dialect(ctx.mig);
    let state = diagnose::read_state(session, dialect.as_ref(), ctx.storage, &ctx.db.name)
        .await
        .map_err(|e| StepFailure(e.to_string()))?;
    let TableState::Rows { migrations } = state else {
        return Err(StepFailure("the migrations table cannot be read".into()));
    };
    let m = migrations
        .iter()
        .rev()
        .find(|m| m.name == ctx.migration)
        .ok_or_else(|| StepFailure(format!("no migration `{}` in the table", ctx.migration)))?;
    let env = diagnose::Env {
        scratch: &ctx.config.scratch,
        state_dir: &ctx.config.daemon.state_dir,
        pg_bin_dir: &ctx.config.snapshot.pg_bin_dir,
        tools: &ctx.tools,
    };
    let a = diagnose::analyse(session.client(), ctx.db, ctx.mig, dialect.as_ref(), ctx.storage, m, env).await;
    a.map_err(|e| StepFailure(e.to_string()))
}

fn live_opts(ctx: &Ctx<'_>, timeout: Duration) -> RunOpts {
    RunOpts {
        statement_timeout: timeout,
        lock_timeout: Some(ctx.config.repair.lock_timeout),
        lock_retries: ctx.config.repair.lock_retries,
        search_path: ctx.mig.schema.clone(),
        roll_back: false,
    }
}

/// `resolve = "from-diagnosis"`: rolled back when the migration provably ran nothing (the
/// invalid index its failed statement left is dropped first), applied when it provably ran
/// whole; anything else is for finish or undo.
pub async fn decide(session: &Session, ctx: &Ctx<'_>) -> Result<(ResolveAs, String), StepFailure> {
    let a = analysis(session, ctx).await?;
    let how = a.resolution().map_err(|why| StepFailure(format!("resolve from diagnosis refused: {why}")))?;
    let mut done = String::new();
    if let (ResolveAs::RolledBack, Some(ix)) = (how, &a.evidence.stop.leftover) {
        let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", diagnose::qualify(ix, &ctx.mig.schema));
        let plan = Plan { segments: vec![Segment::Alone { sql: sql.clone(), before_retry: None }] };
        // The replay allowed for this index only: without it live must be the baseline exactly,
        // or the migration is not resolved (the drop itself loses no data: the index was invalid).
        let expect = a.evidence.expect_base.as_ref().ok_or_else(|| {
            StepFailure("resolve from diagnosis refused: no baseline shape to check against".into())
        })?;
        let check = Check { exclude: &a.evidence.exclude, expect, what: "the baseline" };
        plan::run(
            session.client(),
            &plan,
            &live_opts(ctx, ctx.config.repair.statement_timeout),
            None,
            Some(check),
        )
        .await
        .map_err(|e| StepFailure(format!("cannot drop the invalid index the failed statement left: {e}")))?;
        done = format!("dropped the invalid index the failed statement left: {sql}; ");
    }
    Ok((how, done))
}

/// `--dry-run`: what each finish, undo and `resolve = "from-diagnosis"` step would do now, in
/// its planned record: the SQL, the way it would resolve, or why it would refuse. The analysis
/// is computed once for the whole playbook.
pub async fn preview_steps(session: &Session, ctx: &Ctx<'_>, playbook: &Playbook, rec: &mut RunRecord) {
    let mut a: Option<Result<Analysis, String>> = None;
    for (i, step) in playbook.steps.iter().enumerate() {
        if !matches!(step, Step::Finish { .. } | Step::Undo { .. } | Step::Resolve(ResolveAs::FromDiagnosis))
        {
            continue;
        }
        if a.is_none() {
            a = Some(analysis(session, ctx).await.map_err(|e| e.0));
        }
        let params = &mut rec.steps[i].params;
        let preview = match (step, a.as_ref().expect("computed above")) {
            (_, Err(why)) => Err(why.clone()),
            (Step::Undo { .. }, Ok(a)) => a.undo().map(|u| Preview::Sql(u.plan.statements())),
            (Step::Finish { .. }, Ok(a)) => a.finish_sql().map(Preview::Sql),
            (_, Ok(a)) => a.resolution().map(|how| Preview::Resolve(how, a.evidence.stop.leftover.is_some())),
        };
        match preview {
            Ok(Preview::Sql(sql)) => {
                params["sql"] =
                    serde_json::json!(sql.iter().map(|s| crate::redact::redact(s)).collect::<Vec<_>>())
            }
            Ok(Preview::Resolve(how, leftover)) => {
                params["would_resolve"] = serde_json::json!(how);
                if leftover && how == ResolveAs::RolledBack {
                    params["would_drop_invalid_index"] = serde_json::json!(true);
                }
            }
            Err(why) => params["refused"] = serde_json::json!(crate::redact::redact(&why)),
        }
    }
}

enum Preview {
    Sql(Vec<String>),
    Resolve(ResolveAs, bool),
}

pub async fn finish(session: &Session, ctx: &Ctx<'_>, timeout: Duration) -> Result<String, StepFailure> {
    let a = analysis(session, ctx).await?;
    let refused =
        |why: &String| StepFailure(format!("finish of `{}` refused, nothing changed: {why}", ctx.migration));
    let plan = a.evidence.finish.as_ref().map_err(refused)?;
    within_scope(session, ctx, &a).await?;
    let expect = a.evidence.expect_all.as_ref().ok_or_else(|| refused(&"no expected result".to_string()))?;
    let check =
        Check { exclude: &a.evidence.exclude, expect, what: "the baseline with the whole migration applied" };
    let log = plan::run(session.client(), plan, &live_opts(ctx, timeout), None, Some(check))
        .await
        .map_err(StepFailure)?;
    Ok(format!(
        "ran {} statement(s), proven first on a copy of the baseline; the schema now is the whole migration's:\n{}{}",
        plan.statements().len(),
        plan.text(),
        retries(&log)
    ))
}

pub async fn undo(
    session: &Session,
    ctx: &Ctx<'_>,
    allow_data_loss: bool,
    timeout: Duration,
) -> Result<String, StepFailure> {
    let a = analysis(session, ctx).await?;
    let refused =
        |why: &String| StepFailure(format!("undo of `{}` refused, nothing changed: {why}", ctx.migration));
    let u = a.undo().map_err(|e| refused(&e))?;
    within_scope(session, ctx, &a).await?;
    let expect = a.evidence.expect_base.as_ref().ok_or_else(|| refused(&"no baseline shape".to_string()))?;
    let baseline = a.baseline.as_ref().map(|b| b.id.clone()).unwrap_or_default();
    let guard = RowGuard { allow_data_loss, ..u.guard.clone() };
    let check = Check { exclude: &a.evidence.exclude, expect, what: "the baseline" };
    let log = plan::run(session.client(), &u.plan, &live_opts(ctx, timeout), Some(&guard), Some(check))
        .await
        .map_err(|e| refused(&e))?;
    Ok(format!(
        "ran {} statement(s), proven first on a copy of the baseline; the schema now matches snapshot {baseline}:\n{}{}",
        u.plan.statements().len(),
        u.plan.text(),
        retries(&log)
    ))
}

fn retries(log: &[String]) -> String {
    log.iter().map(|l| format!("note: {l}\n")).collect()
}
