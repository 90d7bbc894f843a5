//! The rules that count on the live database (`lint --db`): `might-fail`, a constraint or index
//! the existing rows already break (duplicates under a new UNIQUE, NULLs under SET NOT NULL,
//! orphans under a new foreign key, rows a new CHECK rejects), each counted with a bounded query
//! (at most 1000, in a read-only transaction that gives up after 5 s); and
//! `invalid-index-present`, the indexes a failed CONCURRENTLY build left, which a pending
//! migration creating one of that name trips on.

use pg_query::protobuf::{self, AlterTableType as At, ConstrType};
use pg_query::NodeEnum;
use tokio_postgres::Client;

use super::rules::Hit;
use super::{Finding, Severity};
use crate::sql::names::{self, quote, ObjName};

const CAP: i64 = 1000;

/// `count(*)` of `select` (rows the constraint rejects), capped and bounded; None when the
/// query cannot run (a column the migrations add, a timeout).
async fn count(c: &Client, select: &str) -> Option<i64> {
    // Behind an ALTER's lock it gives up at once rather than queue the table's readers.
    c.batch_execute("BEGIN READ ONLY; SET LOCAL statement_timeout = '5s'; SET LOCAL lock_timeout = '1s'")
        .await
        .ok()?;
    let q = format!("SELECT count(*) FROM ({select} LIMIT {CAP}) x");
    let n = c.query_one(&q, &[]).await.ok().map(|r| r.get::<_, i64>(0));
    let _ = c.batch_execute("ROLLBACK").await;
    n.filter(|n| *n > 0)
}

fn many(n: i64) -> String {
    if n >= CAP {
        format!("at least {n}")
    } else {
        n.to_string()
    }
}

fn fail(table: &ObjName, message: String, fix: &str) -> Hit {
    Hit {
        rule: "might-fail",
        severity: Severity::Error,
        message,
        fix: fix.into(),
        table: Some(protobuf::RangeVar {
            schemaname: table.schema.clone().unwrap_or_default(),
            relname: table.name.clone(),
            ..Default::default()
        }),
    }
}

fn list(cols: &[String]) -> String {
    cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
}

/// Rows of `table` that a statement's new index or constraint rejects, for an existing table.
pub async fn might_fail(c: &Client, node: &NodeEnum, existing: &dyn Fn(&ObjName) -> bool) -> Vec<Hit> {
    let mut out = Vec::new();
    match node {
        NodeEnum::IndexStmt(s) if s.unique && s.where_clause.is_none() => {
            let Some(t) = s.relation.as_ref().map(names::from_range).filter(|t| existing(t)) else {
                return out;
            };
            let cols: Vec<String> = s
                .index_params
                .iter()
                .filter_map(|p| match p.node.as_ref() {
                    Some(NodeEnum::IndexElem(e)) if !e.name.is_empty() => Some(e.name.clone()),
                    _ => None,
                })
                .collect();
            if cols.len() == s.index_params.len() {
                out.extend(unique(c, &t, &cols).await);
            }
        }
        NodeEnum::AlterTableStmt(s) => {
            let Some(t) = s.relation.as_ref().map(names::from_range).filter(|t| existing(t)) else {
                return out;
            };
            for cmd in s.cmds.iter().filter_map(|n| match n.node.as_ref() {
                Some(NodeEnum::AlterTableCmd(cmd)) => Some(cmd),
                _ => None,
            }) {
                out.extend(command(c, &t, cmd).await);
            }
        }
        _ => {}
    }
    out
}

async fn command(c: &Client, t: &ObjName, cmd: &protobuf::AlterTableCmd) -> Option<Hit> {
    let table = t.sql();
    match (At::try_from(cmd.subtype).ok()?, cmd.def.as_ref().and_then(|d| d.node.as_ref())) {
        (At::AtSetNotNull, _) => {
            let n = count(c, &format!("SELECT 1 FROM {table} WHERE {} IS NULL", quote(&cmd.name))).await?;
            Some(fail(
                t,
                format!(
                    "SET NOT NULL on {}.{}: {} rows hold NULL now, so it fails (23502)",
                    t,
                    quote(&cmd.name),
                    many(n)
                ),
                "backfill the NULLs first (in batches), then SET NOT NULL",
            ))
        }
        (At::AtAddConstraint, Some(NodeEnum::Constraint(k))) => constraint(c, t, k).await,
        _ => None,
    }
}

