//! Flyway (documented behaviour; no Flyway binary is reachable here): `flyway_schema_history`
//! with one row per migration run, `success = false` for a non-transactional failure on
//! PostgreSQL (failed: `validate` and `migrate` stop), and a checksum that `validate` compares
//! with the file's: a CRC-32 over the file's lines without their line breaks (drifted when it
//! differs). `flyway repair` deletes the failed rows (resolve rolled back) and realigns the
//! checksums with the files (accept_checksums). While Flyway works it holds a session advisory
//! lock keyed by its table (read from Flyway's source, `PostgreSQLAdvisoryLockTemplate`): a
//! held lock shows as a run in progress, and a repair takes the same lock.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{live, Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{error_text, DbError, Session};

pub struct Flyway(pub Place);

/// Flyway's checksum: CRC-32 updated with each line's UTF-8 bytes, without line terminators
/// (and without a leading byte-order mark), as a signed 32-bit integer.
pub fn checksum(text: &str) -> i32 {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut h = crc32fast::Hasher::new();
    for line in text.split('\n') {
        h.update(line.strip_suffix('\r').unwrap_or(line).as_bytes());
    }
    h.finalize() as i32
}

/// "Flyway" in ASCII, Flyway's base for its PostgreSQL lock (77431708279161).
const LOCK_MAGIC: i64 = 0x46_6c_79_77_61_79;

/// Flyway's lock id for its table: the base plus Java's `String.hashCode()` of the table as
/// Flyway quotes it, `"schema"."table"` (an int, so it may subtract).
pub fn advisory_key(schema: &str, table: &str) -> i64 {
    let quoted = format!("\"{}\".\"{}\"", schema.replace('"', "\"\""), table.replace('"', "\"\""));
    let hash = quoted.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    LOCK_MAGIC + i64::from(hash)
}

impl Flyway {
    fn file_of(&self, script: &str) -> Option<PathBuf> {
        let dir = self.0.dir.as_ref()?;
        (!script.contains("..") && script.ends_with(".sql")).then(|| dir.join(script))
    }

    fn file_checksum(&self, script: &str) -> Option<i32> {
        Some(checksum(&std::fs::read_to_string(self.file_of(script)?).ok()?))
    }
}

#[async_trait]
impl Dialect for Flyway {
    fn tool(&self) -> &'static str {
        "flyway"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        Some(advisory_key(self.schema(), self.table()))
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!(
            "SELECT installed_rank, coalesce(version, ''), script, checksum, installed_on, success FROM {} ORDER BY installed_rank",
            self.qualified()
        );
        let rows = session.query(&sql, "read flyway_schema_history").await?;
        let t = self.qualified();
        let mut migrations: Vec<Migration> = rows
            .iter()
            .map(|r| {
                let (rank, version, script, stored, success): (i32, String, String, Option<i32>, bool) = (
                    super::cell(session, &t, r, 0)?,
                    super::cell(session, &t, r, 1)?,
                    super::cell(session, &t, r, 2)?,
                    super::cell(session, &t, r, 3)?,
                    super::cell(session, &t, r, 5)?,
                );
                let (status, logs) = match (success, stored, self.file_checksum(&script)) {
                    (false, ..) => (Status::Failed, Some(format!("Detected failed migration to version {version} ({script})"))),
                    (true, Some(s), Some(f)) if s != f => (Status::Drifted, Some(format!("Migration checksum mismatch for migration version {version}: applied {s}, resolved locally {f}"))),
                    _ => (Status::Applied, None),
                };
                let mut m = Migration::bare(script, status, logs);
                m.id = rank.to_string();
                m.checksum = stored.map(|c| c.to_string()).unwrap_or_default();
                m.finished_at = super::cell::<Option<chrono::NaiveDateTime>>(session, &t, r, 4)?.map(|t| t.and_utc());
                Ok(m)
            })
            .collect::<Result<_, DbError>>()?;
        let key = advisory_key(self.schema(), self.table());
        if let Some(holder) = live::advisory_holder(session, key).await? {
            // Flyway writes a row only after each migration: the run shows as its lock.
            let logs = format!("Flyway's lock {key} is held by {holder}");
            migrations.push(Migration::bare(
                format!("{}_lock", self.table()),
                Status::InProgress,
                Some(logs),
            ));
        }
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| r.get("script").and_then(|v| v.as_str()) == Some(m.name.as_str()))
    }

    fn file(&self, m: &Migration) -> Option<PathBuf> {
        self.file_of(&m.name)
    }

    /// `flyway repair`'s deletion of the failed rows; Flyway has no "mark applied".
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        _m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        if how == ResolveAs::Applied {
            return Err("Flyway cannot mark a failed migration applied: its repair deletes the failed row (resolve = \"rolled-back\")".into());
        }
        let n = s
            .client()
            .execute(&format!("DELETE FROM {} WHERE NOT success", self.qualified()), &[])
            .await
            .map_err(|e| error_text(&e))?;
        Ok(format!("flyway repair: removed {n} failed migration row(s)"))
    }

    /// `flyway repair`'s realignment of checksums with the files.
    async fn accept_checksums(&self, s: &Session, _cfg: &MigrationsConfig) -> StepResult {
        let t = self.qualified();
        let rows = s
            .client()
            .query(&format!("SELECT installed_rank, script, checksum FROM {t} WHERE success"), &[])
            .await
            .map_err(|e| error_text(&e))?;
        let mut changed = Vec::new();
        for r in rows {
            let (rank, script, stored): (i32, String, Option<i32>) = (r.get(0), r.get(1), r.get(2));
            if let Some(f) = self.file_checksum(&script).filter(|f| stored != Some(*f)) {
                s.client()
                    .execute(&format!("UPDATE {t} SET checksum = $2 WHERE installed_rank = $1"), &[&rank, &f])
                    .await
                    .map_err(|e| error_text(&e))?;
                changed.push(script);
            }
        }
        Ok(format!(
            "flyway repair: realigned the checksums of {}",
            if changed.is_empty() { "none".into() } else { changed.join(", ") }
        ))
    }
}

#[cfg(test)]
mod tests {
    /// `"public"."flyway_schema_history"`.hashCode() is 2125624436 in Java (computed independently,
    /// 31-based over UTF-16 units, wrapping at 32 bits); the base is the reference's 77431708279161.
    #[test]
    fn the_lock_key_is_flyways() {
        assert_eq!(super::LOCK_MAGIC, 77_431_708_279_161);
        assert_eq!(super::advisory_key("public", "flyway_schema_history"), 77_431_708_279_161 + 2125624436);
    }
}
