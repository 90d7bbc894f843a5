//! drizzle-kit: `drizzle.__drizzle_migrations (id serial, hash text, created_at bigint)`, one row
//! per applied migration: the SHA-256 of its `.sql` file and its journal entry's `when`. `dir` is
//! drizzle's `out` folder: `meta/_journal.json` lists the migrations (`tag`, `when`) in order and
//! `<tag>.sql` holds each one's statements, split on `--> statement-breakpoint`. `migrate` runs
//! every pending migration in one transaction (no option runs one outside it), so a failure
//! leaves nothing behind — and drizzle-kit 0.31 prints no error at all: only the server log has
//! it (`diagnose --migration <tag>` shows it). Pending is drizzle's own rule: a `when` later than
//! the newest row's `created_at`. No lock. resolve applied writes the row drizzle's success
//! writes (hash, when); a migration whose objects are already there (run by hand) is
//! `half_applied`, and the replay tells all from none.

use std::path::PathBuf;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{DbError, Session};

pub struct Drizzle(pub Place);

/// One journal entry: the migration's tag (its file without `.sql`) and `when`.
struct Entry {
    tag: String,
    when: i64,
}

impl Drizzle {
    /// The journal's entries, in its order; empty without a readable journal.
    fn journal(&self) -> Vec<Entry> {
        let Some(dir) = &self.0.dir else { return Vec::new() };
        let Ok(text) = std::fs::read_to_string(dir.join("meta/_journal.json")) else { return Vec::new() };
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
        let entries = doc["entries"].as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .filter_map(|e| Some(Entry { tag: e["tag"].as_str()?.to_string(), when: e["when"].as_i64()? }))
            .collect()
    }

    fn path(&self, tag: &str) -> Option<PathBuf> {
        Some(self.0.dir.as_ref()?.join(format!("{tag}.sql")))
    }

    fn hash(&self, tag: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path(tag)?).ok()?;
        Some(hex::encode(Sha256::digest(text.as_bytes())))
    }

    fn migration(&self, e: &Entry) -> Migration {
        let mut m = Migration::bare(e.tag.clone(), Status::Applied, None);
        m.id = e.when.to_string();
        m
    }
}

#[async_trait]
impl Dialect for Drizzle {
    fn tool(&self) -> &'static str {
        "drizzle"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        None
    }

    fn atomic(&self) -> bool {
        true
    }

    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!("SELECT hash, created_at FROM {} ORDER BY created_at, id", self.qualified());
        let rows = session.query(&sql, "read __drizzle_migrations").await?;
        let journal = self.journal();
        let t = self.qualified();
        let mut migrations = Vec::new();
        for r in &rows {
            let (hash, when): (String, Option<i64>) =
                (super::cell(session, &t, r, 0)?, super::cell(session, &t, r, 1)?);
            let entry = journal.iter().find(|e| Some(e.when) == when);
            let mut m = match entry {
                Some(e) => self.migration(e),
                None => {
                    Migration::bare(when.map(|w| w.to_string()).unwrap_or_default(), Status::Applied, None)
                }
            };
            m.id = when.map(|w| w.to_string()).unwrap_or_default();
            m.checksum = hash;
            migrations.push(m);
        }
        Ok(TableState::Rows { migrations })
    }

    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        rows.iter().any(|r| {
            r.get("created_at").map(|v| v.to_string().trim_matches('"').to_string()) == Some(m.id.clone())
        })
    }

    fn file(&self, m: &Migration) -> Option<PathBuf> {
        self.path(&m.name).filter(|p| p.is_file())
    }

    /// Each breakpoint ends a statement (a generated file also ends it with `;`: an empty
    /// statement between is nothing).
    fn up_sql(&self, text: &str) -> String {
        text.replace("--> statement-breakpoint", ";")
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        let last = recorded.iter().filter_map(|m| m.id.parse::<i64>().ok()).max();
        self.journal().iter().filter(|e| last.is_none_or(|l| e.when > l)).map(|e| self.migration(e)).collect()
    }

    /// applied: `(hash, created_at)` as drizzle's `migrate` writes them (the file's SHA-256, the
    /// journal's `when`); rolled back: nothing to write once no row exists.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let when: i64 =
            m.id.parse().map_err(|_| format!("`{}` has no entry in meta/_journal.json", m.name))?;
        let hash = self.hash(&m.name);
        let insert = match &hash {
            Some(h) => Ok((
                format!("INSERT INTO {t} (hash, created_at) VALUES ($1, $2)"),
                vec![h as super::row::Param, &when],
            )),
            None => Err(format!("cannot read {}.sql in databases.migrations.dir", m.name)),
        };
        let row = super::row::Row {
            tool: "drizzle",
            label: &m.name,
            find: "created_at = $1",
            find_params: vec![&when],
            insert,
            done: format!(
                "recorded {} (hash {}, created_at {when}) as drizzle's migrate does",
                m.name,
                hash.as_deref().unwrap_or("")
            ),
            again: "its next migrate",
            undo_hint: "",
            table: t,
        };
        super::row::resolve(s, row, how).await
    }
}
