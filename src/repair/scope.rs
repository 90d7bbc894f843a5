//! How much a run's pre-repair snapshot must hold (`repair.snapshot = "auto"`): the whole schema
//! and globals always, and the rows of exactly the tables its steps may write — the tool's own
//! tables for resolve, release_lock, accept_checksums and from-diagnosis; the tables a failed
//! migration names for finish and undo; the tables a `sql`/`sql_file`/`assert_sql` step's
//! statements write, by PostgreSQL's parser. The live catalog then widens or refuses the scope:
//! partitions and tables whose foreign keys cascade from a written one join it, and a written
//! table with a user trigger or a rule, a view, or a call of a function that may write makes
//! the snapshot full. Anything unknown (a `command`, a `DO` block, SQL that does not parse) is
//! a full snapshot too, and the reason is kept for the audit record and the webhook.

use std::collections::BTreeSet;

use crate::config::{MigrationsConfig, Playbook, ResolveAs, Step};
use crate::pg::Session;
use crate::snapshot::{Scope, ScopedTable};
use crate::sql::{self, writes::Writes, ObjName};
use crate::watch::{Dialect, Migration};

/// The scope and why: `(Scope::Full, "full: …")` or the tables with what asked for them.
pub struct Planned {
    pub scope: Scope,
    pub reason: String,
}

fn full(why: impl Into<String>) -> Planned {
    Planned { scope: Scope::Full, reason: format!("full: {}", why.into()) }
}

/// Builtins that are volatile yet write no table's rows.
const HARMLESS: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "nextval",
    "currval",
    "setval",
    "pg_sleep",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_unlock",
    "pg_try_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory_xact_lock",
];

pub async fn plan(
    session: &Session,
    full_always: bool,
    dialect: &dyn Dialect,
    mig: &MigrationsConfig,
    playbook: &Playbook,
    migration: &Migration,
) -> Planned {
    if full_always {
        return full("repair.snapshot = \"full\"");
    }
    let mut named: BTreeSet<ObjName> = BTreeSet::new();
    let mut functions: BTreeSet<String> = BTreeSet::new();
    for (i, step) in playbook.steps.iter().enumerate() {
        let what = format!("step {} of playbook {}", i + 1, playbook.name);
        let writes = match step_writes(step, dialect, mig, migration) {
            Ok(w) => w,
            Err(why) => return full(format!("{what}: {why}")),
        };
        let Some(w) = writes else { continue };
        named.extend(w.tables);
        functions.extend(w.functions);
    }
    if let Some(f) = functions.iter().find(|f| !builtin_name(f)) {
        return full(format!("the steps call {f}(), which may write any table"));
    }
    let own: Vec<ObjName> =
        dialect.own_tables().into_iter().map(|t| ObjName { schema: Some(t.schema), name: t.table }).collect();
    match widen(session, &own, &named, &functions, &mig.schema).await {
        Ok(tables) => {
            let list: Vec<String> = tables.iter().map(|t| format!("{}.{}", t.schema, t.table)).collect();
            Planned {
                scope: Scope::Tables(tables),
                reason: format!("scoped: the steps may write only {}", list.join(", ")),
            }
        }
        Err(why) => full(why),
    }
}

/// The tables one step may write (None: only the tool's own), or why it cannot be known.
fn step_writes(
    step: &Step,
    dialect: &dyn Dialect,
    mig: &MigrationsConfig,
    migration: &Migration,
) -> Result<Option<Writes>, String> {
    let parsed = |text: &str| sql::parse::parse(text).map_err(|e| format!("its SQL does not parse ({e})"));
    match step {
        Step::Resolve(ResolveAs::Applied | ResolveAs::RolledBack | ResolveAs::FromDiagnosis)
        | Step::ReleaseLock
        | Step::AcceptChecksums => Ok(None),
        Step::Command { .. } => Err("a command step's effects are unknown".into()),
        Step::Sql { sql, .. } | Step::AssertSql { sql } => sql::writes::writes(&parsed(sql)?).map(Some),
        Step::SqlFile { path, .. } => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            sql::writes::writes(&parsed(&text)?).map(Some)
        }
        Step::Finish { .. } | Step::Undo { .. } => {
            let (file, _, stmts) = crate::diagnose::read_file(dialect, mig, migration);
            file?;
            migration_writes(&stmts, &mig.schema).map(Some)
        }
    }
}

/// What finish or undo of a migration may write: every table its statements write, create or
/// alter (undo drops a column it added with its values, a table it created with its rows).
pub fn migration_writes(stmts: &[sql::Statement], schema: &str) -> Result<Writes, String> {
    let w = sql::writes::writes(stmts)?;
    let mut tables: Vec<ObjName> = w.tables.into_iter().chain(w.created).collect();
    tables.extend(stmts.iter().filter_map(|s| match &s.node {
        pg_query::NodeEnum::AlterTableStmt(a) => a.relation.as_ref().map(sql::names::from_range),
        _ => None,
    }));
    let tables = tables.into_iter().map(|t| t.qualified_in(schema)).collect();
    Ok(Writes { tables, created: Vec::new(), functions: w.functions })
}

