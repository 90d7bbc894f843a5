//! The catalog's own description of a set of objects (columns with types, defaults and
//! nullability, constraints, indexes, view definitions, enum labels), one line per fact, from
//! `format_type`, `pg_get_constraintdef`, `pg_get_indexdef` and friends. Run with the same
//! queries in two databases, equal lines mean equal schemas for those objects: this is how an
//! undo proves it left the objects as the baseline snapshot had them.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::names::{quote, ObjName};
use super::parse::{Effect, Statement};

/// What a migration touched: relations, types, extensions and schemas, by name.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    pub relations: BTreeSet<ObjName>,
    pub types: BTreeSet<ObjName>,
    pub extensions: BTreeSet<String>,
    pub schemas: BTreeSet<String>,
}

pub fn touched(stmts: &[Statement]) -> Touched {
    let mut t = Touched::default();
    for e in stmts.iter().flat_map(|s| &s.effects) {
        use Effect as E;
        match e {
            E::CreateRelation { name, .. } | E::DropRelation { name, .. } => {
                t.relations.insert(name.clone());
            }
            E::CreateIndex { table, name, .. } => {
                t.relations.insert(table.clone());
                t.relations.extend(name.clone());
            }
            E::AddColumn { table, .. }
            | E::DropColumn { table, .. }
            | E::AlterType { table, .. }
            | E::SetDefault { table, .. }
            | E::DropDefault { table, .. }
            | E::SetNotNull { table, .. }
            | E::DropNotNull { table, .. }
            | E::AddConstraint { table, .. }
            | E::DropConstraint { table, .. }
            | E::RenameColumn { table, .. }
            | E::RenameConstraint { table, .. } => {
                t.relations.insert(table.clone());
            }
            E::RenameRelation { from, to, .. } => {
                t.relations.insert(from.clone());
                t.relations.insert(from.with_name(to));
            }
            E::CreateType { name } | E::DropType { name } | E::AddEnumValue { name, .. } => {
                t.types.insert(name.clone());
            }
            E::CreateExtension { name } | E::DropExtension { name } => {
                t.extensions.insert(name.clone());
            }
            E::CreateSchema { name } => {
                t.schemas.insert(name.clone());
            }
            E::CreateFunction { .. } | E::Data { .. } | E::Unknown { .. } => {}
        }
    }
    t
}

/// One line per fact about the touched objects, sorted.
pub async fn describe(c: &Client, t: &Touched) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for r in &t.relations {
        relation(c, r, &mut out).await?;
    }
    for ty in &t.types {
        let q = "SELECT t.typtype::text, ARRAY(SELECT enumlabel::text FROM pg_enum WHERE enumtypid = t.oid ORDER BY enumsortorder) \
                 FROM pg_type t WHERE t.oid = to_regtype($1)";
        match c.query_opt(q, &[&ty.sql()]).await? {
            None => out.push(format!("type {ty}: absent")),
            Some(r) => out.push(format!(
                "type {ty}: kind {} labels {:?}",
                r.get::<_, String>(0),
                r.get::<_, Vec<String>>(1)
            )),
        }
    }
    for e in &t.extensions {
        let found: bool =
            c.query_one("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = $1)", &[e]).await?.get(0);
        out.push(format!("extension {}: {}", quote(e), if found { "present" } else { "absent" }));
    }
    for s in &t.schemas {
        let found: bool = c.query_one("SELECT to_regnamespace($1) IS NOT NULL", &[&quote(s)]).await?.get(0);
        out.push(format!("schema {}: {}", quote(s), if found { "present" } else { "absent" }));
    }
    out.sort();
    Ok(out)
}

async fn relation(c: &Client, r: &ObjName, out: &mut Vec<String>) -> Result<(), tokio_postgres::Error> {
    let q = "SELECT relkind::text, CASE WHEN relkind IN ('v', 'm') THEN pg_get_viewdef(oid) END, \
                    CASE WHEN relkind IN ('i', 'I') THEN pg_get_indexdef(oid) END \
             FROM pg_class WHERE oid = to_regclass($1)";
    let Some(row) = c.query_opt(q, &[&r.sql()]).await? else {
        out.push(format!("relation {r}: absent"));
        return Ok(());
    };
    let kind: String = row.get(0);
    out.push(format!("relation {r}: kind {kind}"));
    if let Some(def) = row.get::<_, Option<String>>(1) {
        out.push(format!("relation {r}: view {def}"));
    }
    if let Some(def) = row.get::<_, Option<String>>(2) {
        out.push(format!("relation {r}: index {def}"));
    }
    let facts = "SELECT 'column ' || quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod) \
                        || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END \
                        || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '') \
                 FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 UNION ALL \
                 SELECT 'constraint ' || quote_ident(conname) || ' ' || pg_get_constraintdef(oid) \
                 FROM pg_constraint WHERE conrelid = to_regclass($1) \
                 UNION ALL \
                 SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass($1)";
    for row in c.query(facts, &[&r.sql()]).await? {
        out.push(format!("relation {r}: {}", row.get::<_, String>(0)));
    }
    Ok(())
}
