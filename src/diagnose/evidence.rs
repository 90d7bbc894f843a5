//! The evidence behind a diagnosis, gathered once: with a baseline snapshot and the migration's
//! SQL, a replay on pgmedic's scratch server (`proof = "replay"`), its stopping point, and the
//! finish and undo proven on copies; without them, the catalog checks alone (`proof =
//! "catalog"`), which explain but never license a drafted repair.

use serde::Serialize;
use tokio_postgres::Client;

use super::lab::{Env, Lab};
use super::plan::{Plan, RowGuard, Segment};
use super::proof::{self, Stop};
use super::replay::{self, Mode, Replay};
use super::{sqlstate, transient, Analysis};
use crate::config::{DatabaseConfig, MigrationsConfig};
use crate::sql::catalog::{Judged, Verdict};
use crate::sql::shape::{Exclude, Shape};
use crate::sql::{names::ObjName, rewrite, Statement};
use crate::watch::{Dialect, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    Replay,
    Catalog,
    None,
}

/// A drafted undo: its plan and the tables its row guard counts.
#[derive(Debug, Clone)]
pub struct UndoPlan {
    pub plan: Plan,
    pub guard: RowGuard,
}

pub struct Evidence {
    pub proof: Proof,
    /// The scratch server the replay ran on.
    pub server: Option<String>,
    pub stop: Stop,
    /// What the replay showed, in sentences (and why there is none).
    pub explanation: Vec<String>,
    pub finish: Result<Plan, String>,
    pub undo: Result<UndoPlan, String>,
    pub exclude: Exclude,
    /// Shapes a live run checks against: after the whole migration, and the baseline's.
    pub expect_all: Option<Shape>,
    pub expect_base: Option<Shape>,
}

impl Evidence {
    /// Before gathering: nothing known yet.
    pub fn pending(exclude: Exclude) -> Evidence {
        Evidence::without(Proof::None, exclude, "not yet gathered".into())
    }

    fn without(proof: Proof, exclude: Exclude, why: String) -> Evidence {
        let refused = format!("not proven: {why}; a drafted repair runs only after it ran on a copy of the baseline and gave the expected result");
        Evidence {
            proof,
            server: None,
            stop: Stop::default(),
            explanation: vec![why],
            finish: Err(refused.clone()),
            undo: Err(refused),
            exclude,
            expect_all: None,
            expect_base: None,
        }
    }
}

/// How `dialect` ran this migration's file.
pub fn mode(dialect: &dyn Dialect) -> Mode {
    if dialect.atomic() {
        Mode::Atomic
    } else {
        Mode::PerStatement
    }
}

pub async fn gather(
    a: &Analysis,
    client: &Client,
    db: &DatabaseConfig,
    mig: &MigrationsConfig,
    dialect: &dyn Dialect,
    env: Env<'_>,
) -> Evidence {
    let exclude =
        Exclude { schema: dialect.table_schema().to_string(), table_prefix: dialect.table().to_string() };
    if let Some(why) = a.blocked() {
        let mut ev = Evidence::without(Proof::None, exclude, why.clone());
        (ev.finish, ev.undo) = (Err(why.clone()), Err(why));
        return ev;
    }
    let baseline = match &a.baseline {
        Ok(b) => b,
        Err(why) => return Evidence::without(Proof::Catalog, exclude, format!("no replay: {why}")),
    };
    let stmts: Vec<Statement> = a.statements.iter().map(|(s, _)| s.clone()).collect();
    if stmts.iter().any(|s| matches!(s.node, pg_query::NodeEnum::TransactionStmt(_))) {
        let why =
            "no replay: the file controls its own transactions (BEGIN/COMMIT), which pgmedic does not replay"
                .into();
        return Evidence::without(Proof::Catalog, exclude, why);
    }
    let live = match live_shape(client, &mig.schema, &exclude).await {
        Ok(s) => s,
        Err(e) => {
            return Evidence::without(
                Proof::Catalog,
                exclude,
                format!("no replay: cannot read the live catalog: {e}"),
            )
        }
    };
    let mut lab = match Lab::open(env, db, client, &baseline.text, &mig.schema, exclude.clone()).await {
        Ok(l) => l,
        Err(e) => return Evidence::without(Proof::Catalog, exclude, format!("no replay: {e}")),
    };
    // Statements written from a code migration's leftovers ran one at a time as far as anyone
    // knows: the replay looks at every prefix.
    let mode = if a.reconstructed.is_some() { Mode::PerStatement } else { mode(dialect) };
    let ev = with_lab(a, &mut lab, &stmts, mode, &live, dialect).await;
    lab.close().await;
    match ev {
        Ok(ev) => ev,
        Err(e) => Evidence::without(Proof::Catalog, exclude, format!("no replay: {e}")),
    }
}

async fn live_shape(c: &Client, schema: &str, exclude: &Exclude) -> Result<Shape, String> {
    let err = |e: tokio_postgres::Error| crate::pg::error_text(&e);
    let old = crate::sql::catalog::set_search_path(c, schema).await.map_err(err)?;
    let shape = Shape::read(c, exclude).await.map_err(err);
    crate::sql::catalog::restore_search_path(c, &old).await.map_err(err)?;
    shape
}

