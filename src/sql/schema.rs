//! `pg_dump --schema-only` text as objects: pg_dump heads every object with
//! `-- Name: …; Type: …; Schema: …; Owner: …`, so two dumps (a snapshot's and one taken now)
//! compare object by object. A baseline also answers what undo needs: whether an object existed
//! before the migration, a column's former type, default and nullability, a constraint's or a
//! view's former definition.

use std::collections::BTreeMap;

use pg_query::protobuf::{AlterTableType as At, ConstrType};
use pg_query::NodeEnum;
use serde::Serialize;

use super::names::{self, deparse, ObjName};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    kind: String,
    schema: String,
    name: String,
}

/// A schema dump, object by object.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    objects: BTreeMap<Key, String>,
    /// Where an unqualified name resolves (the migrations' schema); any schema when None.
    default_schema: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    /// `added`, `dropped` or `changed`.
    pub change: &'static str,
    /// pg_dump's object type: `TABLE`, `CONSTRAINT`, `FK CONSTRAINT`, `INDEX`, …
    pub kind: String,
    pub schema: String,
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

pub struct ColumnDef {
    pub type_text: String,
    pub not_null: bool,
    pub default: Option<String>,
}

impl Baseline {
    pub fn parse(dump: &str) -> Baseline {
        let mut objects = BTreeMap::new();
        let mut current: Option<(Key, String)> = None;
        for line in dump.lines() {
            if let Some(key) = header(line) {
                if let Some((k, text)) = current.take() {
                    objects.insert(k, text.trim().to_string());
                }
                current = Some((key, String::new()));
            } else if let Some((_, text)) = current.as_mut() {
                // psql meta-commands (`\restrict <random key>`) differ between two dumps.
                if !line.starts_with("--") && !line.starts_with('\\') && !line.trim().is_empty() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        if let Some((k, text)) = current {
            objects.insert(k, text.trim().to_string());
        }
        Baseline { objects, default_schema: None }
    }

    /// Unqualified names then resolve in `schema`, as the migration's did.
    pub fn resolving_in(mut self, schema: &str) -> Baseline {
        self.default_schema = Some(schema.to_string());
        self
    }

    /// Objects added, dropped or changed from `self` (before) to `now`.
    pub fn diff(&self, now: &Baseline) -> Vec<Change> {
        let mut out = Vec::new();
        let change = |c: &'static str, k: &Key, before: Option<&String>, after: Option<&String>| Change {
            change: c,
            kind: k.kind.clone(),
            schema: k.schema.clone(),
            name: k.name.clone(),
            before: before.cloned(),
            after: after.cloned(),
        };
        for (k, before) in &self.objects {
            match now.objects.get(k) {
                None => out.push(change("dropped", k, Some(before), None)),
                Some(after) if after != before => out.push(change("changed", k, Some(before), Some(after))),
                Some(_) => {}
            }
        }
        for (k, after) in &now.objects {
            if !self.objects.contains_key(k) {
                out.push(change("added", k, None, Some(after)));
            }
        }
        out
    }

    fn find(&self, kind: &str, schema: Option<&str>, name: &str) -> Option<&String> {
        // Extensions and schemas have no schema of their own ("-" in pg_dump's header).
        let fallback =
            if matches!(kind, "EXTENSION" | "SCHEMA") { None } else { self.default_schema.as_deref() };
        let schema = schema.or(fallback);
        self.objects
            .iter()
            .find(|(k, _)| k.kind == kind && k.name == name && schema.is_none_or(|s| s == k.schema))
            .map(|(_, v)| v)
    }

    /// Whether an object of pg_dump's `kind` with this name existed (no schema: any schema).
    pub fn has(&self, kind: &str, name: &ObjName) -> bool {
        self.find(kind, name.schema.as_deref(), &name.name).is_some()
    }

    /// The object's own SQL as pg_dump wrote it, to re-create it.
    pub fn definition(&self, kind: &str, name: &ObjName) -> Result<String, String> {
        let text = self.find(kind, name.schema.as_deref(), &name.name);
        let text =
            text.ok_or_else(|| format!("the snapshot holds no {} {name} to re-create", kind.to_lowercase()))?;
        Ok(first_statement(text))
    }

    /// A constraint as an `ALTER TABLE … ADD CONSTRAINT` (pg_dump writes CHECKs inside the table).
    pub fn constraint(&self, table: &ObjName, name: &str) -> Result<String, String> {
        let key = format!("{} {name}", table.name);
        let schema = table.schema.as_deref();
        if let Some(text) =
            self.find("CONSTRAINT", schema, &key).or_else(|| self.find("FK CONSTRAINT", schema, &key))
        {
            return Ok(first_statement(text));
        }
        let create = self.create_table(table).ok_or_else(|| format!("the snapshot has no table {table}"))?;
        let found = create.table_elts.iter().chain(&create.constraints).find_map(|n| match n.node.as_ref() {
            Some(NodeEnum::Constraint(c)) if c.conname == name => Some(c.clone()),
            _ => None,
        });
        let c = found
            .ok_or_else(|| format!("the snapshot has no constraint {} on {table}", names::quote(name)))?;
        Ok(format!("ALTER TABLE {table} ADD {}", constraint_text(&c)))
    }

    /// A column as the snapshot's CREATE TABLE (and separate DEFAULT) had it.
    pub fn column(&self, table: &ObjName, column: &str) -> Option<ColumnDef> {
        let create = self.create_table(table)?;
        let col = create.table_elts.iter().find_map(|n| match n.node.as_ref() {
            Some(NodeEnum::ColumnDef(c)) if c.colname == column => Some(c.clone()),
            _ => None,
        })?;
        let mut def = ColumnDef {
            type_text: col.type_name.as_ref().map(names::type_text).unwrap_or_default(),
            not_null: col.is_not_null,
            default: None,
        };
        for n in &col.constraints {
            if let Some(NodeEnum::Constraint(c)) = n.node.as_ref() {
                match ConstrType::try_from(c.contype) {
                    Ok(ConstrType::ConstrNotnull) => def.not_null = true,
                    Ok(ConstrType::ConstrDefault) => {
                        def.default = c.raw_expr.as_ref().and_then(|e| e.node.as_ref()).map(names::expr_text)
                    }
                    _ => {}
                }
            }
        }
        if def.default.is_none() {
            def.default = self.separate_default(table, column);
        }
        Some(def)
    }

    fn separate_default(&self, table: &ObjName, column: &str) -> Option<String> {
        let text = self.find("DEFAULT", table.schema.as_deref(), &format!("{} {column}", table.name))?;
        let stmts = pg_query::parse(text, pg_query::ParserOptions::DEFAULT).ok()?;
        let node = stmts.protobuf.stmts.first()?.stmt.as_ref()?.node.as_ref()?;
        let NodeEnum::AlterTableStmt(s) = node else { return None };
        s.cmds.iter().find_map(|c| match c.node.as_ref() {
            Some(NodeEnum::AlterTableCmd(c)) if c.subtype == At::AtColumnDefault as i32 => {
                c.def.as_ref().and_then(|d| d.node.as_ref()).map(names::expr_text)
            }
            _ => None,
        })
    }

    fn create_table(&self, table: &ObjName) -> Option<pg_query::protobuf::CreateStmt> {
        let text = self.find("TABLE", table.schema.as_deref(), &table.name)?;
        let parsed = pg_query::parse(text, pg_query::ParserOptions::DEFAULT).ok()?;
        parsed.protobuf.stmts.into_iter().find_map(|s| match s.stmt?.node? {
            NodeEnum::CreateStmt(c) => Some(c),
            _ => None,
        })
    }
}

fn header(line: &str) -> Option<Key> {
    let rest = line.strip_prefix("-- Name: ")?;
    let (name, rest) = rest.split_once("; Type: ")?;
    let (kind, rest) = rest.split_once("; Schema: ")?;
    let schema = rest.split_once("; Owner: ").map(|(s, _)| s).unwrap_or(rest);
    Some(Key { kind: kind.to_string(), schema: schema.to_string(), name: name.to_string() })
}

/// pg_dump follows an object with its owner and comments: the first statement is the object.
fn first_statement(text: &str) -> String {
    match pg_query::split_with_parser(text) {
        Ok(parts) => parts.first().map(|s| s.trim().to_string()).unwrap_or_default(),
        Err(_) => text.to_string(),
    }
}

/// `CONSTRAINT name CHECK (…)`, through a throw-away ALTER TABLE deparsed.
fn constraint_text(c: &pg_query::protobuf::Constraint) -> String {
    let cmd = pg_query::protobuf::AlterTableCmd {
        subtype: At::AtAddConstraint as i32,
        behavior: pg_query::protobuf::DropBehavior::DropRestrict as i32,
        def: Some(Box::new(pg_query::protobuf::Node {
            node: Some(NodeEnum::Constraint(Box::new(c.clone()))),
        })),
        ..Default::default()
    };
    let stmt = pg_query::protobuf::AlterTableStmt {
        relation: Some(pg_query::protobuf::RangeVar {
            relname: "x".into(),
            inh: true,
            relpersistence: "p".into(),
            ..Default::default()
        }),
        cmds: vec![pg_query::protobuf::Node { node: Some(NodeEnum::AlterTableCmd(Box::new(cmd))) }],
        objtype: pg_query::protobuf::ObjectType::ObjectTable as i32,
        missing_ok: false,
    };
    let text = deparse(&NodeEnum::AlterTableStmt(stmt));
    text.strip_prefix("ALTER TABLE x ADD ").unwrap_or(&text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\nCREATE TABLE public.t (\n    id integer NOT NULL,\n    note character varying(10) DEFAULT 'x'::character varying,\n    CONSTRAINT t_id_check CHECK ((id > 0))\n);\n\n--\n-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: -\n--\n\nALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n";

    #[test]
    fn objects_diff_and_lookups() {
        let before = Baseline::parse(DUMP);
        let now = Baseline::parse(&DUMP.replace("t_pkey PRIMARY KEY (id)", "t_pkey PRIMARY KEY (id, note)"));
        let diff = before.diff(&now);
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert_eq!(
            (diff[0].change, diff[0].kind.as_str(), diff[0].name.as_str()),
            ("changed", "CONSTRAINT", "t t_pkey")
        );
        let t = ObjName { schema: None, name: "t".into() };
        let col = before.column(&t, "note").unwrap();
        assert_eq!((col.type_text.as_str(), col.not_null), ("varchar(10)", false));
        assert!(col.default.unwrap().starts_with("'x'"));
        assert!(before.column(&t, "id").unwrap().not_null);
        assert!(before.constraint(&t, "t_pkey").unwrap().contains("ADD CONSTRAINT t_pkey PRIMARY KEY (id)"));
        let check = before.constraint(&t, "t_id_check").unwrap();
        assert!(check.starts_with("ALTER TABLE \"t\" ADD CONSTRAINT t_id_check CHECK"), "{check}");
    }
}
