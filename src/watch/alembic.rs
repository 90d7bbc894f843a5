//! Alembic: `alembic_version (version_num varchar(32) PRIMARY KEY)`, one row per head. `dir` is
//! the `versions` folder; each file declares `revision` and `down_revision`, which chain the
//! revisions from the base (None) to the head. The applied ones are the chain up to the recorded
//! head; the pending ones follow it. With the stock `env.py` one transaction wraps the upgrade,
//! but `autocommit_block()` commits what ran before it: a revision that fails inside such a block
//! (a `CREATE INDEX CONCURRENTLY`) leaves its earlier statements committed and the version
//! unchanged — `half_applied`, found from the schema, or from its real SQL through
//! `sql_command` (`alembic upgrade {prev}:{name} --sql`). No lock. resolve applied writes what
//! `alembic stamp <rev>` writes (the UPDATE of the head, an INSERT on an empty table).

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Dialect, Migration, Place, Status, StepResult, TableState};
use crate::config::{MigrationsConfig, ResolveAs};
use crate::pg::{error_text, DbError, Session};

pub struct Alembic(pub Place);

/// A revision file: its id, the one before it (None at the base), its path.
struct Revision {
    id: String,
    down: Option<String>,
    path: PathBuf,
}

/// `name = "value"` (or `name: str = 'value'`) at the start of a line; `Some(None)` for `None`.
fn assigned(text: &str, name: &str) -> Option<Option<String>> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix(':') {
            Some(typed) => typed.split_once('=')?.1,
            None => rest.strip_prefix('=')?,
        }
        .trim();
        if rest.starts_with("None") {
            return Some(None);
        }
        let q = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        Some(Some(rest[1..].split(q).next()?.to_string()))
    })
}

impl Alembic {
    fn revisions(&self) -> Vec<Revision> {
        let scripts = self.0.scan(|name, path| name.ends_with(".py").then_some(path));
        scripts
            .into_iter()
            .filter_map(|path| {
                let text = std::fs::read_to_string(&path).ok()?;
                let id = assigned(&text, "revision")??;
                Some(Revision { id, down: assigned(&text, "down_revision")?, path })
            })
            .collect()
    }

    /// The chain from the base, in order (stops where it forks or breaks).
    fn chain(&self) -> Vec<Revision> {
        let mut all = self.revisions();
        let mut out: Vec<Revision> = Vec::new();
        loop {
            let prev = out.last().map(|r| r.id.clone());
            let next: Vec<usize> = (0..all.len()).filter(|i| all[*i].down == prev).collect();
            match next.as_slice() {
                [i] => out.push(all.remove(*i)),
                _ => return out,
            }
        }
    }

    fn migration(r: &Revision, status: Status) -> Migration {
        let mut m = Migration::bare(r.id.clone(), status, None);
        m.id = r.id.clone();
        m
    }
}

