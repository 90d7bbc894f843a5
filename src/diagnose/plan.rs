//! A drafted repair as it runs: segments in order, each either one transaction or one
//! statement that cannot run inside a transaction (`CREATE INDEX CONCURRENTLY` and friends),
//! and the one runner that executes them, on a copy of the baseline to prove them and on the
//! live database after that. On the live database every statement gives up waiting for a lock
//! after `lock_timeout` and is retried with backoff, so a repair queued behind a long query
//! never holds up that table's readers; a row guard runs inside the transaction after `LOCK
//! TABLE`; the result is checked against the expected shape before the last commit.

use std::time::Duration;

use tokio_postgres::Client;

use crate::pg::error_text;
use crate::sql::names::{quote, ObjName};
use crate::sql::shape::{describe_differences, Exclude, Shape};

#[derive(Debug, Clone)]
pub enum Segment {
    /// Statements in one transaction.
    Tx(Vec<String>),
    /// One statement on its own; `before_retry` clears what a failed attempt left.
    Alone { sql: String, before_retry: Option<String> },
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub segments: Vec<Segment>,
}

impl Plan {
    pub fn statements(&self) -> Vec<String> {
        self.segments
            .iter()
            .flat_map(|s| match s {
                Segment::Tx(v) => v.clone(),
                Segment::Alone { sql, .. } => vec![sql.clone()],
            })
            .collect()
    }

    /// The SQL as a script, transactions marked.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Tx(v) if v.is_empty() => {}
                Segment::Tx(v) => {
                    out.push_str("BEGIN;\n");
                    v.iter().for_each(|x| out.push_str(&format!("{x};\n")));
                    out.push_str("COMMIT;\n");
                }
                Segment::Alone { sql, .. } => out.push_str(&format!("-- outside a transaction:\n{sql};\n")),
            }
        }
        if out.is_empty() {
            out.push_str("-- nothing left to run\n");
        }
        out
    }
}

/// How the runner runs.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub statement_timeout: Duration,
    /// None on a scratch copy (nothing else waits there).
    pub lock_timeout: Option<Duration>,
    pub lock_retries: u32,
    pub search_path: String,
    /// A proof that must leave its copy as it was: the transaction is rolled back once checked.
    pub roll_back: bool,
}

/// Undo's refusal to lose rows: the tables it drops, each counted after `LOCK TABLE`.
#[derive(Debug, Clone)]
pub struct RowGuard {
    pub tables: Vec<ObjName>,
    pub allow_data_loss: bool,
}

/// What the result must look like, checked before the last commit.
pub struct Check<'a> {
    pub exclude: &'a Exclude,
    pub expect: &'a Shape,
    pub what: &'a str,
}

const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The wait before retry `attempt` of a statement that gave up on a lock: 0.5 s, 1 s, … 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((250u64 << attempt.min(5)).min(5_000))
}

fn settings(o: &RunOpts, local: bool) -> String {
    let set = |k: &str, v: String| {
        if local {
            format!("SET LOCAL {k} = {v}; ")
        } else {
            format!("SET {k} = {v}; ")
        }
    };
    let mut s = set("statement_timeout", o.statement_timeout.as_millis().max(1).to_string());
    s += &set("lock_timeout", o.lock_timeout.map(|t| t.as_millis().max(1)).unwrap_or(0).to_string());
    s += &set("search_path", quote(&o.search_path));
    s
}

