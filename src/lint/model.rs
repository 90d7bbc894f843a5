//! The schema as a pending migration will find it: the live catalog (with `--db`) under the
//! changes made by the statements before it, or those changes alone (`--dir`). A reference to
//! something that is in neither is an error before anything runs.

use std::collections::{BTreeSet, HashMap, HashSet};

use pg_query::NodeEnum;
use tokio_postgres::Client;

use crate::sql::parse::{Effect, TypeSpec};
use crate::sql::{catalog, ObjName};

/// Types every server has, for `--dir` alone (names as the parser leaves them unqualified).
const BUILTIN: &[&str] = &[
    "text",
    "varchar",
    "char",
    "bpchar",
    "name",
    "int2",
    "int4",
    "int8",
    "integer",
    "bigint",
    "smallint",
    "serial",
    "bigserial",
    "smallserial",
    "serial2",
    "serial4",
    "serial8",
    "numeric",
    "decimal",
    "real",
    "float4",
    "float8",
    "bool",
    "boolean",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "bytea",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "money",
    "xml",
    "tsvector",
    "tsquery",
    "point",
    "line",
    "lseg",
    "box",
    "path",
    "polygon",
    "circle",
    "bit",
    "varbit",
    "oid",
    "regclass",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
];

#[derive(Default)]
pub struct Model {
    /// The migrations' schema: where unqualified names live.
    schema: String,
    /// Relations created by earlier statements, with their columns when known.
    created: HashMap<(String, String), Option<BTreeSet<String>>>,
    dropped: HashSet<(String, String)>,
    added_columns: HashSet<(String, String, String)>,
    dropped_columns: HashSet<(String, String, String)>,
    types: HashSet<(String, String)>,
    /// Only tables created in the current file count as new (`--dir` alone).
    per_file: bool,
    in_file: HashSet<(String, String)>,
    /// The current file set lock_timeout, or was already warned about it.
    lock_timeout: bool,
}

/// The types an extension brings, so `--dir` alone knows them after its CREATE EXTENSION.
fn extension_types(name: &str) -> &'static [&'static str] {
    match name {
        "citext" => &["citext"],
        "vector" => &["vector", "halfvec", "sparsevec"],
        "hstore" => &["hstore"],
        "ltree" => &["ltree", "lquery", "ltxtquery"],
        "postgis" => &["geometry", "geography", "box2d", "box3d"],
        "cube" => &["cube"],
        "isn" => &["isbn", "isbn13", "ean13", "issn", "issn13", "ismn", "ismn13", "upc"],
        "seg" => &["seg"],
        _ => &[],
    }
}

impl Model {
    pub fn new(schema: &str, per_file: bool) -> Model {
        Model { schema: schema.to_string(), per_file, ..Model::default() }
    }

    pub fn begin_file(&mut self) {
        self.in_file.clear();
        self.lock_timeout = false;
    }

    /// `SET lock_timeout` seen in this file.
    pub fn set_lock_timeout(&mut self) {
        self.lock_timeout = true;
    }

    /// Whether a strong lock in this file goes unguarded (once per file: then it counts as said).
    pub fn warn_lock_timeout(&mut self) -> bool {
        !std::mem::replace(&mut self.lock_timeout, true)
    }

    fn key(&self, n: &ObjName) -> (String, String) {
        (n.schema.clone().unwrap_or_else(|| self.schema.clone()), n.name.clone())
    }

    /// Whether `table` is created by the migrations about to run (so it is new and empty: no
    /// lock worries).
    pub fn is_new(&self, table: &ObjName) -> bool {
        let k = self.key(table);
        if self.per_file {
            self.in_file.contains(&k)
        } else {
            self.created.contains_key(&k)
        }
    }

    pub async fn relation(&self, live: Option<&Client>, n: &ObjName) -> Result<bool, tokio_postgres::Error> {
        let k = self.key(n);
        if self.created.contains_key(&k) {
            return Ok(true);
        }
        if self.dropped.contains(&k) {
            return Ok(false);
        }
        match live {
            Some(c) => Ok(catalog::relkind(c, n).await?.is_some()),
            None => Ok(false),
        }
    }

