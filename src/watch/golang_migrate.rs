//! golang-migrate's `schema_migrations (version bigint, dirty boolean)`: one row at most, the
//! current version, `dirty` from before the body runs until after it. Dirty with the tool's
//! advisory lock held (or a backend still running the file) is in progress; dirty otherwise is
//! stuck, and may be fully applied (a killed multi-statement body commits without its client)
//! or not at all: `diagnose` tells which. Recovery is `migrate force V` (`TRUNCATE` + `INSERT (V,
//! false)` in one transaction) or `force V-1` (the previous file's version; `-1`: TRUNCATE only).

use std::path::PathBuf;

use async_trait::async_trait;

use super::{live, Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{error_text, DbError, Session};

pub struct GolangMigrate(pub Place);

/// golang-migrate's lock id: CRC-32 (IEEE) of `schema \0 table \0 url_path` times its salt,
/// modulo 2^32, where url_path is the connection URL's path with its slash (`/app`).
pub fn advisory_key(schema: &str, table: &str, database: &str) -> i64 {
    let text = format!("{schema}\0{table}\0/{database}");
    let sum = crc32fast::hash(text.as_bytes());
    i64::from(sum.wrapping_mul(1_486_364_155))
}

impl GolangMigrate {
    /// `(version, path)` of every `<version>_<name>.up.sql` in `dir`, by version.
    fn files(&self) -> Vec<(i64, PathBuf)> {
        self.0.scan(|name, path| Some((name.strip_suffix(".up.sql")?.split('_').next()?.parse().ok()?, path)))
    }

    fn version(m: &Migration) -> Option<i64> {
        m.id.parse().ok()
    }
}

#[async_trait]
impl Dialect for GolangMigrate {
    fn tool(&self) -> &'static str {
        "golang-migrate"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, database: &str) -> Option<i64> {
        Some(advisory_key(self.schema(), self.table(), database))
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!("SELECT version, dirty FROM {} LIMIT 1", self.qualified());
        let rows = session.query(&sql, "read golang-migrate's schema_migrations").await?;
        let Some(row) = rows.first() else { return Ok(TableState::Rows { migrations: Vec::new() }) };
        let t = self.qualified();
        let (version, dirty): (i64, bool) =
            (super::cell(session, &t, row, 0)?, super::cell(session, &t, row, 1)?);
        let file = self.files().into_iter().find(|(v, _)| *v == version).map(|(_, p)| p);
        let name = file
            .as_ref()
            .and_then(|p| p.file_name()?.to_str()?.strip_suffix(".up.sql").map(String::from))
            .unwrap_or_else(|| version.to_string());
        let db = live::database(session).await?;
        let holder = match self.advisory_key(&db) {
            Some(k) => live::advisory_holder(session, k).await?,
            None => None,
        };
        let (status, logs) = match (dirty, holder) {
            (_, Some(h)) => (Status::InProgress, Some(format!("golang-migrate's lock is held by {h}"))),
            (true, None) => (
                Status::Dirty,
                Some(format!("error: Dirty database version {version}. Fix and force version.")),
            ),
            (false, None) => (Status::Applied, None),
        };
        let mut m = Migration::bare(name, status, logs);
        m.id = version.to_string();
        Ok(TableState::Rows { migrations: vec![m] })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        let Some(v) = Self::version(m) else { return false };
        rows.iter().any(|r| r.get("version").and_then(|x| x.as_i64()).is_some_and(|x| x >= v))
    }

    fn file(&self, m: &Migration) -> Option<PathBuf> {
        let v = Self::version(m)?;
        self.files().into_iter().find(|(x, _)| *x == v).map(|(_, p)| p)
    }

    /// Its default mode sends a file as one multi-statement query: one implicit transaction.
    fn atomic(&self) -> bool {
        true
    }

    /// `force V` or `force <previous version>`, under the advisory lock the repair holds.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let v = Self::version(m).ok_or_else(|| format!("`{}` has no version", m.name))?;
        // The version before V is only known from the files: without V's own file among them,
        // `force -1` would empty the table and the next `up` would replay every migration.
        if how != ResolveAs::Applied && self.file(m).is_none() {
            return Err(format!(
                "cannot resolve version {v} as rolled back: its file {v}_*.up.sql is not in databases.migrations.dir ({}), so the version before it is unknown; without it `migrate force -1` would empty the table and the next `migrate up` would run every migration again",
                self.0.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "not configured".into())
            ));
        }
        let target = match how {
            ResolveAs::Applied => Some(v),
            _ => self.files().into_iter().map(|(x, _)| x).rfind(|x| *x < v),
        };
        let t = self.qualified();
        let sql = match target {
            Some(x) => {
                format!("BEGIN; TRUNCATE {t}; INSERT INTO {t} (version, dirty) VALUES ({x}, false); COMMIT")
            }
            None => format!("BEGIN; TRUNCATE {t}; COMMIT"),
        };
        if let Err(e) = s.client().batch_execute(&sql).await {
            let _ = s.client().batch_execute("ROLLBACK").await;
            return Err(error_text(&e));
        }
        Ok(match target {
            Some(x) => format!("migrate force {x}: {sql}"),
            None => format!("migrate force -1 (no earlier version): {sql}"),
        })
    }
}

#[cfg(test)]
mod tests {
    /// The reference's example bytes, `"public\0schema_migrations\0/app"`: CRC-32 (IEEE)
    /// 1017053285 (as Python's `zlib.crc32` computes it) × 1486364155 mod 2^32. golang-migrate's
    /// own source agrees (`database/util.go`'s `GenerateAdvisoryLockId`, joined schema, table and
    /// `DatabaseName: purl.Path` in `database/postgres/postgres.go`). The issue quotes 2123692571
    /// for this example, which no arrangement of these names gives (see the README).
    #[test]
    fn the_lock_key_follows_golang_migrates_formula() {
        assert_eq!(crc32fast::hash(b"public\0schema_migrations\0/app"), 1017053285);
        assert_eq!(super::advisory_key("public", "schema_migrations", "app"), 1726534663);
    }
}