#[async_trait]
impl Dialect for Alembic {
    fn tool(&self) -> &'static str {
        "alembic"
    }

    fn place(&self) -> &Place {
        &self.0
    }

    fn advisory_key(&self, _database: &str) -> Option<i64> {
        None
    }

    /// The revisions up to the recorded head, applied (the head alone when the files are not
    /// there to chain them).
    async fn read(&self, session: &Session) -> Result<TableState, DbError> {
        if !session.relation_exists(&self.qualified()).await? {
            return Ok(TableState::Missing);
        }
        let sql = format!("SELECT version_num::text FROM {}", self.qualified());
        let rows = session.query(&sql, "read alembic_version").await?;
        let t = self.qualified();
        let heads: Vec<String> =
            rows.iter().map(|r| super::cell(session, &t, r, 0)).collect::<Result<_, _>>()?;
        let chain = self.chain();
        let migrations = match heads.as_slice() {
            [head] if chain.iter().any(|r| r.id == *head) => {
                let upto = chain.iter().position(|r| r.id == *head).unwrap_or(0);
                chain[..=upto].iter().map(|r| Self::migration(r, Status::Applied)).collect()
            }
            _ => heads
                .iter()
                .map(|h| Migration { id: h.clone(), ..Migration::bare(h.clone(), Status::Applied, None) })
                .collect(),
        };
        Ok(TableState::Rows { migrations })
    }

    /// A snapshot's rows show `m` attempted when its head is `m` or a revision after it.
    fn attempted(&self, rows: &[serde_json::Value], m: &Migration) -> bool {
        let chain = self.chain();
        let at = |id: &str| chain.iter().position(|r| r.id == id);
        rows.iter().filter_map(|r| r["version_num"].as_str()).any(|h| match (at(h), at(&m.id)) {
            (Some(h), Some(x)) => h >= x,
            _ => h == m.id,
        })
    }

    /// One row, the head: equal when the head is.
    fn same_rows(&self, rows: &[serde_json::Value], applied: &[&Migration]) -> bool {
        let head = applied.last().map(|m| m.id.as_str());
        rows.len() == usize::from(head.is_some()) && rows.iter().all(|r| r["version_num"].as_str() == head)
    }

    fn code_file(&self, m: &Migration) -> Option<PathBuf> {
        self.revisions().into_iter().find(|r| r.id == m.id).map(|r| r.path)
    }

    fn command_prev(&self, m: &Migration) -> Option<String> {
        self.revisions().into_iter().find(|r| r.id == m.id).and_then(|r| r.down)
    }

    fn pending(&self, recorded: &[Migration]) -> Vec<Migration> {
        let chain = self.chain();
        let head = recorded.last().map(|m| m.id.clone());
        let from = match &head {
            Some(h) => match chain.iter().position(|r| r.id == *h) {
                Some(i) => i + 1,
                None => return Vec::new(),
            },
            None => 0,
        };
        chain[from..].iter().map(|r| Self::migration(r, Status::Applied)).collect()
    }

    /// applied: `alembic stamp <rev>` (UPDATE of the head it follows, INSERT on an empty
    /// table); rolled back: nothing to write while the head is still the revision before it.
    async fn resolve(
        &self,
        s: &Session,
        _cfg: &MigrationsConfig,
        m: &Migration,
        how: ResolveAs,
    ) -> StepResult {
        let t = self.qualified();
        let c = s.client();
        let heads: Vec<String> = c
            .query(&format!("SELECT version_num::text FROM {t}"), &[])
            .await
            .map_err(|e| error_text(&e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let prev = self.command_prev(m);
        match how {
            ResolveAs::Applied if heads.contains(&m.id) => Ok(format!("{t} already has head {}", m.id)),
            ResolveAs::Applied => {
                let n = match &prev {
                    Some(p) => c.execute(&format!("UPDATE {t} SET version_num = $1 WHERE version_num = $2"), &[&m.id, p]).await,
                    None if heads.is_empty() => c.execute(&format!("INSERT INTO {t} (version_num) VALUES ($1)"), &[&m.id]).await,
                    None => return Err(format!("{} is a base revision and {t} already has head(s) {}", m.id, heads.join(", "))),
                };
                match n.map_err(|e| error_text(&e))? {
                    1 => Ok(format!("head {} recorded, as `alembic stamp {}` does", m.id, m.id)),
                    _ => Err(format!("{t}'s head is {}, not {}: not stamped", heads.join(", "), prev.unwrap_or_default())),
                }
            }
            ResolveAs::RolledBack if heads == prev.clone().into_iter().collect::<Vec<_>>() => Ok(format!("{t}'s head is still the revision before {}: alembic runs it again on its next upgrade", m.id)),
            ResolveAs::RolledBack => Err(format!("{t}'s head is {}: alembic has no rolled-back state to write for {} (alembic downgrade, or stamp by hand)", heads.join(", "), m.id)),
            ResolveAs::FromDiagnosis => Err("from-diagnosis is decided before the tool's table is written".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn revisions_are_read_plain_and_typed() {
        let text = "revision: str = 'b2'\ndown_revision: Union[str, None] = \"a1\"\n";
        assert_eq!(super::assigned(text, "revision"), Some(Some("b2".into())));
        assert_eq!(super::assigned(text, "down_revision"), Some(Some("a1".into())));
        assert_eq!(super::assigned("revision = \"a1\"\ndown_revision = None\n", "down_revision"), Some(None));
    }
}