async fn with_lab(
    a: &Analysis,
    lab: &mut Lab,
    stmts: &[Statement],
    mode: Mode,
    live: &Shape,
    dialect: &dyn Dialect,
) -> Result<Evidence, String> {
    let r = replay::run(lab, stmts, mode, live).await?;
    let code = a.migration.tool_log().and_then(sqlstate).map(|c| c.0);
    let failed = a.migration.status == Status::Failed;
    let stop = proof::decide(&r, stmts, mode, failed, code.as_deref());
    let mut ev = Evidence {
        proof: Proof::Replay,
        server: Some(lab.server_label().to_string()),
        explanation: explain(&r, &stop, stmts.len(), mode),
        finish: Err(String::new()),
        undo: Err(String::new()),
        exclude: lab.exclude.clone(),
        expect_all: r.shape(stmts.len()).cloned(),
        expect_base: r.shape(0).cloned(),
        stop,
    };
    let Some(k) = ev.stop.stopped_after else {
        let why = match ev.stop.range {
            Some((lo, hi)) => format!("the replay cannot tell where it stopped: after statement {lo} and after statement {hi} (and any between) give the live schema, and the statements between have no visible effect"),
            None => "no prefix of the migration replayed on the baseline gives the live schema".to_string(),
        };
        ev.finish = Err(why.clone());
        ev.undo = Err(why);
        return Ok(ev);
    };
    let at_k = match proof::at_prefix(lab, stmts, mode, k).await {
        Ok(s) => s,
        Err(e) => {
            (ev.finish, ev.undo) = (Err(e.clone()), Err(e));
            return Ok(ev);
        }
    };
    let proof = |want, roll_back| proof::Proof { lab, replay: &r, k, want, roll_back };
    ev.undo = undo(a, proof(0, true), &at_k, stmts, k, ev.stop.leftover.as_ref()).await;
    ev.finish = match &a.reconstructed {
        Some(_) => Err("the migration is code: pgmedic wrote statements only for what it left, not for what it would have run after it stopped; undo it, fix the migration, and let the tool run it again".into()),
        None => finish(a, proof(stmts.len(), false), &at_k, &ev.stop, stmts, code.as_deref(), dialect).await,
    };
    Ok(ev)
}

fn explain(r: &Replay, stop: &Stop, n: usize, mode: Mode) -> Vec<String> {
    let mut out = Vec::new();
    let ks: Vec<String> = r.matches.iter().map(|(k, _)| k.to_string()).collect();
    if mode == Mode::Atomic {
        out.push("the tool runs the file in one transaction: it stopped at none or all of it".into());
    }
    if ks.is_empty() {
        out.push(format!("no prefix of the {n} statement(s) replayed on the baseline gives the live schema"));
        if let Some((k, lines)) = &r.closest {
            out.push(format!("closest: after statement {k}, and live still differs: {}", lines.join("; ")));
        }
    } else {
        out.push(format!(
            "the live schema equals the baseline with the first {} statement(s) applied",
            ks.join(" or ")
        ));
    }
    if let Some(e) = &r.copy_error {
        out.push(format!("statement {} fails on a copy of the baseline too: {}", e.statement, e.message));
    }
    out.extend(stop.notes.iter().cloned());
    out
}

async fn finish(
    a: &Analysis,
    p: proof::Proof<'_>,
    at_k: &crate::pg::Session,
    stop: &Stop,
    stmts: &[Statement],
    code: Option<&str>,
    dialect: &dyn Dialect,
) -> Result<Plan, String> {
    if let (Some(code), Some(f)) = (code, stop.failed_statement) {
        let changed = a.file_text.as_deref().and_then(|t| dialect.file_changed(&a.migration, t));
        if !transient(code) && changed != Some(true) {
            return Err(format!("statement {f} failed with SQLSTATE {code}, which is not transient (a lock or statement timeout, a deadlock, a lost connection): run again it fails the same way; fix the migration file (a finish is then drafted from the edited file) or undo it"));
        }
    }
    let plan = proof::finish_plan(stmts, p.k, stop.leftover.as_ref());
    proof::prove(p, at_k, &plan, None).await?;
    Ok(plan)
}

async fn undo(
    a: &Analysis,
    p: proof::Proof<'_>,
    at_k: &crate::pg::Session,
    stmts: &[Statement],
    k: usize,
    leftover: Option<&ObjName>,
) -> Result<UndoPlan, String> {
    let baseline = a.baseline.as_ref().map_err(Clone::clone)?;
    let judged: Vec<(Statement, Judged)> = stmts
        .iter()
        .map(|s| {
            let v = if s.index <= k { Verdict::Applied } else { Verdict::NotApplied };
            (
                s.clone(),
                Judged {
                    verdict: v,
                    reason: String::new(),
                    clear_first: None,
                    effects: vec![v; s.effects.len()],
                },
            )
        })
        .collect();
    let u = rewrite::undo(&judged, Some(&baseline.schema), |i| i <= k)?;
    // Proven in one transaction rolled back: the copy stays at k for the finish's proof.
    let tx = Plan { segments: vec![Segment::Tx(u.sql)] };
    let tables: Vec<ObjName> = u.drops_tables.iter().map(|t| qualify(t, &p.lab.search_path)).collect();
    let guard = RowGuard { tables, allow_data_loss: true };
    proof::prove(p, at_k, &tx, Some(&guard)).await?;
    let mut plan = tx;
    if let Some(ix) = leftover {
        plan.segments.insert(
            0,
            Segment::Alone { sql: format!("DROP INDEX CONCURRENTLY IF EXISTS {ix}"), before_retry: None },
        );
    }
    Ok(UndoPlan { plan, guard: RowGuard { allow_data_loss: false, ..guard } })
}

/// An unqualified name as the migration resolved it: in the migrations' schema.
pub fn qualify(t: &ObjName, schema: &str) -> ObjName {
    ObjName { schema: Some(t.schema.clone().unwrap_or_else(|| schema.to_string())), name: t.name.clone() }
}
