//! Half-applied *code* migrations: a knex (or Sequelize, TypeORM, …) migration that ran outside
//! a transaction, failed half way and wrote no history row. Its SQL is JavaScript, so nothing can
//! be replayed from its text; the evidence is the schema instead. The oldest snapshot whose
//! recorded migration rows are today's shows the schema as the last recorded migration left it;
//! whatever the live catalog has beyond it (a table, a column, an index, a sequence, a view, and
//! any invalid index, which pg_dump never dumps) no recorded migration explains. It is attributed
//! to the first pending migration by position, and only where that migration's file names the
//! object: the report says so and lists every object it rests on, and never calls it proven.
//! For diagnose, `reconstruct` writes the same difference out as the statements that would have
//! made it, which the replay then proves against the baseline like any migration's own (and undo
//! is drafted from them); a finish is never drafted, since what the migration would have run
//! after its failure is unknown.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_postgres::Client;

use super::baseline::{schema_text, SchemaTextError};
use crate::pg::{DbError, Session};
use crate::snapshot::{self, Manifest};
use crate::sql::Baseline;
use crate::storage::Storage;
use crate::watch::{Dialect, Migration, Status};

/// An object the live catalog has that the baseline does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// `table`, `column`, `index`, `invalid index`, `sequence`, `view`, `materialized view`.
    pub kind: &'static str,
    pub schema: String,
    /// The relation (for a column: `table.column`).
    pub name: String,
    /// Whether the pending migration's file names it (or, for an index, its table).
    pub named: bool,
}

impl Leftover {
    pub fn text(&self) -> String {
        let named = if self.named { "" } else { " (not named by the file: not attributed)" };
        format!("{} {}.{}{named}", self.kind, self.schema, self.name)
    }
}

/// What was found for one database and one set of applied migrations: a watcher asks every
/// tick while a code migration is pending, and storage (S3) is not listed every tick for it.
#[derive(Clone)]
struct Known {
    found: Option<(String, Arc<Baseline>)>,
    at: std::time::Instant,
}

/// An answer "none" is asked again after this; a baseline found stays the baseline (the oldest
/// snapshot with today's rows is still the oldest until the rows change).
const RETRY_NONE: std::time::Duration = std::time::Duration::from_secs(60);

fn cache() -> &'static Mutex<HashMap<(String, String), Known>> {
    static CACHE: OnceLock<Mutex<HashMap<(String, String), Known>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Whether the manifest recorded exactly the migrations applied today.
fn same_rows(m: &Manifest, dialect: &dyn Dialect, applied: &[&Migration]) -> bool {
    let Some(rows) = &m.migrations else { return false };
    rows.table == dialect.table() && dialect.same_rows(&rows.rows, applied)
}

/// The oldest snapshot (with its schema text) whose recorded rows are today's: the schema as
/// the last recorded migration left it, before anything since. None when there is none.
pub async fn baseline_by_rows(
    storage: &Arc<dyn Storage>,
    database: &str,
    dialect: &dyn Dialect,
    recorded: &[Migration],
) -> Result<Option<(String, Arc<Baseline>)>, String> {
    let applied: Vec<&Migration> = recorded.iter().filter(|m| m.status == Status::Applied).collect();
    let names: Vec<&str> = applied.iter().map(|m| m.name.as_str()).collect();
    let key = (database.to_string(), format!("{}\u{0}{}", dialect.qualified(), names.join("\u{0}")));
    if let Some(k) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        if k.found.is_some() || k.at.elapsed() < RETRY_NONE {
            return Ok(k.found.clone());
        }
    }
    let found = oldest_same_rows(storage, database, dialect, &applied).await?;
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    if c.len() > 64 {
        c.clear();
    }
    c.insert(key, Known { found: found.clone(), at: std::time::Instant::now() });
    Ok(found)
}

