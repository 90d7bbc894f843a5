//! `half_applied`: the migration a tool did not record, whose effects are in the catalog anyway.
//! A non-transactional migration that fails half way (knex `transaction: false`, dbmate
//! `transaction:false`, Sequelize always, …) commits what ran and writes no history row, so the
//! tool's table looks healthy while every next deploy fails "already exists". The first pending
//! migration's own statements, each judged against the live catalog, say whether any took effect
//! (an invalid index one of them left counts). Only positive evidence counts: a statement that
//! only drops something absent proves nothing, so a migration whose every "effect" is an absence
//! is not reported.

use sql::{Effect, Verdict};

use super::{Dialect, Migration, Status};
use crate::pg::{DbError, Session};
use crate::sql;

/// The first pending migration when some of it is in the catalog: `half_applied`, or
/// `in_progress` while a backend still runs one of its statements.
pub async fn detect(
    session: &Session,
    dialect: &dyn Dialect,
    recorded: &[Migration],
) -> Result<Option<Migration>, DbError> {
    // A deploy holding the tool's lock may be half way through on purpose.
    if recorded.iter().any(|m| m.status == Status::InProgress) {
        return Ok(None);
    }
    let Some(first) = dialect.pending(recorded).into_iter().next() else {
        return Ok(None);
    };
    let Some(path) = dialect.file(&first) else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let Ok(stmts) = sql::parse::parse(&dialect.up_sql(&text)) else {
        return Ok(None);
    };
    let c = session.client();
    let err = |e| session.err("judge a pending migration's statements", e);
    let old = sql::catalog::set_search_path(c, dialect.schema()).await.map_err(err)?;
    let mut took = Vec::new();
    let mut judged = Ok(());
    for s in &stmts {
        match sql::catalog::judge(c, s).await {
            Ok(j) if j.verdict == Verdict::Applied && creates(&s.effects) => {
                took.push(format!("statement {} ({})", s.index, j.reason));
            }
            Ok(j) if j.clear_first.is_some() => took.push(format!("statement {} left {}", s.index, j.reason)),
            Ok(_) => {}
            Err(e) => {
                judged = Err(e);
                break;
            }
        }
    }
    sql::catalog::restore_search_path(c, &old).await.map_err(err)?;
    judged.map_err(err)?;
    if took.is_empty() {
        return Ok(None);
    }
    let texts: Vec<&str> = stmts.iter().map(|s| s.sql.as_str()).collect();
    let running = crate::diagnose::running_backends(c, &texts).await.map_err(err)?;
    let file = path.display();
    let (status, logs) = if running.is_empty() {
        let logs = format!(
            "{} does not record `{}`, yet the live catalog shows its effects: {}; every next deploy of {file} fails \"already exists\" until it is undone or finished and resolved",
            dialect.qualified(),
            first.name,
            took.join("; ")
        );
        (Status::HalfApplied, logs)
    } else {
        let logs = format!("a backend still runs `{}` ({file}): {}", first.name, running.join("; "));
        (Status::InProgress, logs)
    };
    Ok(Some(Migration { status, logs: Some(logs), ..first }))
}

/// Whether a statement's effects include something that exists only because it ran.
fn creates(effects: &[Effect]) -> bool {
    effects.iter().any(|e| {
        !matches!(
            e,
            Effect::DropRelation { .. }
                | Effect::DropColumn { .. }
                | Effect::DropConstraint { .. }
                | Effect::DropType { .. }
                | Effect::DropExtension { .. }
                | Effect::DropDefault { .. }
                | Effect::DropNotNull { .. }
                | Effect::Data { .. }
                | Effect::Unknown { .. }
        )
    })
}
