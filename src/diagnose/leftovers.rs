//! Half-applied *code* migrations: a knex (or Sequelize, TypeORM, …) migration that ran outside
//! a transaction, failed half way and wrote no history row. Its SQL is JavaScript, so nothing can
//! be replayed from its text; the evidence is the schema instead. The oldest snapshot whose
//! recorded migration rows are today's shows the schema as the last recorded migration left it;
//! whatever the live catalog has beyond it (a table, a column, an index, a sequence, a view, and
//! any invalid index, which pg_dump never dumps) no recorded migration explains. It is attributed
//! to the first pending migration by position, and only where that migration's file names the
//! object: the report says so and lists every object it rests on, and never calls it proven.
//! For diagnose the same difference, taken from a fresh `pg_dump --schema-only`, is written out as
//! the statements that would have made it, which the replay then proves against the baseline
//! like any migration's own (and undo is drafted from them); a finish is never drafted, since
//! what the migration would have run after its failure is unknown.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_postgres::Client;

use super::baseline::{schema_text, BaselineSnapshot, SchemaTextError};
use crate::config::DatabaseConfig;
use crate::pg::{DbError, PgTools, Session};
use crate::snapshot::{self, Manifest};
use crate::sql::schema::Change;
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

/// The baseline by rows, and what the live catalog has beyond it.
pub struct Found {
    pub snapshot: String,
    pub baseline: Arc<Baseline>,
    pub objects: Vec<Leftover>,
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
    let has = |kind: &str, schema: &str, name: &str| {
        baseline.has(kind, &crate::sql::ObjName { schema: Some(schema.into()), name: name.into() })
    };
    let added_table = |schema: &str, t: &str| {
        rels.iter().any(|r| {
            r.schema == schema
                && r.name == t
                && matches!(r.kind.as_str(), "r" | "p")
                && !has("TABLE", schema, t)
        })
    };
    let mut out = Vec::new();
    for r in &rels {
        let (schema, name) = (r.schema.as_str(), r.name.as_str());
        if own(schema, name) || (!r.table.is_empty() && own(schema, &r.table)) || own(schema, &r.owner_table)
        {
            continue;
        }
        let leftover =
            |kind, name: String, named: bool| Leftover { kind, schema: schema.into(), name, named };
        match r.kind.as_str() {
            "r" | "p" if !has("TABLE", schema, name) => out.push(leftover("table", name.into(), named(name))),
            "r" | "p" => {
                let t = crate::sql::ObjName { schema: Some(schema.into()), name: name.into() };
                for c in r.columns.iter().filter(|c| baseline.column(&t, c).is_none()) {
                    out.push(leftover("column", format!("{name}.{c}"), named(c)));
                }
            }
            "i" | "I" if !r.valid && !r.building => {
                out.push(leftover("invalid index", name.into(), named(name) || named(&r.table)));
            }
            "i" | "I" if added_table(schema, &r.table) => {}
            "i" | "I" => {
                let known = has("INDEX", schema, name)
                    || (r.constraint && has("CONSTRAINT", schema, &format!("{} {name}", r.table)));
                if !known {
                    out.push(leftover("index", name.into(), named(name) || named(&r.table)));
                }
            }
            "S" if !r.owner_table.is_empty() && added_table(schema, &r.owner_table) => {}
            "S" if !has("SEQUENCE", schema, name) => out.push(leftover("sequence", name.into(), named(name))),
            "v" if !has("VIEW", schema, name) => out.push(leftover("view", name.into(), named(name))),
            "m" if !has("MATERIALIZED VIEW", schema, name) => {
                out.push(leftover("materialized view", name.into(), named(name)))
            }
            _ => {}
        }
    }
    Ok(out)
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

/// A half-applied code migration written out as statements: the baseline it was judged
/// against, the objects it rests on, and the statements that take that baseline to live.
pub struct Reconstruction {
    pub baseline: BaselineSnapshot,
    pub objects: Vec<String>,
    pub statements: String,
}

/// The statements a half-applied code migration's leftovers amount to, from the schema now
/// (`pg_dump --schema-only`) against the snapshot it was judged against; refused when any
/// object in the difference is one its file does not name.
pub async fn reconstruct(
    client: &Client,
    db: &DatabaseConfig,
    dialect: &dyn Dialect,
    storage: &Arc<dyn Storage>,
    m: &Migration,
    tools: &PgTools,
) -> Result<Reconstruction, String> {
    let id = m
        .judged_against
        .as_deref()
        .ok_or("no snapshot records today's migrations, so nothing shows what it changed")?;
    let path =
        dialect.code_file(m).ok_or_else(|| format!("its file is no longer in databases.migrations.dir"))?;
    let code = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let all =
        snapshot::list(storage, Some(&db.name)).await.map_err(|e| format!("cannot list snapshots: {e}"))?;
    let manifest = all.iter().find(|x| x.id == id).ok_or_else(|| format!("snapshot {id} is gone"))?;
    let text = match schema_text(storage, manifest).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(format!("snapshot {id} has no schema text")),
        Err(SchemaTextError::Mismatch) => {
            return Err(format!("snapshot {id}'s schema does not match its manifest"))
        }
        Err(SchemaTextError::Unreadable(e)) => return Err(e),
    };
    let schema = Baseline::parse(&text).resolving_in(dialect.schema());
    let err = |e: tokio_postgres::Error| crate::pg::error_text(&e);
    let objects = beyond(client, dialect, &schema, &|w| names(&code, w)).await.map_err(err)?;
    let stray: Vec<String> = objects.iter().filter(|o| !o.named).map(Leftover::text).collect();
    if !stray.is_empty() {
        return Err(format!("objects its file does not name were added since snapshot {id} too ({}): pgmedic cannot tell which of them the migration made; drop or keep them by hand, then diagnose again", stray.join(", ")));
    }
    let mut invalid = Vec::new();
    for o in objects.iter().filter(|o| o.kind == "invalid index") {
        let q = "SELECT pg_get_indexdef(format('%I.%I', $1::text, $2::text)::regclass)";
        invalid.push(client.query_one(q, &[&o.schema, &o.name]).await.map_err(err)?.get::<_, String>(0));
    }
    let now = Baseline::parse(&schema_now(client, db, tools).await?);
    let stmts = additions(&schema, &now, dialect, &invalid)?;
    let baseline = BaselineSnapshot { id: id.to_string(), taken_at: manifest.taken_at, text, schema };
    Ok(Reconstruction {
        baseline,
        objects: objects.iter().map(Leftover::text).collect(),
        statements: stmts.iter().map(|s| format!("{s};\n")).collect(),
    })
}

