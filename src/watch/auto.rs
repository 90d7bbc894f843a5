//! `tool = "auto"`: the tool recognised by its table's columns in the migrations schema, not by
//! the table's name (golang-migrate and dbmate both use `schema_migrations`; only
//! golang-migrate's has `dirty`). The first table found decides; until one exists, the state is
//! "missing".

use std::sync::OnceLock;

use async_trait::async_trait;

use super::{by_tool, Dialect, Migration, Place, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

/// Each tool's columns (all must be present).
const SIGNATURES: &[(&str, &[&str])] = &[
    (
        "prisma",
        &[
            "id",
            "checksum",
            "finished_at",
            "migration_name",
            "logs",
            "rolled_back_at",
            "started_at",
            "applied_steps_count",
        ],
    ),
    (
        "flyway",
        &[
            "installed_rank",
            "version",
            "description",
            "type",
            "script",
            "checksum",
            "installed_by",
            "installed_on",
            "execution_time",
            "success",
        ],
    ),
    ("sqlx", &["version", "description", "installed_on", "success", "checksum", "execution_time"]),
    ("liquibase", &["id", "author", "filename", "dateexecuted", "orderexecuted", "exectype", "md5sum"]),
    ("knex", &["id", "name", "batch", "migration_time"]),
    ("golang-migrate", &["version", "dirty"]),
];

/// `(tool, table)` of the first migrations table in `schema`, by columns.
pub async fn detect(session: &Session, schema: &str) -> Result<Option<(&'static str, String)>, DbError> {
    let sql = "SELECT c.relname::text, array_agg(a.attname::text) FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') GROUP BY c.relname ORDER BY c.relname";
    let rows = session
        .client()
        .query(sql, &[&schema])
        .await
        .map_err(|e| session.err("look for a migrations table", e))?;
    for (tool, columns) in SIGNATURES {
        for r in &rows {
            let (table, have): (String, Vec<String>) = (r.get(0), r.get(1));
            let exact = *tool != "golang-migrate" || have.len() == columns.len();
            if exact && columns.iter().all(|c| have.iter().any(|h| h == c)) {
                return Ok(Some((tool, table)));
            }
        }
    }
    Ok(None)
}

pub struct Auto {
    at: Place,
    found: OnceLock<Box<dyn Dialect>>,
}

impl Auto {
    pub fn new(at: Place) -> Auto {
        Auto { at, found: OnceLock::new() }
    }

    async fn inner(&self, session: &Session) -> Result<Option<&dyn Dialect>, DbError> {
        if self.found.get().is_none() {
            if let Some((tool, table)) = detect(session, &self.at.schema).await? {
                let _ = self.found.set(by_tool(tool, Place { table, ..self.at.clone() }));
            }
        }
        Ok(self.found.get().map(|d| d.as_ref()))
    }
}

#[async_trait]
impl Dialect for Auto {
    fn tool(&self) -> &'static str {
        self.found.get().map(|d| d.tool()).unwrap_or("auto")
    }

    fn place(&self) -> &Place {
        self.found.get().map(|d| d.place()).unwrap_or(&self.at)
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        match self.inner(session).await? {
            Some(d) => d.read(session).await,
            None => Ok(TableState::Missing),
        }
    }

    async fn raw_rows(&self, session: &Session) -> Result<Vec<serde_json::Value>, DbError> {
        match self.inner(session).await? {
            Some(d) => d.raw_rows(session).await,
            None => Ok(Vec::new()),
        }
    }

    fn advisory_key(&self, database: &str) -> Option<i64> {
        self.found.get().and_then(|d| d.advisory_key(database))
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        self.found.get().is_some_and(|d| d.attempted(rows, m))
    }

    fn file(&self, m: &Migration) -> Option<std::path::PathBuf> {
        self.found.get().and_then(|d| d.file(m))
    }

    fn own_tables(&self) -> Vec<crate::snapshot::ScopedTable> {
        match self.found.get() {
            Some(d) => d.own_tables(),
            None => vec![crate::snapshot::ScopedTable {
                schema: self.at.schema.clone(),
                table: self.at.table.clone(),
            }],
        }
    }

    fn atomic(&self) -> bool {
        self.found.get().is_some_and(|d| d.atomic())
    }

    fn file_changed(&self, m: &Migration, text: &str) -> Option<bool> {
        self.found.get().and_then(|d| d.file_changed(m, text))
    }

    async fn resolve(
        &self,
        s: &Session,
        cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        match self.inner(s).await.map_err(|e| e.to_string())? {
            Some(d) => d.resolve(s, cfg, m, how).await,
            None => Err("no migrations table was found to resolve in".into()),
        }
    }

    async fn release_lock(&self, s: &Session) -> StepResult {
        match self.inner(s).await.map_err(|e| e.to_string())? {
            Some(d) => d.release_lock(s).await,
            None => Err("no migrations table was found".into()),
        }
    }

    async fn accept_checksums(&self, s: &Session, cfg: &MigrationsConfig) -> StepResult {
        match self.inner(s).await.map_err(|e| e.to_string())? {
            Some(d) => d.accept_checksums(s, cfg).await,
            None => Err("no migrations table was found".into()),
        }
    }
}
