//! `finish` and `undo` steps: the SQL `diagnose` drafts, computed again when the step runs
//! (after the pre-repair snapshot, under the locks), run in one transaction with the statement
//! timeout, and returned as the step's output so the audit keeps exactly what ran. `undo`
//! refuses to drop a table that holds rows unless allowed, and commits only when the objects the
//! migration touched are described by the catalog exactly as in the baseline snapshot's schema.

use std::sync::Arc;
use std::time::Duration;

use super::StepFailure;
use crate::audit::RunRecord;
use crate::config::{DatabaseConfig, MigrationsConfig, Playbook, ResolveAs, Step};
use crate::diagnose::{self, Analysis};
use crate::pg::{error_text, PgTools, Session};
use crate::sql::{describe, Verdict};
use crate::storage::Storage;
use crate::watch::{self, TableState};

pub struct Ctx<'a> {
    pub db: &'a DatabaseConfig,
    pub mig: &'a MigrationsConfig,
    pub storage: &'a Arc<dyn Storage>,
    pub tools: PgTools,
    pub migration: &'a str,
}

async fn analysis(session: &Session, ctx: &Ctx<'_>) -> Result<Analysis, StepFailure> {
    let dialect = watch::dialect(ctx.mig);
    let state = watch::read(session, dialect.as_ref()).await.map_err(|e| StepFailure(e.to_string()))?;
    let TableState::Rows { migrations } = state else {
        return Err(StepFailure("the migrations table cannot be read".into()));
    };
    let m = migrations
        .iter()
        .rev()
        .find(|m| m.name == ctx.migration)
        .ok_or_else(|| StepFailure(format!("no migration `{}` in the table", ctx.migration)))?;
    let a = diagnose::analyse(session.client(), ctx.db, ctx.mig, dialect.as_ref(), ctx.storage, m).await;
    a.map_err(|e| StepFailure(e.to_string()))
}

/// `resolve = "from-diagnosis"`: applied when every statement's effect is in the catalog, rolled
/// back when none is; anything else (partly applied, unknown statements) is for finish or undo.
pub async fn decide(session: &Session, ctx: &Ctx<'_>) -> Result<ResolveAs, StepFailure> {
    let a = analysis(session, ctx).await?;
    if let Some(why) = a.blocked() {
        return Err(StepFailure(format!("resolve from diagnosis refused: {why}")));
    }
    let count = |v: Verdict| a.statements.iter().filter(|(_, j)| j.verdict == v).count();
    let (all, applied, not) = (a.statements.len(), count(Verdict::Applied), count(Verdict::NotApplied));
    match (applied, not) {
        (a, _) if a == all && all > 0 => Ok(ResolveAs::Applied),
        (_, n) if n == all && all > 0 => Ok(ResolveAs::RolledBack),
        _ => Err(StepFailure(format!(
            "resolve from diagnosis refused: {applied} of {all} statement(s) applied, {not} not applied, {} unknown; finish or undo it first (see `pgmedic diagnose`)",
            all - applied - not
        ))),
    }
}

/// The SQL the step would run now (for `--dry-run`), or why it would not run.
pub async fn preview(session: &Session, ctx: &Ctx<'_>, undo: bool) -> Result<Vec<String>, String> {
    let a = analysis(session, ctx).await.map_err(|e| e.0)?;
    if undo {
        a.undo().map(|u| u.sql)
    } else {
        a.finish_sql()
    }
}

/// `--dry-run`: the SQL each finish or undo step would run now, in its planned record.
pub async fn preview_steps(session: &Session, ctx: &Ctx<'_>, playbook: &Playbook, rec: &mut RunRecord) {
    for (i, step) in playbook.steps.iter().enumerate() {
        let undo = match step {
            Step::Finish { .. } => false,
            Step::Undo { .. } => true,
            _ => continue,
        };
        let params = &mut rec.steps[i].params;
        match preview(session, ctx, undo).await {
            Ok(sql) => params["sql"] = serde_json::json!(sql),
            Err(why) => params["refused"] = serde_json::json!(why),
        }
    }
}