/// `pg_dump --schema-only` of the live database now, as the snapshots print it.
async fn schema_now(client: &Client, db: &DatabaseConfig, tools: &PgTools) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let major: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
        .await
        .map_err(|e| crate::pg::error_text(&e))?
        .get(0);
    let tools = tools.for_server(db.pg_bin_dir.as_deref(), major as u32).await.map_err(|e| e.to_string())?;
    let args = vec!["--lock-wait-timeout=10000".into(), "--schema-only".into()];
    let pipes = crate::pg::Pipes { stdout: true, ..Default::default() };
    let mut proc = tools.spawn("pg_dump", Some(&db.url), &args, pipes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(stdout) = proc.take_async_stdout() {
        let _ = stdout.take(512 * 1024 * 1024).read_to_end(&mut out).await;
    }
    proc.wait().await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The order pg_dump restores kinds in, so that statements written from a schema difference run.
fn rank(kind: &str) -> Option<u8> {
    Some(match kind {
        "SCHEMA" => 0,
        "TYPE" => 1,
        "SEQUENCE" => 2,
        "TABLE" => 3,
        "VIEW" | "MATERIALIZED VIEW" => 4,
        "SEQUENCE OWNED BY" => 5,
        "DEFAULT" => 6,
        "CONSTRAINT" => 7,
        "INDEX" => 8,
        "FK CONSTRAINT" => 9,
        _ => return None,
    })
}

/// The statements that take `base` to `now` for the objects added since (and columns added to
/// tables that were there), in restore order, with each `invalid` index (its definition) last as
/// the statement that failed; or why the difference cannot be written as additions.
pub fn additions(
    base: &Baseline,
    now: &Baseline,
    dialect: &dyn Dialect,
    invalid: &[String],
) -> Result<Vec<String>, String> {
    let own = |c: &Change| c.schema == dialect.table_schema() && c.name.starts_with(dialect.table());
    let mut ranked: Vec<(u8, String)> = Vec::new();
    let mut refused = Vec::new();
    for c in base.diff(now).into_iter().filter(|c| !own(c)) {
        match (c.change, rank(&c.kind)) {
            // Ownership is not part of the shapes compared, and a dropped table takes the
            // sequences it owns with it: `ALTER SEQUENCE … OWNED BY` would only make the undo
            // refuse a statement it cannot invert.
            ("added", Some(5)) => {}
            ("added", Some(r)) => {
                ranked.extend(statements(c.after.as_deref().unwrap_or("")).into_iter().map(|s| (r, s)))
            }
            ("changed", Some(3)) => match added_columns(&c) {
                Ok(v) => ranked.extend(v.into_iter().map(|s| (3, s))),
                Err(e) => refused.push(e),
            },
            (change, _) => {
                refused.push(format!("{change} {} {}.{}", c.kind.to_lowercase(), c.schema, c.name))
            }
        }
    }
    if !refused.is_empty() {
        return Err(format!(
            "the live schema differs from the baseline in ways that are not additions, which pgmedic does not write as statements: {}",
            refused.join("; ")
        ));
    }
    ranked.sort_by_key(|(r, _)| *r);
    let mut out: Vec<String> = ranked.into_iter().map(|(_, s)| s).collect();
    for def in invalid {
        out.push(def.replacen(" INDEX ", " INDEX CONCURRENTLY ", 1));
    }
    Ok(out)
}

/// A pg_dump object's statements, without its session settings and ownership.
fn statements(text: &str) -> Vec<String> {
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("SET ") && !l.starts_with("SELECT pg_catalog.set_config"))
        .filter(|l| !(l.starts_with("ALTER ") && l.contains(" OWNER TO ")))
        .collect();
    match pg_query::split_with_parser(&kept.join("\n")) {
        Ok(v) => v.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        Err(_) => vec![kept.join("\n")],
    }
}

