//! From a replay to an answer: the stopping point (or the range the evidence allows, or none),
//! the failing statement, and the two drafted repairs, each run first on a fresh copy of the
//! baseline brought to the stopping point. `finish` must leave the copy as the whole migration
//! leaves it; `undo` must give the baseline back. A repair that fails its proof is not offered.

use pg_query::NodeEnum;

use super::lab::Lab;
use super::plan::{self, Check, Plan, RowGuard, RunOpts, Segment};
use super::replay::{apply, Mode, Replay};
use crate::pg::Session;
use crate::sql::names::ObjName;
use crate::sql::parse::Effect;
use crate::sql::{rewrite, Statement};

/// Where the migration stopped, as far as the evidence proves it.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    pub stopped_after: Option<usize>,
    /// Several prefixes equal live and nothing tells them apart: `(first, last)`.
    pub range: Option<(usize, usize)>,
    pub failed_statement: Option<usize>,
    /// The invalid index the failing statement left (table-qualified as the statement named it).
    pub leftover: Option<ObjName>,
    pub notes: Vec<String>,
}

/// `failed`: the tool recorded an error, so the last statement did not complete.
pub fn decide(r: &Replay, stmts: &[Statement], mode: Mode, failed: bool, log_code: Option<&str>) -> Stop {
    let n = stmts.len();
    let mut stop = Stop::default();
    let mut ks: Vec<usize> = r
        .matches
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| mode == Mode::PerStatement || *k == 0 || *k == n)
        .collect();
    if failed && ks.contains(&n) && n > 0 {
        ks.retain(|k| *k < n);
        stop.notes.push("the tool recorded an error, so the last statement did not complete".into());
    }
    // A statement that fails on the copy with the logged SQLSTATE is the one that failed live.
    let reproduced =
        r.copy_error.as_ref().filter(|e| e.sqlstate.is_some() && e.sqlstate.as_deref() == log_code);
    if let Some(e) = reproduced {
        if ks.contains(&(e.statement - 1)) {
            ks = vec![e.statement - 1];
            stop.failed_statement = Some(e.statement);
            stop.notes.push(format!(
                "statement {} fails on the copy too, with the logged SQLSTATE {}",
                e.statement,
                e.sqlstate.as_deref().unwrap_or("")
            ));
        }
    }
    match ks.as_slice() {
        [] => {}
        [k] => stop.stopped_after = Some(*k),
        [first, .., last] => stop.range = Some((*first, *last)),
    }
    if let Some(k) = stop.stopped_after {
        if k < n && stop.failed_statement.is_none() {
            stop.failed_statement = Some(k + 1);
        }
        let leftover = r.matches.iter().find(|(m, _)| *m == k).and_then(|(_, l)| l.clone());
        stop.leftover = leftover.and_then(|_| index_name(stmts.get(k)?));
    }
    stop
}

fn index_name(s: &Statement) -> Option<ObjName> {
    s.effects.iter().find_map(|e| match e {
        Effect::CreateIndex { name: Some(n), .. } => Some(n.clone()),
        _ => None,
    })
}

/// Statements that PostgreSQL refuses inside a transaction block.
fn outside_transaction(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::IndexStmt(s) => s.concurrent,
        NodeEnum::DropStmt(s) => s.concurrent,
        NodeEnum::ReindexStmt(s) => s
            .params
            .iter()
            .any(|p| matches!(&p.node, Some(NodeEnum::DefElem(d)) if d.defname == "concurrently")),
        NodeEnum::VacuumStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_)
        | NodeEnum::AlterSystemStmt(_) => true,
        _ => false,
    }
}

/// The statements after `k`, each in its idempotent form, in segments: transaction-less ones
/// alone, a transaction closed after `ALTER TYPE … ADD VALUE` (the new value cannot be used
/// before it commits), and the invalid index the failed statement left dropped first.
pub fn finish_plan(stmts: &[Statement], k: usize, leftover: Option<&ObjName>) -> Plan {
    let mut plan = Plan::default();
    if let Some(ix) = leftover {
        let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS {ix}");
        plan.segments.push(Segment::Alone { sql, before_retry: None });
    }
    let mut tx: Vec<String> = Vec::new();
    for s in stmts.iter().skip(k) {
        let forms = rewrite::idempotent(s, None);
        if outside_transaction(&s.node) {
            if !tx.is_empty() {
                plan.segments.push(Segment::Tx(std::mem::take(&mut tx)));
            }
            let clear = index_name(s).map(|ix| format!("DROP INDEX CONCURRENTLY IF EXISTS {ix}"));
            for sql in forms {
                plan.segments.push(Segment::Alone { sql, before_retry: clear.clone() });
            }
            continue;
        }
        tx.extend(forms);
        if matches!(s.node, NodeEnum::AlterEnumStmt(_)) {
            plan.segments.push(Segment::Tx(std::mem::take(&mut tx)));
        }
    }
    if !tx.is_empty() {
        plan.segments.push(Segment::Tx(tx));
    }
    plan
}

fn copy_opts(search_path: &str, roll_back: bool) -> RunOpts {
    RunOpts {
        statement_timeout: std::time::Duration::from_secs(600),
        lock_timeout: None,
        lock_retries: 0,
        search_path: search_path.to_string(),
        roll_back,
    }
}

/// The baseline's template brought to prefix `k`, where both proofs run: the undo first, in a
/// transaction rolled back once checked, then the finish.
pub async fn at_prefix(lab: &mut Lab, stmts: &[Statement], mode: Mode, k: usize) -> Result<Session, String> {
    let session = lab.last().await?;
    if k > 0 {
        apply(session.client(), &stmts[..k], mode)
            .await
            .map_err(|e| format!("statement {} fails on the copy: {}", e.statement, e.message))?;
    }
    Ok(session)
}

/// Runs `plan` on `copy` (at prefix `k`) and checks the result against the replay's shape
/// after `want` statements; `roll_back` leaves the copy as it was (one transaction only).
pub struct Proof<'a> {
    pub lab: &'a Lab,
    pub replay: &'a Replay,
    pub k: usize,
    pub want: usize,
    pub roll_back: bool,
}

pub async fn prove(
    p: Proof<'_>,
    copy: &Session,
    plan: &Plan,
    guard: Option<&RowGuard>,
) -> Result<(), String> {
    let r = p.replay;
    let expect = r.shape(p.want).ok_or_else(|| match &r.copy_error {
        Some(e) => format!("statement {} fails on a copy of the baseline too ({}), so there is no expected result to prove it against", e.statement, e.message),
        None => "the replay did not reach the expected state".to_string(),
    })?;
    let what = if p.want == 0 { "the baseline" } else { "the baseline with the whole migration applied" };
    let check = Check { exclude: &p.lab.exclude, expect, what };
    plan::run(copy.client(), plan, &copy_opts(&p.lab.search_path, p.roll_back), guard, Some(check))
        .await
        .map(|_| ())
        .map_err(|e| format!("on a copy of the baseline stopped after statement {}: {e}", p.k))
}
