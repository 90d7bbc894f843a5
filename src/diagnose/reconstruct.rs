//! A half-applied code migration written out as statements: what `pg_dump --schema-only` prints
//! now, against the schema of the snapshot it was judged against (see `leftovers`), as the
//! additions that take that baseline to live — tables, columns, sequences, views, defaults,
//! constraints, indexes, in pg_dump's restore order — with any invalid index last, as the
//! statement that failed. Anything else in the difference (a dropped or changed object, an
//! object the migration's file does not name) makes it refuse: the replay and the undo then
//! stand on exactly what the migration left, and on nothing pgmedic guessed.

use std::sync::Arc;

use tokio_postgres::Client;

use super::baseline::{schema_text, BaselineSnapshot, SchemaTextError};
use super::leftovers::{beyond, names, Leftover};
use crate::config::DatabaseConfig;
use crate::pg::PgTools;
use crate::snapshot;
use crate::sql::schema::Change;
use crate::sql::Baseline;
use crate::storage::Storage;
use crate::watch::{Dialect, Migration};

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
    let path = dialect.code_file(m).ok_or("its file is no longer in databases.migrations.dir")?;
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