pub async fn finish(session: &Session, ctx: &Ctx<'_>, timeout: Duration) -> Result<String, StepFailure> {
    let a = analysis(session, ctx).await?;
    let sql =
        a.finish_sql().map_err(|why| StepFailure(format!("finish of `{}` refused: {why}", ctx.migration)))?;
    in_transaction(session, &ctx.mig.schema, &sql, timeout, None).await?;
    Ok(format!("ran {} statement(s) in one transaction:\n{}", sql.len(), listing(&sql)))
}

pub async fn undo(
    session: &Session,
    ctx: &Ctx<'_>,
    allow_data_loss: bool,
    timeout: Duration,
) -> Result<String, StepFailure> {
    let a = analysis(session, ctx).await?;
    let refused =
        |why: String| StepFailure(format!("undo of `{}` refused, nothing changed: {why}", ctx.migration));
    let plan = a.undo().map_err(refused)?;
    let baseline = a.baseline.as_ref().map_err(|why| {
        refused(format!("it needs a snapshot from before the migration to check its result: {why}"))
    })?;
    for t in &plan.drops_tables {
        let sql =
            format!("SELECT CASE WHEN to_regclass($1) IS NULL THEN 0 ELSE (SELECT count(*) FROM {t}) END");
        let rows: i64 = match session.client().query_one(&sql, &[&t.sql()]).await {
            Ok(r) => r.get(0),
            Err(e) => return Err(StepFailure(error_text(&e))),
        };
        if rows > 0 && !allow_data_loss {
            return Err(refused(format!("table {t} holds {rows} row(s) that dropping it would lose; add allow_data_loss = true to the step to drop them anyway")));
        }
    }
    let touched = describe::touched(&a.statements.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>());
    let expected =
        diagnose::scratch_description(ctx.db, &ctx.tools, &baseline.text, &ctx.mig.schema, &touched)
            .await
            .map_err(|e| refused(format!("cannot describe the baseline snapshot {}: {e}", baseline.id)))?;
    in_transaction(session, &ctx.mig.schema, &plan.sql, timeout, Some((&touched, &expected))).await?;
    Ok(format!(
        "ran {} statement(s) in one transaction; the objects the migration touched now match snapshot {}:\n{}",
        plan.sql.len(),
        baseline.id,
        listing(&plan.sql)
    ))
}

fn listing(sql: &[String]) -> String {
    sql.iter().map(|s| format!("{s};\n")).collect()
}

/// The lines that differ, or nothing.
fn compare(expected: &[String], actual: &[String]) -> Result<(), String> {
    let missing: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
    if missing.is_empty() && extra.is_empty() {
        return Ok(());
    }
    let mut out = String::from("after the undo the schema differs from the baseline snapshot's:");
    for l in missing {
        out.push_str(&format!("\n  baseline has:  {l}"));
    }
    for l in extra {
        out.push_str(&format!("\n  now there is:  {l}"));
    }
    Err(out)
}

/// BEGIN; the statements; the check of the touched objects against the expected description
/// (still inside); COMMIT, or ROLLBACK at the first failure.
async fn in_transaction(
    session: &Session,
    schema: &str,
    sql: &[String],
    timeout: Duration,
    check: Option<(&describe::Touched, &[String])>,
) -> Result<(), StepFailure> {
    let c = session.client();
    // The drafted SQL names objects as the migration did: resolve them on the same path.
    let begin = format!(
        "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL search_path = {}",
        timeout.as_millis().max(1),
        crate::sql::names::quote(schema)
    );
    c.batch_execute(&begin).await.map_err(|e| StepFailure(error_text(&e)))?;
    let mut failed = None;
    for (i, stmt) in sql.iter().enumerate() {
        if let Err(e) = c.batch_execute(stmt).await {
            failed = Some(format!("statement {} failed: {} (rolled back)\n{stmt}", i + 1, error_text(&e)));
            break;
        }
    }
    if let (None, Some((touched, expected))) = (&failed, check) {
        let verdict = match describe::describe(c, touched).await {
            Ok(actual) => compare(expected, &actual),
            Err(e) => Err(error_text(&e)),
        };
        failed = verdict.err().map(|e| format!("{e}\n(rolled back)"));
    }
    if let Some(why) = failed {
        let _ = c.batch_execute("ROLLBACK").await;
        return Err(StepFailure(why));
    }
    c.batch_execute("COMMIT").await.map_err(|e| StepFailure(error_text(&e)))
}
