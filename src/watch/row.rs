//! `resolve` for the tools whose success writes one row of their table and that keep no
//! rolled-back state (knex, dbmate, node-pg-migrate, drizzle, Sequelize, TypeORM, Django, Rails):
//! applied writes that row unless it is there; rolled back writes nothing, and is true only
//! while no row records the migration (the tool then runs it again); from-diagnosis is decided
//! before any table is written.

use tokio_postgres::types::ToSql;

use super::StepResult;
use crate::config::ResolveAs;
use crate::pg::{error_text, Session};

pub type Param<'a> = &'a (dyn ToSql + Sync);

/// The migration's row in the tool's table, and what the tool's success writes.
pub struct Row<'a> {
    pub tool: &'a str,
    /// The tool's table, qualified.
    pub table: String,
    /// The migration as the messages name it.
    pub label: &'a str,
    /// `WHERE` condition (with `$n`) that finds its row, and its parameters.
    pub find: &'a str,
    pub find_params: Vec<Param<'a>>,
    /// The INSERT the tool's success runs, and its parameters; or why it cannot be written.
    pub insert: Result<(String, Vec<Param<'a>>), String>,
    /// What the success record says it did.
    pub done: String,
    /// When the tool runs it again (`its next migrate:latest`).
    pub again: &'a str,
    /// How to undo it instead (` (run `knex migrate:down`, …)`).
    pub undo_hint: &'a str,
}

pub async fn resolve(s: &Session, r: Row<'_>, how: ResolveAs) -> StepResult {
    let (t, label, tool) = (&r.table, r.label, r.tool);
    let c = s.client();
    let find = format!("SELECT 1 FROM {t} WHERE {}", r.find);
    let held = !c.query(&find, &r.find_params).await.map_err(|e| error_text(&e))?.is_empty();
    match how {
        ResolveAs::Applied if held => Ok(format!("{t} already records {label}")),
        ResolveAs::Applied => {
            let (sql, params) = r.insert?;
            c.execute(&sql, &params).await.map_err(|e| error_text(&e))?;
            Ok(r.done)
        }
        ResolveAs::RolledBack if !held => {
            Ok(format!("{t} holds no row for {label}: {tool} runs it again on {}", r.again))
        }
        ResolveAs::RolledBack => Err(format!(
            "{t} records {label} as applied; {tool} has no rolled-back state to write{}",
            r.undo_hint
        )),
        ResolveAs::FromDiagnosis => {
            Err("from-diagnosis is decided before the tool's table is written".into())
        }
    }
}
