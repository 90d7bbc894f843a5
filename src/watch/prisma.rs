//! Prisma's `_prisma_migrations`: failed rows have neither `finished_at` nor `rolled_back_at`;
//! a row without logs is in progress while another session holds advisory lock 72707369 (the
//! lock `prisma migrate` takes), and crashed otherwise; an applied row whose file's SHA-256 is
//! not its checksum has drifted. `resolve` is `prisma migrate resolve` (see `prisma_resolve`).

use std::path::PathBuf;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

/// The advisory lock Prisma holds while it migrates or resolves.
pub const PRISMA_LOCK: i64 = 72707369;

pub struct Prisma(pub Place);

type Timestamp = Option<chrono::DateTime<chrono::Utc>>;

/// One row, classified. Data from the database never panics: a NULL where Prisma's schema has
/// NOT NULL is read as empty, a column of another type is an error.
fn row(r: &tokio_postgres::Row) -> Result<Migration, tokio_postgres::Error> {
    let (finished, rolled_back): (Timestamp, Timestamp) = (r.try_get(4)?, r.try_get(5)?);
    let logs: Option<String> = r.try_get(7)?;
    let locked: Option<bool> = r.try_get(8)?;
    let status = match (finished, rolled_back, &logs) {
        (_, Some(_), _) => Status::RolledBack,
        (Some(_), None, _) => Status::Applied,
        (None, None, Some(_)) => Status::Failed,
        (None, None, None) if locked == Some(true) => Status::InProgress,
        (None, None, None) => Status::Crashed,
    };
    Ok(Migration {
        id: r.try_get::<_, Option<String>>(0)?.unwrap_or_default(),
        name: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
        checksum: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        started_at: r.try_get(3)?,
        finished_at: finished,
        rolled_back_at: rolled_back,
        applied_steps_count: r.try_get::<_, Option<i32>>(6)?.unwrap_or_default(),
        logs,
        status,
    })
}

impl Prisma {
    /// Applied rows whose file no longer hashes to their checksum.
    fn drift(&self, m: &mut Migration) {
        if m.status != Status::Applied {
            return;
        }
        if let Some(bytes) = self.file(m).and_then(|p| std::fs::read(p).ok()) {
            let sum = hex::encode(Sha256::digest(&bytes));
            if sum != m.checksum {
                m.status = Status::Drifted;
                m.logs = Some(format!("migration.sql hashes to {sum}, the table records {}", m.checksum));
            }
        }
    }
}

#[async_trait]
impl Dialect for Prisma {
    fn tool(&self) -> &'static str {
        "prisma"
    }

    /// The row's checksum is the SHA-256 of migration.sql as it was deployed.
    fn file_changed(&self, m: &Migration, text: &str) -> Option<bool> {
        (!m.checksum.is_empty()).then(|| hex::encode(Sha256::digest(text.as_bytes())) != m.checksum)
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        Some(PRISMA_LOCK)
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| {
            r.get("migration_name").and_then(|v| v.as_str()) == Some(m.name.as_str())
                && r.get("rolled_back_at").is_none_or(|v| v.is_null())
        })
    }

    fn file(&self, m: &Migration) -> Option<PathBuf> {
        let dir = self.0.dir.as_ref()?;
        (!m.name.contains('/') && !m.name.contains("..")).then(|| dir.join(&m.name).join("migration.sql"))
    }

    async fn resolve(
        &self,
        s: &Session,
        cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        super::prisma_resolve::run(s, cfg, &m.name, how).await
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        // One query: the rows, and whether another session holds Prisma's lock.
        let sql = format!(
            "SELECT id, migration_name, checksum, started_at, finished_at, rolled_back_at, applied_steps_count, logs, \
                    EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = {PRISMA_LOCK} \
                            AND objsubid = 1 AND granted AND pid <> pg_backend_pid() \
                            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) \
             FROM {} ORDER BY started_at, migration_name",
            self.qualified()
        );
        let rows = session.query(&sql, "read the migrations table").await?;
        let bad = |e: tokio_postgres::Error| DbError::Query {
            target: session.target().to_string(),
            what: "read the migrations table",
            message: format!("{} has a column pgmedic cannot read as Prisma's: {e}", self.qualified()),
        };
        let mut migrations: Vec<Migration> =
            rows.iter().map(|r| row(r).map_err(bad)).collect::<Result<_, _>>()?;
        migrations.iter_mut().for_each(|m| self.drift(m));
        Ok(TableState::Rows { migrations })
    }

    async fn raw_rows(&self, session: &Session) -> Result<Vec<serde_json::Value>, DbError> {
        Ok(session
            .table_rows(self.schema(), self.table(), "started_at, migration_name")
            .await?
            .unwrap_or_default())
    }
}