async fn constraint(c: &Client, t: &ObjName, k: &protobuf::Constraint) -> Option<Hit> {
    let table = t.sql();
    let strings = |l: &[protobuf::Node]| l.iter().filter_map(names::string).collect::<Vec<_>>();
    match ConstrType::try_from(k.contype).ok()? {
        ConstrType::ConstrUnique | ConstrType::ConstrPrimary => unique(c, t, &strings(&k.keys)).await,
        ConstrType::ConstrCheck if !k.skip_validation => {
            let node = k.raw_expr.as_ref()?.node.as_ref()?;
            // The migration's expression runs on the live database only when every function it
            // calls is immutable (a read-only transaction still lets a function sleep, lock or
            // signal): otherwise it is not counted.
            if !immutable_calls(c, node).await {
                return None;
            }
            let expr = names::expr_text(node);
            let n = count(c, &format!("SELECT 1 FROM {table} WHERE NOT ({expr})")).await?;
            Some(fail(
                t,
                format!("CHECK {}: {} rows of {t} violate it now, so it fails (23514)", k.conname, many(n)),
                "fix those rows first, or add it NOT VALID and VALIDATE it once they are fixed",
            ))
        }
        ConstrType::ConstrForeign if !k.skip_validation => {
            let (cols, target) = (strings(&k.fk_attrs), names::from_range(k.pktable.as_ref()?));
            let mut refs = strings(&k.pk_attrs);
            if refs.is_empty() {
                let q = "SELECT array_agg(a.attname::text ORDER BY k.i) FROM pg_constraint p, unnest(p.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attnum = k.n WHERE p.conrelid = to_regclass($1) AND p.contype = 'p' AND a.attrelid = p.conrelid";
                refs = c.query_one(q, &[&target.sql()]).await.ok()?.get::<_, Option<Vec<String>>>(0)?;
            }
            if refs.len() != cols.len() || cols.is_empty() {
                return None;
            }
            let set: Vec<String> = cols.iter().map(|c| format!("s.{} IS NOT NULL", quote(c))).collect();
            let on: Vec<String> =
                cols.iter().zip(&refs).map(|(a, b)| format!("p.{} = s.{}", quote(b), quote(a))).collect();
            let q = format!(
                "SELECT 1 FROM {table} s WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})",
                set.join(" AND "),
                target.sql(),
                on.join(" AND ")
            );
            let n = count(c, &q).await?;
            Some(fail(
                t,
                format!(
                    "FOREIGN KEY ({}) of {t} to {target}: {} rows reference nothing now, so it fails (23503)",
                    list(&cols),
                    many(n)
                ),
                "delete or fix the orphans first, or add it NOT VALID and VALIDATE it once they are fixed",
            ))
        }
        _ => None,
    }
}

/// Whether `expr` can run on the live database without running anyone's code with effects:
/// every function it calls is immutable (every overload), and every operator it uses is
/// PostgreSQL's own or immutable (a user's operator is a function call by another name).
async fn immutable_calls(c: &Client, expr: &NodeEnum) -> bool {
    let last = |names: &[pg_query::protobuf::Node]| names.iter().filter_map(names::string).next_back();
    let (mut funcs, mut ops) = (Vec::new(), Vec::new());
    let root = std::iter::once((expr.to_ref(), 0, pg_query::Context::None, false));
    for (n, ..) in root.chain(expr.nodes()) {
        match n {
            pg_query::NodeRef::FuncCall(f) => funcs.extend(last(&f.funcname)),
            pg_query::NodeRef::AExpr(a) => ops.extend(last(&a.name)),
            _ => {}
        }
    }
    const FUNC: &str = "SELECT coalesce(bool_and(provolatile = 'i'), false) FROM pg_proc WHERE proname = $1";
    const OP: &str = "SELECT coalesce(bool_and(p.provolatile = 'i' OR p.pronamespace = 'pg_catalog'::regnamespace), false) \
        FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode WHERE o.oprname = $1";
    let checks = funcs.iter().map(|f| (FUNC, f)).chain(ops.iter().map(|o| (OP, o)));
    for (q, name) in checks {
        match c.query_one(q, &[name]).await {
            Ok(r) if r.get::<_, bool>(0) => {}
            _ => return false,
        }
    }
    true
}

async fn unique(c: &Client, t: &ObjName, cols: &[String]) -> Option<Hit> {
    if cols.is_empty() {
        return None;
    }
    let set: Vec<String> = cols.iter().map(|c| format!("{} IS NOT NULL", quote(c))).collect();
    let q = format!(
        "SELECT 1 FROM {} WHERE {} GROUP BY {} HAVING count(*) > 1",
        t.sql(),
        set.join(" AND "),
        list(cols)
    );
    let n = count(c, &q).await?;
    Some(fail(t, format!("UNIQUE ({}) over {t}: {} values are duplicated now, so it fails (23505) — and a CONCURRENTLY build leaves an invalid index behind", list(cols), many(n)), "merge or delete the duplicates first"))
}

/// Invalid indexes of the live database: an error where a pending migration creates one of
/// that name (it fails "already exists"), else a warning on the first file.
pub async fn invalid_indexes(
    c: &Client,
    created: &[(String, String, usize)],
    first: &str,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let q = "SELECT i.relname::text, t.relname::text, pg_get_indexdef(x.indexrelid) FROM pg_index x \
             JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
             WHERE NOT x.indisvalid AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = x.indexrelid) ORDER BY 1";
    let rows = c.query(q, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (index, table, def): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let at = created.iter().find(|(n, ..)| *n == index);
            let (severity, file, line, why) = match at {
                Some((_, f, l)) => (Severity::Error, f.clone(), *l, "this migration creates it again and fails \"already exists\""),
                None => (Severity::Warning, first.to_string(), 1, "every write to the table maintains it while no query may use it"),
            };
            Finding {
                rule: "invalid-index-present",
                severity,
                file,
                line,
                message: format!("the database holds invalid index {index} on {table} ({def}), left by a failed or killed CONCURRENTLY build: {why}"),
                fix: format!("DROP INDEX CONCURRENTLY {} (then build it again)", quote(&index)),
            }
        })
        .collect())
}
