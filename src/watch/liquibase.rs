//! Liquibase: `databasechangelog` lists the changesets that ran (`filename::id::author`);
//! `databasechangeloglock (id, locked, lockgranted, lockedby)` is its lock, which a killed
//! `update` leaves taken forever. Taken, with a live session that connected before the lock was
//! granted from the JDBC driver or the host `lockedby` names, it is in progress; otherwise
//! `locked`. Release is `release-locks`' UPDATE; accepting checksums is `clear-checksums`
//! (`md5sum = NULL`, rewritten by the next update). pgmedic cannot compute Liquibase's own
//! checksums, so it does not report drift for Liquibase: `update` does.

use async_trait::async_trait;

use super::{live, Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::MigrationsConfig;
use crate::pg::{error_text, quote_ident, DbError, Session};
use crate::sql::names::literal;

pub struct Liquibase(pub Place);

impl Liquibase {
    fn lock_table(&self) -> String {
        format!("{}.{}", quote_ident(self.schema()), quote_ident(&format!("{}lock", self.table())))
    }

    /// Sessions that may hold the lock: connected before it was granted, from the JDBC driver
    /// (Liquibase's default application name) or from the address `lockedby` names.
    async fn live(
        &self,
        s: &Session,
        granted: Option<&str>,
        locked_by: &str,
    ) -> Result<Vec<String>, DbError> {
        let addr = locked_by.split('(').nth(1).and_then(|r| r.split(')').next()).unwrap_or("");
        let since = granted
            .map(|g| format!("a.backend_start <= {}::timestamptz + interval '1 second'", literal(g)))
            .unwrap_or_else(|| "true".into());
        let who = format!("a.application_name ILIKE '%jdbc%' OR a.application_name ILIKE '%liquibase%' OR host(a.client_addr) = {}", literal(addr));
        live::sessions(s, &format!("({since}) AND ({who})")).await
    }

    async fn lock_rows(&self, s: &Session) -> Result<Vec<serde_json::Value>, String> {
        live::rows(s, &self.lock_table()).await
    }

    /// `(granted, lockedby)` when the lock row is taken.
    async fn taken(&self, s: &Session) -> Result<Option<(Option<String>, String)>, DbError> {
        if !s.relation_exists(&self.lock_table()).await? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT lockgranted::text, coalesce(lockedby, '') FROM {} WHERE id = 1 AND locked",
            self.lock_table()
        );
        let rows = s.query(&sql, "read databasechangeloglock").await?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

#[async_trait]
impl Dialect for Liquibase {
    fn tool(&self) -> &'static str {
        "liquibase"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn own_tables(&self) -> Vec<crate::snapshot::ScopedTable> {
        let t = |table: String| crate::snapshot::ScopedTable { schema: self.schema().into(), table };
        vec![t(self.table().into()), t(format!("{}lock", self.table()))]
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        None
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!("SELECT filename || '::' || id || '::' || author, dateexecuted, coalesce(md5sum, '') FROM {} ORDER BY orderexecuted", self.qualified());
        let rows = session.query(&sql, "read databasechangelog").await?;
        let t = self.qualified();
        let mut migrations: Vec<Migration> = rows
            .iter()
            .map(|r| {
                let mut m = Migration::bare(super::cell::<String>(session, &t, r, 0)?, Status::Applied, None);
                m.finished_at =
                    super::cell::<Option<chrono::NaiveDateTime>>(session, &t, r, 1)?.map(|t| t.and_utc());
                m.checksum = super::cell(session, &t, r, 2)?;
                Ok(m)
            })
            .collect::<Result<_, DbError>>()?;
        if let Some((granted, by)) = self.taken(session).await? {
            let live = self.live(session, granted.as_deref(), &by).await?;
            let since = granted.unwrap_or_else(|| "?".into());
            let (status, logs) = if live.is_empty() {
                (Status::Locked, format!("locked since {since} by {by:?} and no live Liquibase session: every update waits for it"))
            } else {
                (
                    Status::InProgress,
                    format!(
                        "locked since {since} by {by:?}, a live session may hold it: {}",
                        live.join("; ")
                    ),
                )
            };
            migrations.push(Migration::bare(format!("{}lock", self.table()), status, Some(logs)));
        }
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| {
            let get = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            format!("{}::{}::{}", get("filename"), get("id"), get("author")) == m.name
        })
    }

    /// `liquibase release-locks`.
    async fn release_lock(&self, s: &Session) -> StepResult {
        if let Some((granted, by)) = self.taken(s).await.map_err(|e| e.to_string())? {
            let live = self.live(s, granted.as_deref(), &by).await.map_err(|e| e.to_string())?;
            if !live.is_empty() {
                return Err(format!("Liquibase's lock (held by {by:?}) is not released: a live session may be the migrator: {}", live.join("; ")));
            }
        }
        let before = self.lock_rows(s).await?;
        let sql = format!(
            "UPDATE {} SET locked = FALSE, lockedby = NULL, lockgranted = NULL WHERE id = 1",
            self.lock_table()
        );
        s.client().execute(&sql, &[]).await.map_err(|e| error_text(&e))?;
        let after = self.lock_rows(s).await?;
        Ok(format!(
            "liquibase release-locks: lock rows before {} after {}",
            serde_json::Value::from(before),
            serde_json::Value::from(after)
        ))
    }

    /// `liquibase clear-checksums`.
    async fn accept_checksums(&self, s: &Session, _cfg: &MigrationsConfig) -> StepResult {
        let sql = format!("UPDATE {} SET md5sum = NULL", self.qualified());
        let n = s.client().execute(&sql, &[]).await.map_err(|e| error_text(&e))?;
        Ok(format!(
            "liquibase clear-checksums: {n} changeset checksum(s) cleared; the next update records them anew"
        ))
    }
}
