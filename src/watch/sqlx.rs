//! sqlx: `_sqlx_migrations (version, description, installed_on, success, checksum bytea,
//! execution_time)`. `success = false` is failed ("migration N is partially applied; fix and
//! remove row"); an applied row whose file's SHA-384 is not its checksum has drifted ("was
//! previously applied but has been modified"). The library's `Migrator::run` holds session
//! advisory lock `0x3d32ad9e × crc32(current_database())`. sqlx has no recovery command of its
//! own: resolve applied marks the row successful with the file's checksum, rolled back deletes
//! it; accept_checksums stores the files' checksums.

use std::path::PathBuf;

use async_trait::async_trait;
use sha2::{Digest, Sha384};

use super::{live, Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{error_text, DbError, Session};

pub struct Sqlx(pub Place);

pub fn advisory_key(database: &str) -> i64 {
    0x3d32_ad9e_i64 * i64::from(crc32fast::hash(database.as_bytes()))
}

impl Sqlx {
    /// `<version>_<description>.sql` (or `.up.sql`), the description with `_` for spaces.
    fn find(&self, version: i64) -> Option<PathBuf> {
        let dir = self.0.dir.as_ref()?;
        let prefix = format!("{version}_");
        std::fs::read_dir(dir).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&prefix) && name.ends_with(".sql") && !name.ends_with(".down.sql")
        })
    }

    fn checksum(&self, version: i64) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.find(version)?).ok()?;
        Some(Sha384::digest(&bytes).to_vec())
    }

    fn version(m: &Migration) -> Result<i64, String> {
        m.id.parse().map_err(|_| format!("`{}` has no version", m.name))
    }
}

#[async_trait]
impl Dialect for Sqlx {
    fn tool(&self) -> &'static str {
        "sqlx"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, database: &str) -> Option<i64> {
        Some(advisory_key(database))
    }

    /// A file runs in one transaction, or (`-- no-transaction`) as one multi-statement query,
    /// which PostgreSQL runs as one implicit transaction: none or all of it.
    fn atomic(&self) -> bool {
        true
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!(
            "SELECT version, description, installed_on, success, checksum FROM {} ORDER BY version",
            self.qualified()
        );
        let rows = session.query(&sql, "read _sqlx_migrations").await?;
        let db = live::database(session).await?;
        let holder = live::advisory_holder(session, advisory_key(&db)).await?;
        let mut migrations = Vec::new();
        let t = self.qualified();
        for r in &rows {
            let (version, description, success, stored): (i64, String, bool, Vec<u8>) = (
                super::cell(session, &t, r, 0)?,
                super::cell(session, &t, r, 1)?,
                super::cell(session, &t, r, 3)?,
                super::cell(session, &t, r, 4)?,
            );
            let (status, logs) = match (success, self.checksum(version)) {
                (false, _) if holder.is_some() => (Status::InProgress, holder.clone().map(|h| format!("sqlx's lock is held by {h}"))),
                (false, _) => (Status::Failed, Some(format!("migration {version} is partially applied; fix and remove row from _sqlx_migrations table"))),
                (true, Some(sum)) if sum != stored => (Status::Drifted, Some(format!("migration {version} was previously applied but has been modified"))),
                (true, _) => (Status::Applied, None),
            };
            let mut m = Migration::bare(format!("{version}_{}", description.replace(' ', "_")), status, logs);
            m.id = version.to_string();
            m.finished_at = super::cell(session, &t, r, 2)?;
            m.checksum = hex::encode(stored);
            migrations.push(m);
        }
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        let v = m.id.parse::<i64>().ok();
        rows.iter().any(|r| r.get("version").and_then(|x| x.as_i64()) == v)
    }

    fn file(&self, m: &Migration) -> Option<PathBuf> {
        self.find(m.id.parse().ok()?)
    }

    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let v = Self::version(m)?;
        let t = self.qualified();
        let q = |e: tokio_postgres::Error| error_text(&e);
        if how != ResolveAs::Applied {
            let n =
                s.client().execute(&format!("DELETE FROM {t} WHERE version = $1"), &[&v]).await.map_err(q)?;
            return Ok(format!("deleted {n} row(s) of migration {v}: sqlx runs it again next time"));
        }
        let sum = self.checksum(v).ok_or_else(|| {
            format!("no file for migration {v} in databases.migrations.dir to take its checksum from")
        })?;
        let n = s
            .client()
            .execute(&format!("UPDATE {t} SET success = TRUE, checksum = $2 WHERE version = $1"), &[&v, &sum])
            .await
            .map_err(q)?;
        Ok(format!("marked migration {v} applied ({n} row) with its file's SHA-384 {}", hex::encode(&sum)))
    }

    async fn accept_checksums(&self, s: &Session, _cfg: &MigrationsConfig) -> StepResult {
        let t = self.qualified();
        let rows = s
            .client()
            .query(&format!("SELECT version, checksum FROM {t} WHERE success"), &[])
            .await
            .map_err(|e| error_text(&e))?;
        let mut changed = Vec::new();
        for r in rows {
            let (v, stored): (i64, Vec<u8>) = (r.get(0), r.get(1));
            if let Some(sum) = self.checksum(v).filter(|sum| *sum != stored) {
                s.client()
                    .execute(&format!("UPDATE {t} SET checksum = $2 WHERE version = $1"), &[&v, &sum])
                    .await
                    .map_err(|e| error_text(&e))?;
                changed.push(v.to_string());
            }
        }
        Ok(format!(
            "stored the files' checksums for migration(s): {}",
            if changed.is_empty() { "none".into() } else { changed.join(", ") }
        ))
    }
}
