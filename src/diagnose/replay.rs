//! Where a failed migration stopped, proven: its statements applied to a copy of the baseline
//! one at a time (or all at once, for a tool that runs a file in one transaction), the shape of
//! the copy read after each, and compared with the live shape. The stopping point is the prefix
//! whose result equals live; a failed `CREATE INDEX CONCURRENTLY` right after it may have left
//! its index behind, invalid. No prefix equal to live is an answer too: the evidence cannot say
//! what ran, and nothing is drafted.

use tokio_postgres::Client;

use super::lab::Lab;
use crate::pg;
use crate::sql::parse::Effect;
use crate::sql::shape::{describe_differences, Shape};
use crate::sql::Statement;

/// How the tool ran the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each statement commits on its own (Prisma, Flyway's non-transactional migrations).
    PerStatement,
    /// The whole file in one transaction (golang-migrate's default, sqlx): none or all.
    Atomic,
}

/// A statement that failed on the copy too.
#[derive(Debug, Clone)]
pub struct CopyError {
    pub statement: usize,
    pub sqlstate: Option<String>,
    pub message: String,
}

/// What the replay saw.
#[derive(Debug, Clone)]
pub struct Replay {
    /// `(k, shape after k statements)` for each prefix the replay reached.
    pub shapes: Vec<(usize, Shape)>,
    /// Prefixes equal to live, each with the invalid index the next statement left, if any.
    pub matches: Vec<(usize, Option<String>)>,
    pub copy_error: Option<CopyError>,
    /// When nothing matched: how live differs from the closest prefix.
    pub closest: Option<(usize, Vec<String>)>,
}

/// The invalid index statement `next` leaves when it fails: a named CONCURRENTLY build.
fn leftover_of(next: Option<&Statement>, live: &Shape) -> Option<String> {
    let name = next?.effects.iter().find_map(|e| match e {
        Effect::CreateIndex { name: Some(n), concurrent: true, .. } => Some(n.name.clone()),
        _ => None,
    })?;
    live.invalid_indexes().into_iter().any(|(_, i)| i == name).then_some(name)
}

/// Live equals the shape after `k` statements (allowing the next one's invalid leftover)?
fn compare(k: usize, at_k: &Shape, live: &Shape, stmts: &[Statement]) -> Result<Option<String>, usize> {
    let leftover = leftover_of(stmts.get(k), live);
    let live = match &leftover {
        Some(i) => live.without_invalid_index(i),
        None => live.clone(),
    };
    let d = at_k.differences(&live).len();
    if d == 0 {
        Ok(leftover)
    } else {
        Err(d)
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// Applies `stmts` on `c` the way `mode` runs them; `Err` names the failing one.
pub async fn apply(c: &Client, stmts: &[Statement], mode: Mode) -> Result<(), CopyError> {
    let fail = |s: &Statement, e: tokio_postgres::Error| CopyError {
        statement: s.index,
        sqlstate: sqlstate(&e),
        message: pg::error_text(&e),
    };
    let atomic = mode == Mode::Atomic && stmts.len() > 1;
    if atomic {
        c.batch_execute("BEGIN").await.map_err(|e| fail(&stmts[0], e))?;
    }
    for s in stmts {
        if let Err(e) = c.batch_execute(&s.sql).await {
            if atomic {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            return Err(fail(s, e));
        }
    }
    if atomic {
        c.batch_execute("COMMIT").await.map_err(|e| fail(stmts.last().unwrap_or(&stmts[0]), e))?;
    }
    Ok(())
}

async fn read(c: &Client, lab: &Lab, scope: Option<&[String]>) -> Result<Shape, String> {
    Shape::read_in(c, &lab.exclude, scope).await.map_err(|e| pg::error_text(&e))
}

impl Replay {
    /// The shape after `k` statements, when the replay reached it.
    pub fn shape(&self, k: usize) -> Option<&Shape> {
        self.shapes.iter().find(|(at, _)| *at == k).map(|(_, s)| s)
    }
}

/// Raw keys (`schema \x1f name`) of what the statements name, unqualified names in `schema`.
fn touched_keys(stmts: &[Statement], schema: &str) -> Vec<String> {
    let t = crate::sql::describe::touched(stmts);
    let key = |n: &crate::sql::ObjName| format!("{}\u{1f}{}", n.schema.as_deref().unwrap_or(schema), n.name);
    let mut out: Vec<String> = t.relations.iter().chain(&t.types).map(key).collect();
    out.extend(t.extensions.iter().map(|e| format!("\u{1f}{e}")));
    out.extend(t.schemas.iter().map(|s| format!("{s}\u{1f}")));
    out
}

/// Replays `stmts` on a copy of the baseline and compares each reachable prefix with `live`.
/// After each statement only the objects in which the baseline and live differ, or that the
/// migration names, are read (a difference there is a difference in the whole shape); the whole
/// shape is read where those agree, and at both ends, and only whole shapes decide.
pub async fn run(lab: &mut Lab, stmts: &[Statement], mode: Mode, live: &Shape) -> Result<Replay, String> {
    let copy = lab.copy().await?;
    let c = copy.client();
    let base = read(c, lab, None).await?;
    let mut scope = base.differing_keys(live);
    scope.extend(touched_keys(stmts, &lab.search_path));
    scope.sort();
    scope.dedup();
    let live_in_scope = live.restricted(&scope);
    let mut r = Replay { shapes: vec![(0, base)], matches: Vec::new(), copy_error: None, closest: None };
    let steps: Vec<(usize, usize)> = match mode {
        Mode::PerStatement => (0..stmts.len()).map(|i| (i, i + 1)).collect(),
        Mode::Atomic => vec![(0, stmts.len())],
    };
    let mut nearest: Option<(usize, usize, Shape)> = None;
    for (from, to) in steps {
        if let Err(e) = apply(c, &stmts[from..to], mode).await {
            r.copy_error = Some(e);
            break;
        }
        let scoped = read(c, lab, Some(&scope)).await?;
        match compare(to, &scoped, &live_in_scope, stmts) {
            Err(d) if to < stmts.len() => {
                if nearest.as_ref().is_none_or(|(_, b, _)| d < *b) {
                    nearest = Some((to, d, scoped));
                }
            }
            _ => r.shapes.push((to, read(c, lab, None).await?)),
        }
    }
    for (k, shape) in &r.shapes {
        match compare(*k, shape, live, stmts) {
            Ok(leftover) => r.matches.push((*k, leftover)),
            Err(d) if nearest.as_ref().is_none_or(|(_, b, _)| d < *b) => {
                nearest = Some((*k, d, shape.clone()))
            }
            Err(_) => {}
        }
    }
    if let (true, Some((k, _, shape))) = (r.matches.is_empty(), nearest) {
        let diff = shape.restricted(&scope).differences(&live_in_scope);
        let diff = if diff.is_empty() { shape.differences(live) } else { diff };
        r.closest = Some((k, describe_differences(&diff, "the copy", "live")));
    }
    Ok(r)
}