/// `ALTER TABLE … ADD COLUMN` for each column a table gained; an error for any other change.
fn added_columns(c: &Change) -> Result<Vec<String>, String> {
    let why = || format!("changed table {}.{} (not only columns added)", c.schema, c.name);
    let (Some(before), Some(after)) = (columns(c.before.as_deref()), columns(c.after.as_deref())) else {
        return Err(why());
    };
    let kept: Vec<&(String, String)> = after.iter().filter(|a| before.iter().any(|b| b.0 == a.0)).collect();
    if kept.len() != before.len() || kept.iter().zip(&before).any(|(a, b)| a.1 != b.1) {
        return Err(why());
    }
    let table = format!("{}.{}", crate::sql::names::quote(&c.schema), crate::sql::names::quote(&c.name));
    Ok(after
        .iter()
        .filter(|a| !before.iter().any(|b| b.0 == a.0))
        .map(|(_, def)| format!("ALTER TABLE ONLY {table} ADD COLUMN {def}"))
        .collect())
}

/// Each column of a pg_dump `CREATE TABLE` with its definition as SQL (the statement deparsed
/// with that column alone, so two dumps' columns compare as text).
fn columns(text: Option<&str>) -> Option<Vec<(String, String)>> {
    let parsed = pg_query::parse(text?, pg_query::ParserOptions::DEFAULT).ok()?;
    let create = parsed.protobuf.stmts.into_iter().find_map(|s| match s.stmt?.node? {
        pg_query::NodeEnum::CreateStmt(c) => Some(c),
        _ => None,
    })?;
    let mut out = Vec::new();
    for n in &create.table_elts {
        let Some(pg_query::NodeEnum::ColumnDef(d)) = n.node.as_ref() else { continue };
        let alone = pg_query::protobuf::CreateStmt {
            table_elts: vec![n.clone()],
            constraints: vec![],
            ..create.clone()
        };
        let sql = crate::sql::names::deparse(&pg_query::NodeEnum::CreateStmt(alone));
        let (open, close) = (sql.find('(')?, sql.rfind(')')?);
        out.push((d.colname.clone(), sql.get(open + 1..close)?.trim().to_string()));
    }
    Some(out)
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
