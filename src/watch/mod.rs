//! Reading a migrations table and classifying each migration. The table's dialect is a trait
//! with one file per tool, so golang-migrate, Flyway, sqlx, Liquibase or knex can be added
//! without touching the watcher or the repair.

mod prisma;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::MigrationsConfig;
use crate::pg::{DbError, Session};

pub use prisma::{Prisma, PRISMA_LOCK};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Applied,
    /// Blocks every deploy (Prisma's P3009) until repaired.
    Failed,
    RolledBack,
    /// No log yet and the tool's lock is held by another session: a deploy is running.
    InProgress,
    /// No log and nobody holds the lock: the deploying process died.
    Crashed,
}

impl Status {
    /// Failed and crashed migrations both need a repair.
    pub fn needs_repair(self) -> bool {
        matches!(self, Status::Failed | Status::Crashed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Migration {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub checksum: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub rolled_back_at: Option<DateTime<Utc>>,
    pub applied_steps_count: i32,
    pub logs: Option<String>,
}

/// What the watcher saw: rows, or a state that is not a crash.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TableState {
    Rows {
        migrations: Vec<Migration>,
    },
    /// The table does not exist (no migration has ever run).
    Missing,
    /// The server is a standby: it cannot be repaired, only its primary.
    Standby,
}

impl TableState {
    pub fn needing_repair(&self) -> Vec<&Migration> {
        match self {
            TableState::Rows { migrations } => {
                migrations.iter().filter(|m| m.status.needs_repair()).collect()
            }
            _ => Vec::new(),
        }
    }
}

#[async_trait]
pub trait Dialect: Send + Sync {
    fn tool(&self) -> &'static str;
    /// One cheap read of the table, classified.
    async fn read(&self, session: &Session) -> Result<TableState, DbError>;
    /// Every row as JSON, for audit records.
    async fn raw_rows(&self, session: &Session) -> Result<Vec<serde_json::Value>, DbError>;
}

/// The dialect of `[databases.migrations]` (validation has already refused unknown tools).
pub fn dialect(cfg: &MigrationsConfig) -> Box<dyn Dialect> {
    debug_assert_eq!(cfg.tool, "prisma", "validation admits only the tools implemented here");
    Box::new(Prisma { schema: cfg.schema.clone(), table: cfg.table.clone() })
}

/// Reads `db`'s table once: standby and missing table are states, not errors.
pub async fn read(session: &Session, dialect: &dyn Dialect) -> Result<TableState, DbError> {
    if session.is_in_recovery().await? {
        return Ok(TableState::Standby);
    }
    dialect.read(session).await
}
