//! Sequelize (sequelize-cli): `"SequelizeMeta" (name varchar(255) PRIMARY KEY)`, one row per
//! applied migration, its file name with the extension, inserted after the migration's `up`
//! resolved. Its migrations are the JavaScript (or TypeScript) files in `dir`, run in file-name
//! order, and **no transaction** wraps them: every statement autocommits, so any migration that
//! fails after its first statement is half applied with no row, and the next `db:migrate` fails
//! "already exists" for ever (its `createTable` is `IF NOT EXISTS`, so a leftover table passes
//! and a leftover column blocks). That is `half_applied`, found from the schema (see
//! `diagnose::leftovers`). No lock, no "mark applied" command: resolve applied writes the row its
//! success writes.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

pub struct Sequelize(pub Place);

/// sequelize-cli's migration files: `.js`, `.cjs`, `.ts`, `.cts`, not `.d.ts`.
fn is_migration(name: &str) -> bool {
    !name.ends_with(".d.ts") && [".js", ".cjs", ".ts", ".cts"].iter().any(|x| name.ends_with(x))
}

impl Sequelize {
    fn files(&self) -> Vec<(String, PathBuf)> {
        self.0.scan(|n, p| (is_migration(&n) && p.is_file()).then_some((n, p)))
    }
}

#[async_trait]
impl Dialect for Sequelize {
    fn tool(&self) -> &'static str {
        "sequelize"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        None
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!("SELECT name::text FROM {} ORDER BY name", self.qualified());
        let rows = session.query(&sql, "read SequelizeMeta").await?;
        let t = self.qualified();
        let migrations = rows
            .iter()
            .map(|r| Ok(Migration::bare(super::cell::<String>(session, &t, r, 0)?, Status::Applied, None)))
            .collect::<Result<_, DbError>>()?;
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| r.get("name").and_then(|v| v.as_str()) == Some(m.name.as_str()))
    }

    fn code_file(&self, m: &Migration) -> Option<PathBuf> {
        self.files().into_iter().find(|(n, _)| *n == m.name).map(|(_, p)| p)
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        let files = self.files().into_iter().filter(|(n, _)| !recorded.iter().any(|m| m.name == *n));
        files.map(|(n, _)| Migration::bare(n, Status::Applied, None)).collect()
    }

    /// applied: `INSERT INTO "SequelizeMeta" (name) VALUES ('<file>')`, as its success; rolled
    /// back: nothing to write once no row exists.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let row = super::row::Row {
            tool: "sequelize",
            label: &m.name,
            find: "name = $1",
            find_params: vec![&m.name],
            insert: Ok((format!("INSERT INTO {t} (name) VALUES ($1)"), vec![&m.name])),
            done: format!("recorded {} as sequelize-cli's own success does", m.name),
            again: "its next db:migrate",
            undo_hint: " (run `sequelize-cli db:migrate:undo`, or fix the table by hand)",
            table: t,
        };
        super::row::resolve(s, row, how).await
    }
}
