//! What a failed migration actually did. For one failed or crashed migration: its statements
//! (parsed from `migrations.dir/<name>/migration.sql`) judged one by one against the live
//! catalog, the rows of the tables it created, whether a backend of a crashed migrator still
//! runs, and the newest snapshot from before it, whose schema is compared with today's. From
//! that analysis come the two drafted repairs, `finish` and `undo`, which `diagnose` prints and
//! the playbook steps of the same names compute again at run time.

mod baseline;
mod log;
mod report;

use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::config::{DatabaseConfig, MigrationsConfig};
use crate::sql::{self, rewrite, Judged, ObjName, Statement, Verdict};
use crate::storage::Storage;
use crate::watch::{Dialect, Migration, Status};

pub use baseline::{find_baseline, scratch_description, BaselineSnapshot};
pub use log::{running_backends, sqlstate};
pub use report::{report, Draft, Report};

#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("cannot read the catalog of {database} for migration `{migration}`: {message}")]
    Catalog { database: String, migration: String, message: String },
}

/// Everything judged about one migration.
pub struct Analysis {
    pub database: String,
    pub migration: Migration,
    /// The migration file, or why its statements cannot be judged.
    pub file: Result<PathBuf, String>,
    pub statements: Vec<(Statement, Judged)>,
    /// Live backends still running the migration's statements (a crashed migrator's).
    pub running: Vec<String>,
    pub baseline: Result<BaselineSnapshot, String>,
}

impl Analysis {
    /// The first statement whose effect is absent: a tool that runs statements in order stopped
    /// there, so statements before it ran and those after it did not.
    pub fn first_not_applied(&self) -> Option<usize> {
        self.statements.iter().find(|(_, j)| j.verdict == Verdict::NotApplied).map(|(s, _)| s.index)
    }

    pub fn ran(&self, index: usize) -> bool {
        self.first_not_applied().is_none_or(|f| index < f)
    }

    /// Why no repair may run now, if one may not.
    pub fn blocked(&self) -> Option<String> {
        if !self.running.is_empty() {
            return Some(format!(
                "wait: a backend of the migrator is still running ({}); its statement may still commit",
                self.running.join("; ")
            ));
        }
        self.file.as_ref().err().map(|why| format!("its statements cannot be judged: {why}"))
    }

    /// The statements still to run, each idempotent (`finish`).
    pub fn finish_sql(&self) -> Result<Vec<String>, String> {
        if let Some(why) = self.blocked() {
            return Err(why);
        }
        let mut out = Vec::new();
        for (s, j) in &self.statements {
            let todo = match j.verdict {
                Verdict::Applied => false,
                Verdict::NotApplied => true,
                Verdict::Unknown => !self.ran(s.index),
            };
            if todo {
                out.extend(rewrite::idempotent(s, j));
            }
        }
        Ok(out)
    }

    /// The inverse of what it applied (`undo`), refused when something cannot be undone.
    pub fn undo(&self) -> Result<rewrite::Undo, String> {
        if let Some(why) = self.blocked() {
            return Err(why);
        }
        let baseline = self.baseline.as_ref().ok().map(|b| &b.schema);
        rewrite::undo(&self.statements, baseline, |i| self.ran(i))
    }

    /// Tables the migration created (and the baseline did not have).
    pub fn created_tables(&self) -> Vec<ObjName> {
        let baseline = self.baseline.as_ref().ok().map(|b| &b.schema);
        self.statements
            .iter()
            .flat_map(|(s, j)| s.effects.iter().zip(&j.effects))
            .filter_map(|(e, v)| match e {
                sql::Effect::CreateRelation { kind: sql::parse::RelKind::Table, name, .. }
                    if *v == Verdict::Applied =>
                {
                    Some(name.clone())
                }
                _ => None,
            })
            .filter(|n| !baseline.is_some_and(|b| b.has("TABLE", n)))
            .collect()
    }
}

/// Analyses `migration` of `db` on `client`, a session on that database.
pub async fn analyse(
    client: &Client,
    db: &DatabaseConfig,
    mig: &MigrationsConfig,
    dialect: &dyn Dialect,
    storage: &Arc<dyn Storage>,
    migration: &Migration,
) -> Result<Analysis, DiagnoseError> {
    let fail = |e: tokio_postgres::Error| DiagnoseError::Catalog {
        database: db.name.clone(),
        migration: migration.name.clone(),
        message: crate::pg::error_text(&e),
    };
    let (file, parsed) = read_file(dialect, mig, migration);
    let old = sql::catalog::set_search_path(client, &mig.schema).await.map_err(fail)?;
    let mut statements = Vec::new();
    for s in parsed {
        let judged = sql::catalog::judge(client, &s).await;
        statements.push((s, judged));
    }
    sql::catalog::restore_search_path(client, &old).await.map_err(fail)?;
    let statements = statements
        .into_iter()
        .map(|(s, j)| j.map(|j| (s, j)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let running = still_running(client, dialect, mig, migration).await.map_err(fail)?;
    let baseline = find_baseline(storage, &db.name, migration, dialect).await;
    Ok(Analysis {
        database: db.name.clone(),
        migration: migration.clone(),
        file,
        statements,
        running,
        baseline,
    })
}

/// Live backends still running the statements of a crashed (or in-progress) migration: while
/// one runs, its statement may still commit, and nothing may be judged or repaired.
pub async fn still_running(
    client: &Client,
    dialect: &dyn Dialect,
    mig: &MigrationsConfig,
    migration: &Migration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    if !matches!(migration.status, Status::Crashed | Status::InProgress | Status::Dirty) {
        return Ok(Vec::new());
    }
    let (_, stmts) = read_file(dialect, mig, migration);
    let texts: Vec<&str> = stmts.iter().map(|s| s.sql.as_str()).collect();
    running_backends(client, &texts).await
}

/// The file's path and its statements, or why there are none.
fn read_file(
    dialect: &dyn Dialect,
    mig: &MigrationsConfig,
    m: &Migration,
) -> (Result<PathBuf, String>, Vec<Statement>) {
    if mig.dir.is_none() {
        return (
            Err("databases.migrations.dir is not configured, so the migration's SQL is unknown".into()),
            vec![],
        );
    }
    let Some(path) = dialect.file(m) else {
        let why =
            format!("{} keeps no SQL file for `{}` in databases.migrations.dir", dialect.tool(), m.name);
        return (Err(why), vec![]);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return (Err(format!("cannot read {}: {e}", path.display())), vec![]),
    };
    match sql::parse::parse(&text) {
        Ok(stmts) => (Ok(path), stmts),
        Err(e) => (Err(format!("{}: {e}", path.display())), vec![]),
    }
}