/// Err naming a table finish or undo of `stmts` would write that the scoped snapshot does not
/// hold and that exists now (one that does not exist had no rows to keep when it was scoped).
pub async fn check_migration(
    session: &Session,
    scope: &Scope,
    stmts: &[sql::Statement],
    schema: &str,
) -> Result<(), String> {
    let Some(held) = scope.tables() else { return Ok(()) };
    for n in migration_writes(stmts, schema)?.tables {
        if held.iter().any(|t| Some(&t.schema) == n.schema.as_ref() && t.table == n.name) {
            continue;
        }
        let row = session
            .client()
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&n.sql()])
            .await
            .map_err(|e| crate::pg::error_text(&e))?;
        if row.get::<_, bool>(0) {
            return Err(format!("it would write {n}, whose rows the scoped pre-repair snapshot does not hold; run the repair again (its snapshot is scoped anew) or set repair.snapshot = \"full\""));
        }
    }
    Ok(())
}

/// `now`, `pg_catalog.setval`: a name that can only be a builtin's. Checked against the catalog
/// by `widen` (an unqualified name may still be a user function earlier on the search path).
fn builtin_name(f: &str) -> bool {
    match f.split_once('.') {
        Some((schema, _)) => schema == "pg_catalog",
        None => true,
    }
}

/// The scope in the live catalog: the named tables that exist (a table a step creates has no
/// rows to keep), the tool's own, their partitions and the tables their foreign keys cascade
/// into; Err (a full snapshot) for a view or foreign table, a trigger, a rule, or a function
/// that may write.
async fn widen(
    session: &Session,
    own: &[ObjName],
    named: &BTreeSet<ObjName>,
    functions: &BTreeSet<String>,
    schema: &str,
) -> Result<Vec<ScopedTable>, String> {
    let c = session.client();
    let q = |e: tokio_postgres::Error| {
        format!("the catalog could not be read to scope the snapshot ({})", crate::pg::error_text(&e))
    };
    for f in functions {
        let name = f.rsplit('.').next().unwrap_or(f);
        // An unqualified name: a user function earlier on the search path would win over a builtin.
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE n.nspname <> 'pg_catalog'), bool_and(p.provolatile <> 'v') \
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proname = $1",
                &[&name],
            )
            .await
            .map_err(q)?;
        let (user, stable): (i64, Option<bool>) = (row.get(0), row.get(1));
        if user > 0 || !(stable.unwrap_or(false) || HARMLESS.contains(&name)) {
            return Err(format!("the steps call {f}(), which may write any table"));
        }
    }
    let texts: Vec<String> = own.iter().chain(named).map(|n| n.qualified_in(schema).sql()).collect();
    let sql = "WITH RECURSIVE t(oid) AS ( \
          SELECT DISTINCT to_regclass(x)::oid FROM unnest($1::text[]) x WHERE to_regclass(x) IS NOT NULL \
        UNION \
          SELECT k.oid FROM t, LATERAL ( \
            SELECT inhrelid FROM pg_inherits WHERE inhparent = t.oid \
            UNION ALL SELECT conrelid FROM pg_constraint WHERE contype = 'f' AND confrelid = t.oid \
              AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd')) \
          ) k(oid)) \
        SELECT n.nspname, c.relname, c.relkind::text, c.relhasrules, \
               (SELECT string_agg(g.tgname, ', ') FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal) \
        FROM t JOIN pg_class c ON c.oid = t.oid JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2";
    let rows = c.query(sql, &[&texts]).await.map_err(q)?;
    let mut out = Vec::new();
    for r in rows {
        let (schema, table, kind, rules, triggers): (String, String, String, bool, Option<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let at = format!("{schema}.{table}");
        if !matches!(kind.as_str(), "r" | "p") {
            return Err(format!("the steps write {at}, which is not a table (relkind {kind})"));
        }
        if let Some(t) = triggers {
            return Err(format!("the steps write {at}, whose trigger(s) {t} may write other tables"));
        }
        if rules {
            return Err(format!("the steps write {at}, whose rules may write other tables"));
        }
        out.push(ScopedTable { schema, table });
    }
    if out.is_empty() {
        return Err("none of the tables the steps write exists".into());
    }
    Ok(out)
}

/// A step's statements, checked when it runs against the snapshot taken for the run: Err
/// names a table it would write that the scoped snapshot does not hold.
pub fn check(scope: &Scope, stmts: &[sql::Statement], schema: &str) -> Result<(), String> {
    let Some(tables) = scope.tables() else { return Ok(()) };
    let w = sql::writes::writes(stmts)?;
    let held = |n: &ObjName| {
        let q = n.qualified_in(schema);
        tables.iter().any(|t| Some(&t.schema) == q.schema.as_ref() && t.table == q.name)
    };
    match w.tables.iter().find(|n| !held(n) && !w.created.contains(n)) {
        Some(n) => Err(format!("it would write {n}, whose rows the scoped pre-repair snapshot does not hold; run the repair again (its snapshot is scoped anew) or set repair.snapshot = \"full\"")),
        None => Ok(()),
    }
}