/// Runs the plan; `Ok(log)` says what was retried, `Err(why)` what failed (a failed
/// transaction rolled back; segments before it stay done).
pub async fn run(
    c: &Client,
    plan: &Plan,
    o: &RunOpts,
    guard: Option<&RowGuard>,
    check: Option<Check<'_>>,
) -> Result<Vec<String>, String> {
    let mut log = Vec::new();
    let last = plan.segments.len().saturating_sub(1);
    let first_tx = plan.segments.iter().position(|s| matches!(s, Segment::Tx(_)));
    for (i, seg) in plan.segments.iter().enumerate() {
        let check_here = if i == last && matches!(seg, Segment::Tx(_)) { check.as_ref() } else { None };
        let mut attempt = 0;
        loop {
            let result = match seg {
                Segment::Tx(stmts) => {
                    tx(c, stmts, o, guard.filter(|_| Some(i) == first_tx), check_here).await
                }
                Segment::Alone { .. } if o.roll_back => {
                    Err((None, "a statement outside a transaction cannot be rolled back".into()))
                }
                Segment::Alone { sql, .. } => alone(c, sql, o).await,
            };
            match result {
                Ok(()) => break,
                Err((Some(code), why)) if code == LOCK_NOT_AVAILABLE && attempt < o.lock_retries => {
                    attempt += 1;
                    log.push(format!(
                        "segment {} gave up waiting for a lock ({why}); retry {attempt} of {}",
                        i + 1,
                        o.lock_retries
                    ));
                    tokio::time::sleep(backoff(attempt)).await;
                    if let Segment::Alone { before_retry: Some(clear), .. } = seg {
                        alone(c, clear, o).await.map_err(|(_, e)| e)?;
                    }
                }
                Err((_, why)) => return Err(why),
            }
        }
    }
    if let (Some(ch), Some(Segment::Alone { .. }) | None) = (check.as_ref(), plan.segments.last()) {
        verify(c, ch).await?;
    }
    Ok(log)
}

type Failure = (Option<String>, String);

fn failure(e: &tokio_postgres::Error, what: String) -> Failure {
    (e.code().map(|c| c.code().to_string()), format!("{what}: {}", error_text(e)))
}

async fn alone(c: &Client, sql: &str, o: &RunOpts) -> Result<(), Failure> {
    c.batch_execute(&settings(o, false))
        .await
        .map_err(|e| failure(&e, "cannot set the session up".into()))?;
    c.batch_execute(sql).await.map_err(|e| failure(&e, format!("{sql} failed")))
}

async fn tx(
    c: &Client,
    stmts: &[String],
    o: &RunOpts,
    guard: Option<&RowGuard>,
    check: Option<&Check<'_>>,
) -> Result<(), Failure> {
    c.batch_execute(&format!("BEGIN; {}", settings(o, true)))
        .await
        .map_err(|e| failure(&e, "cannot begin".into()))?;
    let r = tx_body(c, stmts, guard, check).await;
    let end = if o.roll_back { "ROLLBACK" } else { "COMMIT" };
    match r {
        Ok(()) => c.batch_execute(end).await.map_err(|e| failure(&e, format!("{end} failed"))),
        Err(f) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err((f.0, format!("{} (rolled back)", f.1)))
        }
    }
}

async fn tx_body(
    c: &Client,
    stmts: &[String],
    guard: Option<&RowGuard>,
    check: Option<&Check<'_>>,
) -> Result<(), Failure> {
    if let Some(g) = guard {
        rows_guard(c, g).await?;
    }
    for (i, s) in stmts.iter().enumerate() {
        c.batch_execute(s).await.map_err(|e| failure(&e, format!("statement {} failed\n{s}", i + 1)))?;
    }
    if let Some(ch) = check {
        verify(c, ch).await.map_err(|e| (None, e))?;
    }
    Ok(())
}

/// Locks each table the undo drops, then counts its rows: nothing can be inserted between the
/// count and the DROP.
async fn rows_guard(c: &Client, g: &RowGuard) -> Result<(), Failure> {
    for t in &g.tables {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t.sql()])
            .await
            .map_err(|e| failure(&e, format!("cannot look up {t}")))?
            .get(0);
        if !exists {
            continue;
        }
        c.batch_execute(&format!("LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE"))
            .await
            .map_err(|e| failure(&e, format!("cannot lock {t}")))?;
        let rows: i64 = c
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .map_err(|e| failure(&e, format!("cannot count the rows of {t}")))?
            .get(0);
        if rows > 0 && !g.allow_data_loss {
            return Err((None, format!("table {t} holds {rows} row(s) that dropping it would lose; add allow_data_loss = true to the step to drop them anyway")));
        }
    }
    Ok(())
}

async fn verify(c: &Client, ch: &Check<'_>) -> Result<(), String> {
    let now = Shape::read(c, ch.exclude).await.map_err(|e| error_text(&e))?;
    let diff = now.differences(ch.expect);
    if diff.is_empty() {
        return Ok(());
    }
    let lines = describe_differences(&diff, "now", ch.what);
    Err(format!("the result differs from {}:\n  {}", ch.what, lines.join("\n  ")))
}