async fn oldest_same_rows(
    storage: &Arc<dyn Storage>,
    database: &str,
    dialect: &dyn Dialect,
    applied: &[&Migration],
) -> Result<Option<(String, Arc<Baseline>)>, String> {
    let all =
        snapshot::list(storage, Some(database)).await.map_err(|e| format!("cannot list snapshots: {e}"))?;
    for m in all.iter().filter(|m| same_rows(m, dialect, applied)) {
        let text = match schema_text(storage, m).await {
            Ok(Some(t)) => t,
            Ok(None) | Err(SchemaTextError::Mismatch) => continue,
            Err(SchemaTextError::Unreadable(e)) => return Err(e),
        };
        return Ok(Some((m.id.clone(), Arc::new(Baseline::parse(&text).resolving_in(dialect.schema())))));
    }
    Ok(None)
}

const RELATIONS: &str = "SELECT n.nspname::text, c.relname::text, c.relkind::text, coalesce(t.relname::text, ''), \
      coalesce(x.indisvalid, true), \
      EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = c.oid AND k.contype IN ('p', 'u', 'x') AND k.conrelid = x.indrelid), \
      coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')), '{}'), \
      coalesce((SELECT o.relname::text FROM pg_depend d JOIN pg_class o ON o.oid = d.refobjid \
                WHERE c.relkind = 'S' AND d.objid = c.oid AND d.classid = 'pg_class'::regclass \
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1), ''), \
      EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.relid = x.indrelid) \
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
    LEFT JOIN pg_index x ON x.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = x.indrelid \
    WHERE c.relkind IN ('r', 'p', 'i', 'I', 'S', 'v', 'm') \
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
    ORDER BY 1, 2";

/// One relation of the live catalog, as `RELATIONS` reads it.
struct Rel {
    schema: String,
    name: String,
    kind: String,
    table: String,
    valid: bool,
    constraint: bool,
    columns: Vec<String>,
    owner_table: String,
    building: bool,
}

/// What the live catalog has beyond `baseline`, the tool's own tables left out; `named` says
/// whether the pending migration's file names a word.
pub async fn beyond(
    client: &Client,
    dialect: &dyn Dialect,
    baseline: &Baseline,
    named: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<Leftover>, tokio_postgres::Error> {
    let rows = client.query(RELATIONS, &[]).await?;
    let rels: Vec<Rel> = rows
        .iter()
        .map(|r| Rel {
            schema: r.get(0),
            name: r.get(1),
            kind: r.get(2),
            table: r.get(3),
            valid: r.get(4),
            constraint: r.get(5),
            columns: r.get(6),
            owner_table: r.get(7),
            building: r.get(8),
        })
        .collect();
    let own =
        |schema: &str, name: &str| schema == dialect.table_schema() && name.starts_with(dialect.table());
    let at = Catalog { rels: &rels, baseline, named };
    let mut out = Vec::new();
    for r in &rels {
        if own(&r.schema, &r.name)
            || (!r.table.is_empty() && own(&r.schema, &r.table))
            || own(&r.schema, &r.owner_table)
        {
            continue;
        }
        at.judge(r, &mut out);
    }
    Ok(out)
}

/// The live relations against the baseline.
struct Catalog<'a> {
    rels: &'a [Rel],
    baseline: &'a Baseline,
    named: &'a (dyn Fn(&str) -> bool + Sync),
}