    pub async fn column(
        &self,
        live: Option<&Client>,
        table: &ObjName,
        column: &str,
    ) -> Result<bool, tokio_postgres::Error> {
        let (s, t) = self.key(table);
        let k = (s.clone(), t.clone(), column.to_string());
        if self.dropped_columns.contains(&k) {
            return Ok(false);
        }
        if self.added_columns.contains(&k) {
            return Ok(true);
        }
        match (self.created.get(&(s, t)), live) {
            (Some(Some(cols)), _) => Ok(cols.contains(column)),
            (Some(None), _) => Ok(true),
            (None, Some(c)) => Ok(catalog::column_of(c, table, column).await?.is_some()),
            (None, None) => Ok(false),
        }
    }

    pub async fn type_exists(
        &self,
        live: Option<&Client>,
        ty: &TypeSpec,
    ) -> Result<bool, tokio_postgres::Error> {
        let base = ty.base.trim_end_matches("[]");
        if base.starts_with("\"pg_catalog\".") {
            return Ok(true);
        }
        let parts: Vec<String> =
            base.split("\".\"").map(|p| p.trim_matches('"').replace("\"\"", "\"")).collect();
        let name = match parts.as_slice() {
            [s, n] => ObjName { schema: Some(s.clone()), name: n.clone() },
            _ => ObjName { schema: None, name: parts.last().cloned().unwrap_or_default() },
        };
        if self.types.contains(&self.key(&name))
            || (name.schema.is_none() && BUILTIN.contains(&name.name.as_str()))
        {
            return Ok(true);
        }
        match live {
            Some(c) => Ok(c.query_one("SELECT to_regtype($1) IS NOT NULL", &[&base]).await?.get(0)),
            None => Ok(false),
        }
    }

    /// What the statement creates, before its references are checked (a table may refer to itself).
    pub fn create(&mut self, node: &NodeEnum, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::CreateRelation { name, .. } => {
                    let k = self.key(name);
                    self.in_file.insert(k.clone());
                    self.dropped.remove(&k);
                    self.created.insert(k, columns_of(node));
                }
                Effect::CreateIndex { name: Some(name), .. } => {
                    let k = self.key(name);
                    self.created.insert(k, None);
                }
                Effect::AddColumn { table, column } => {
                    let (s, t) = self.key(table);
                    self.dropped_columns.remove(&(s.clone(), t.clone(), column.clone()));
                    self.added_columns.insert((s, t, column.clone()));
                }
                Effect::CreateType { name } => {
                    let k = self.key(name);
                    self.types.insert(k);
                }
                Effect::CreateExtension { name } => {
                    for t in extension_types(name) {
                        self.types.insert((self.schema.clone(), t.to_string()));
                    }
                }
                _ => {}
            }
        }
    }

    /// What the statement removes or renames, after its references were checked.
    pub fn remove(&mut self, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::DropRelation { name, .. } => {
                    let k = self.key(name);
                    self.created.remove(&k);
                    self.dropped.insert(k);
                }
                Effect::DropColumn { table, column } => self.drop_column(table, column),
                Effect::RenameRelation { from, to, .. } => {
                    let k = self.key(from);
                    let cols = self.created.remove(&k).flatten();
                    self.dropped.insert(k);
                    let to = self.key(&from.with_name(to));
                    self.dropped.remove(&to);
                    self.created.insert(to, cols);
                }
                Effect::RenameColumn { table, from, to } => {
                    self.drop_column(table, from);
                    let (s, t) = self.key(table);
                    self.added_columns.insert((s, t, to.clone()));
                }
                _ => {}
            }
        }
    }

    fn drop_column(&mut self, table: &ObjName, column: &str) {
        let (s, t) = self.key(table);
        let k = (s, t, column.to_string());
        self.added_columns.remove(&k);
        self.dropped_columns.insert(k);
    }
}

fn columns_of(node: &NodeEnum) -> Option<BTreeSet<String>> {
    let NodeEnum::CreateStmt(s) = node else { return None };
    if !s.inh_relations.is_empty() || s.of_typename.is_some() {
        return None;
    }
    Some(
        s.table_elts
            .iter()
            .filter_map(|e| match e.node.as_ref() {
                Some(NodeEnum::ColumnDef(c)) => Some(c.colname.clone()),
                _ => None,
            })
            .collect(),
    )
}
