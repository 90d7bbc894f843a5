//! Prisma's `_prisma_migrations`: failed rows have neither `finished_at` nor `rolled_back_at`;
//! a row without logs is in progress while another session holds advisory lock 72707369 (the
//! lock `prisma migrate` takes), and crashed otherwise.

use async_trait::async_trait;

use super::{Dialect, Migration, Status, TableState};
use crate::pg::{quote_ident, DbError, Session};

/// The advisory lock Prisma holds while it migrates or resolves.
pub const PRISMA_LOCK: i64 = 72707369;

pub struct Prisma {
    pub schema: String,
    pub table: String,
}

impl Prisma {
    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

#[async_trait]
impl Dialect for Prisma {
    fn tool(&self) -> &'static str {
        "prisma"
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
        let migrations = rows
            .iter()
            .map(|r| {
                let (finished, rolled_back, logs, locked) = (
                    r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(4),
                    r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(5),
                    r.get::<_, Option<String>>(7),
                    r.get::<_, bool>(8),
                );
                let status = match (finished, rolled_back, &logs) {
                    (_, Some(_), _) => Status::RolledBack,
                    (Some(_), None, _) => Status::Applied,
                    (None, None, Some(_)) => Status::Failed,
                    (None, None, None) if locked => Status::InProgress,
                    (None, None, None) => Status::Crashed,
                };
                Migration {
                    id: r.get(0),
                    name: r.get(1),
                    checksum: r.get(2),
                    started_at: r.get(3),
                    finished_at: finished,
                    rolled_back_at: rolled_back,
                    applied_steps_count: r.get(6),
                    logs,
                    status,
                }
            })
            .collect();
        Ok(TableState::Rows { migrations })
    }

    async fn raw_rows(&self, session: &Session) -> Result<Vec<serde_json::Value>, DbError> {
        Ok(session
            .table_rows(&self.schema, &self.table, "started_at, migration_name")
            .await?
            .unwrap_or_default())
    }
}