impl Catalog<'_> {
    fn has(&self, kind: &str, schema: &str, name: &str) -> bool {
        self.baseline.has(kind, &crate::sql::ObjName { schema: Some(schema.into()), name: name.into() })
    }

    /// A table the baseline lacks: its indexes and sequences come and go with it.
    fn added_table(&self, schema: &str, t: &str) -> bool {
        self.rels.iter().any(|r| {
            r.schema == schema
                && r.name == t
                && matches!(r.kind.as_str(), "r" | "p")
                && !self.has("TABLE", schema, t)
        })
    }

    /// What of relation `r` the baseline lacks, into `out`.
    fn judge(&self, r: &Rel, out: &mut Vec<Leftover>) {
        let (schema, name, named) = (r.schema.as_str(), r.name.as_str(), self.named);
        let leftover =
            |kind, name: String, named: bool| Leftover { kind, schema: schema.into(), name, named };
        match r.kind.as_str() {
            "r" | "p" if !self.has("TABLE", schema, name) => {
                out.push(leftover("table", name.into(), named(name)))
            }
            "r" | "p" => {
                let t = crate::sql::ObjName { schema: Some(schema.into()), name: name.into() };
                for c in r.columns.iter().filter(|c| self.baseline.column(&t, c).is_none()) {
                    out.push(leftover("column", format!("{name}.{c}"), named(c)));
                }
            }
            "i" | "I" if !r.valid && !r.building => {
                out.push(leftover("invalid index", name.into(), named(name) || named(&r.table)));
            }
            "i" | "I" if self.added_table(schema, &r.table) => {}
            "i" | "I" => {
                let known = self.has("INDEX", schema, name)
                    || (r.constraint && self.has("CONSTRAINT", schema, &format!("{} {name}", r.table)));
                if !known {
                    out.push(leftover("index", name.into(), named(name) || named(&r.table)));
                }
            }
            "S" if !r.owner_table.is_empty() && self.added_table(schema, &r.owner_table) => {}
            "S" if !self.has("SEQUENCE", schema, name) => {
                out.push(leftover("sequence", name.into(), named(name)))
            }
            "v" if !self.has("VIEW", schema, name) => out.push(leftover("view", name.into(), named(name))),
            "m" if !self.has("MATERIALIZED VIEW", schema, name) => {
                out.push(leftover("materialized view", name.into(), named(name)))
            }
            _ => {}
        }
    }
}

/// Whether `text` names `word` as a whole identifier (quoted or not).
pub fn names(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The first pending migration of a code-first tool, when the catalog holds objects beyond the
/// baseline by rows that its file names: `half_applied`, attributed by position.
pub async fn detect(
    session: &Session,
    dialect: &dyn Dialect,
    recorded: &[Migration],
    storage: &Arc<dyn Storage>,
    database: &str,
) -> Result<Option<Migration>, DbError> {
    // A deploy under way may be half way on purpose; another failure is repaired first. A lock
    // left by a killed batch is no reason to wait: its migration is what the lock hides.
    let busy = |s: Status| {
        matches!(
            s,
            Status::InProgress | Status::Failed | Status::Crashed | Status::Dirty | Status::HalfApplied
        )
    };
    if recorded.iter().any(|m| busy(m.status)) {
        return Ok(None);
    }
    let Some(first) = dialect.pending(recorded).into_iter().next() else { return Ok(None) };
    let Some(path) = dialect.code_file(&first) else { return Ok(None) };
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let found = match baseline_by_rows(storage, database, dialect, recorded).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(database, error = %e, "cannot read the snapshots a half-applied migration would be judged against");
            return Ok(None);
        }
    };
    let objects = beyond(session.client(), dialect, &found.1, &|w| names(&text, w))
        .await
        .map_err(|e| session.err("compare the catalog with the snapshot's schema", e))?;
    if !objects.iter().any(|o| o.named) {
        return Ok(None);
    }
    let logs = logs(dialect, &first, &path, &found.0, &objects);
    Ok(Some(Migration {
        status: Status::HalfApplied,
        logs: Some(logs),
        judged_against: Some(found.0),
        ..first
    }))
}

fn logs(dialect: &dyn Dialect, m: &Migration, path: &Path, snapshot: &str, objects: &[Leftover]) -> String {
    let list: Vec<String> = objects.iter().map(Leftover::text).collect();
    format!(
        "{} does not record `{}`, yet the live catalog holds what no recorded migration explains since snapshot {snapshot} (the oldest whose recorded migrations are today's): {}; attributed to {} by position (the first pending migration) and by the names its file mentions, not proven by a replay of its SQL (its SQL is code); every next deploy fails \"already exists\" until it is undone and resolved",
        dialect.qualified(),
        m.name,
        list.join(", "),
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn a_name_counts_only_as_a_whole_identifier() {
        let js = "await knex.schema.createTable('audit', t => t.integer('id'));\nknex.raw('CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email)')";
        assert!(names(js, "audit") && names(js, "accounts_email_key") && names(js, "accounts"));
        assert!(!names(js, "aud") && !names(js, "email_key") && !names(js, "account"));
    }
}
