//! A migration file split into statements by PostgreSQL's own parser (libpg_query, through the
//! `pg_query` crate), each with its line and the catalog effects it has: what `diagnose` checks,
//! what `finish` makes idempotent and what `undo` inverts. A statement pgmedic cannot read the
//! effect of (data changes, `DO` blocks, functions) gets an `Unknown` effect saying why.

use pg_query::protobuf::{self, AlterTableType as At, ConstrType, ObjectType};
use pg_query::NodeEnum;

use super::names::{self, ObjName};
use super::SqlError;

#[derive(Debug, Clone)]
pub struct Statement {
    /// 1-based position in the file.
    pub index: usize,
    /// 1-based line of its first token.
    pub line: usize,
    /// Its text as written (without the terminating semicolon).
    pub sql: String,
    pub node: NodeEnum,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelKind {
    Table,
    View,
    MatView,
    Sequence,
    Index,
}

impl RelKind {
    pub fn word(self) -> &'static str {
        match self {
            RelKind::Table => "TABLE",
            RelKind::View => "VIEW",
            RelKind::MatView => "MATERIALIZED VIEW",
            RelKind::Sequence => "SEQUENCE",
            RelKind::Index => "INDEX",
        }
    }
    /// `pg_class.relkind` values that count as this kind.
    pub fn relkinds(self) -> &'static str {
        match self {
            RelKind::Table => "rp",
            RelKind::View => "v",
            RelKind::MatView => "m",
            RelKind::Sequence => "S",
            RelKind::Index => "iI",
        }
    }
}

/// A type as written, resolvable by the catalog: `to_regtype(base)` and its typmod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpec {
    pub base: String,
    pub typmod: Option<i32>,
    /// As written, for messages and drafted SQL.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    CreateRelation {
        kind: RelKind,
        name: ObjName,
        replace: bool,
    },
    DropRelation {
        kind: RelKind,
        name: ObjName,
    },
    CreateIndex {
        table: ObjName,
        name: Option<ObjName>,
        concurrent: bool,
    },
    AddColumn {
        table: ObjName,
        column: String,
    },
    DropColumn {
        table: ObjName,
        column: String,
    },
    AlterType {
        table: ObjName,
        column: String,
        to: TypeSpec,
    },
    SetDefault {
        table: ObjName,
        column: String,
        expr: String,
    },
    DropDefault {
        table: ObjName,
        column: String,
    },
    SetNotNull {
        table: ObjName,
        column: String,
    },
    DropNotNull {
        table: ObjName,
        column: String,
    },
    AddConstraint {
        table: ObjName,
        name: Option<String>,
        contype: char,
        columns: Vec<String>,
    },
    DropConstraint {
        table: ObjName,
        name: String,
    },
    CreateType {
        name: ObjName,
    },
    DropType {
        name: ObjName,
    },
    AddEnumValue {
        name: ObjName,
        value: String,
    },
    RenameRelation {
        kind: RelKind,
        from: ObjName,
        to: String,
    },
    RenameColumn {
        table: ObjName,
        from: String,
        to: String,
    },
    RenameConstraint {
        table: ObjName,
        from: String,
        to: String,
    },
    CreateExtension {
        name: String,
    },
    DropExtension {
        name: String,
    },
    CreateSchema {
        name: String,
    },
    CreateFunction {
        name: ObjName,
    },
    /// Data changed (a table the statement writes to), for undo's "dropped with the table" rule.
    Data {
        table: Option<ObjName>,
        why: String,
    },
    Unknown {
        why: String,
    },
}

/// Parses a whole file; an error names the line where PostgreSQL's parser stopped.
pub fn parse(sql: &str) -> Result<Vec<Statement>, SqlError> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| SqlError::Parse { message: e.to_string(), line: error_line(sql, &e.to_string()) })?;
    let mut out = Vec::new();
    for raw in parsed.protobuf.stmts {
        let Some(node) = raw.stmt.and_then(|n| n.node) else { continue };
        let start = usize::try_from(raw.stmt_location).unwrap_or(0).min(sql.len());
        let end = match usize::try_from(raw.stmt_len).unwrap_or(0) {
            0 => sql.len(),
            len => (start + len).min(sql.len()),
        };
        let (text, offset) = trim_leading(&sql[start..end]);
        let line = sql[..start + offset].matches('\n').count() + 1;
        let effects = effects(&node);
        out.push(Statement { index: out.len() + 1, line, sql: text.trim_end().to_string(), node, effects });
    }
    Ok(out)
}

/// The statement without the whitespace and comments before it, and how much was cut.
fn trim_leading(text: &str) -> (&str, usize) {
    let mut rest = text;
    loop {
        let t = rest.trim_start();
        if let Some(comment) = t.strip_prefix("--") {
            rest = comment.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(comment) = t.strip_prefix("/*") {
            rest = comment.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            rest = t;
            break;
        }
    }
    (rest, text.len() - rest.len())
}

/// libpg_query reports no position; find the token it names when it names one.
fn error_line(sql: &str, message: &str) -> Option<usize> {
    let token = message.split("at or near \"").nth(1)?.split('"').next()?;
    let at = sql.find(token)?;
    Some(sql[..at].matches('\n').count() + 1)
}

fn effects(node: &NodeEnum) -> Vec<Effect> {
    use NodeEnum as N;
    let unknown = |why: &str| vec![Effect::Unknown { why: why.into() }];
    match node {
        N::CreateStmt(s) => rel(s.relation.as_ref(), RelKind::Table, false),
        N::CreateTableAsStmt(s) => {
            let kind =
                if s.objtype == ObjectType::ObjectMatview as i32 { RelKind::MatView } else { RelKind::Table };
            let name = s.into.as_ref().and_then(|i| i.rel.as_ref());
            rel(name, kind, false)
        }
        N::ViewStmt(s) => rel(s.view.as_ref(), RelKind::View, s.replace),
        N::CreateSeqStmt(s) => rel(s.sequence.as_ref(), RelKind::Sequence, false),
        N::IndexStmt(s) => index(s),
        N::AlterTableStmt(s) => alter_table(s),
        N::DropStmt(s) => drop(s),
        N::RenameStmt(s) => rename(s),
        N::CreateEnumStmt(s) => vec![Effect::CreateType { name: names::from_list(&s.type_name) }],
        N::CompositeTypeStmt(s) => match &s.typevar {
            Some(r) => vec![Effect::CreateType { name: names::from_range(r) }],
            None => unknown("a composite type without a name"),
        },
        N::CreateDomainStmt(s) => vec![Effect::CreateType { name: names::from_list(&s.domainname) }],
        N::AlterEnumStmt(s) if s.old_val.is_empty() => {
            vec![Effect::AddEnumValue { name: names::from_list(&s.type_name), value: s.new_val.clone() }]
        }
        N::CreateExtensionStmt(s) => vec![Effect::CreateExtension { name: s.extname.clone() }],
        N::CreateSchemaStmt(s) => vec![Effect::CreateSchema { name: s.schemaname.clone() }],
        N::CreateFunctionStmt(s) => vec![Effect::CreateFunction { name: names::from_list(&s.funcname) }],
        N::InsertStmt(s) => data(s.relation.as_ref(), "INSERT"),
        N::UpdateStmt(s) => data(s.relation.as_ref(), "UPDATE"),
        N::DeleteStmt(s) => data(s.relation.as_ref(), "DELETE"),
        N::CopyStmt(s) => data(s.relation.as_ref(), "COPY"),
        N::DoStmt(_) => unknown("a DO block's effects cannot be read from the catalog"),
        N::SelectStmt(_) => unknown("a SELECT may call functions with side effects"),
        N::VariableSetStmt(_) => unknown("sets a session setting only"),
        N::TransactionStmt(_) => unknown("transaction control"),
        N::CommentStmt(_) => unknown("a comment is not checked"),
        N::GrantStmt(_) => unknown("privileges are not checked"),
        _ => unknown("pgmedic does not read this kind of statement from the catalog"),
    }
}

fn rel(r: Option<&protobuf::RangeVar>, kind: RelKind, replace: bool) -> Vec<Effect> {
    match r {
        Some(r) => vec![Effect::CreateRelation { kind, name: names::from_range(r), replace }],
        None => vec![Effect::Unknown { why: "no relation named".into() }],
    }
}

fn data(r: Option<&protobuf::RangeVar>, verb: &str) -> Vec<Effect> {
    let why = format!("{verb} changes data, which the catalog does not show");
    vec![Effect::Data { table: r.map(names::from_range), why }]
}

fn index(s: &protobuf::IndexStmt) -> Vec<Effect> {
    let Some(table) = s.relation.as_ref().map(names::from_range) else {
        return vec![Effect::Unknown { why: "an index without a table".into() }];
    };
    // An index lives in its table's schema.
    let name =
        (!s.idxname.is_empty()).then(|| ObjName { schema: table.schema.clone(), name: s.idxname.clone() });
    vec![Effect::CreateIndex { table, name, concurrent: s.concurrent }]
}

fn alter_table(s: &protobuf::AlterTableStmt) -> Vec<Effect> {
    let Some(table) = s.relation.as_ref().map(names::from_range) else {
        return vec![Effect::Unknown { why: "ALTER without a relation".into() }];
    };
    if s.objtype != ObjectType::ObjectTable as i32 {
        return vec![Effect::Unknown { why: "ALTER of a non-table relation is not checked".into() }];
    }
    s.cmds
        .iter()
        .filter_map(|c| match &c.node {
            Some(NodeEnum::AlterTableCmd(cmd)) => Some(alter_cmd(&table, cmd)),
            _ => None,
        })
        .collect()
}

fn alter_cmd(table: &ObjName, cmd: &protobuf::AlterTableCmd) -> Effect {
    let (t, column) = (table.clone(), cmd.name.clone());
    let def = cmd.def.as_ref().and_then(|d| d.node.as_ref());
    match At::try_from(cmd.subtype).unwrap_or(At::Undefined) {
        At::AtAddColumn => match def {
            Some(NodeEnum::ColumnDef(c)) => Effect::AddColumn { table: t, column: c.colname.clone() },
            _ => Effect::Unknown { why: "ADD COLUMN without a definition".into() },
        },
        At::AtDropColumn => Effect::DropColumn { table: t, column },
        At::AtAlterColumnType => match def {
            Some(NodeEnum::ColumnDef(c)) => match c.type_name.as_ref().map(type_spec) {
                Some(to) => Effect::AlterType { table: t, column, to },
                None => Effect::Unknown { why: "TYPE without a type".into() },
            },
            _ => Effect::Unknown { why: "TYPE without a type".into() },
        },
        At::AtColumnDefault => match def {
            Some(expr) => Effect::SetDefault { table: t, column, expr: names::expr_text(expr) },
            None => Effect::DropDefault { table: t, column },
        },
        At::AtSetNotNull => Effect::SetNotNull { table: t, column },
        At::AtDropNotNull => Effect::DropNotNull { table: t, column },
        At::AtAddConstraint => match def {
            Some(NodeEnum::Constraint(c)) => constraint(t, c),
            _ => Effect::Unknown { why: "ADD CONSTRAINT without a definition".into() },
        },
        At::AtDropConstraint => Effect::DropConstraint { table: t, name: cmd.name.clone() },
        other => Effect::Unknown { why: format!("{} is not checked", other.as_str_name()) },
    }
}

fn constraint(table: ObjName, c: &protobuf::Constraint) -> Effect {
    let contype = match ConstrType::try_from(c.contype).unwrap_or(ConstrType::Undefined) {
        ConstrType::ConstrPrimary => 'p',
        ConstrType::ConstrUnique => 'u',
        ConstrType::ConstrForeign => 'f',
        ConstrType::ConstrCheck => 'c',
        ConstrType::ConstrExclusion => 'x',
        _ => return Effect::Unknown { why: "this constraint kind is not checked".into() },
    };
    let keys = if contype == 'f' { &c.fk_attrs } else { &c.keys };
    let columns = keys.iter().filter_map(names::string).collect();
    let name = (!c.conname.is_empty()).then(|| c.conname.clone());
    Effect::AddConstraint { table, name, contype, columns }
}

fn drop(s: &protobuf::DropStmt) -> Vec<Effect> {
    let kind = match ObjectType::try_from(s.remove_type).unwrap_or(ObjectType::Undefined) {
        ObjectType::ObjectTable => Some(RelKind::Table),
        ObjectType::ObjectView => Some(RelKind::View),
        ObjectType::ObjectMatview => Some(RelKind::MatView),
        ObjectType::ObjectSequence => Some(RelKind::Sequence),
        ObjectType::ObjectIndex => Some(RelKind::Index),
        ObjectType::ObjectType | ObjectType::ObjectDomain => None,
        ObjectType::ObjectExtension => {
            return s
                .objects
                .iter()
                .filter_map(names::string)
                .map(|name| Effect::DropExtension { name })
                .collect()
        }
        _ => return vec![Effect::Unknown { why: "this kind of DROP is not checked".into() }],
    };
    s.objects
        .iter()
        .map(|o| match (kind, names::from_object(o)) {
            (Some(kind), Some(name)) => Effect::DropRelation { kind, name },
            (None, Some(name)) => Effect::DropType { name },
            (_, None) => Effect::Unknown { why: "a dropped object pgmedic cannot name".into() },
        })
        .collect()
}

fn rename(s: &protobuf::RenameStmt) -> Vec<Effect> {
    let kind = |t: ObjectType| match t {
        ObjectType::ObjectTable => Some(RelKind::Table),
        ObjectType::ObjectView => Some(RelKind::View),
        ObjectType::ObjectMatview => Some(RelKind::MatView),
        ObjectType::ObjectSequence => Some(RelKind::Sequence),
        ObjectType::ObjectIndex => Some(RelKind::Index),
        _ => None,
    };
    let Some(rel) = s.relation.as_ref().map(names::from_range) else {
        return vec![Effect::Unknown { why: "this kind of RENAME is not checked".into() }];
    };
    let to = s.newname.clone();
    let effect = match ObjectType::try_from(s.rename_type).unwrap_or(ObjectType::Undefined) {
        ObjectType::ObjectColumn => Effect::RenameColumn { table: rel, from: s.subname.clone(), to },
        ObjectType::ObjectTabconstraint => {
            Effect::RenameConstraint { table: rel, from: s.subname.clone(), to }
        }
        t => match kind(t) {
            Some(kind) => Effect::RenameRelation { kind, from: rel, to },
            None => Effect::Unknown { why: "this kind of RENAME is not checked".into() },
        },
    };
    vec![effect]
}

/// The base type's name and its typmod, computed as PostgreSQL does for the common types.
pub fn type_spec(t: &protobuf::TypeName) -> TypeSpec {
    let parts: Vec<String> = t.names.iter().filter_map(names::string).collect();
    let mut base = parts.iter().map(|p| names::quote(p)).collect::<Vec<_>>().join(".");
    let mods: Vec<i32> = t.typmods.iter().filter_map(names::int).collect();
    let last = parts.last().map(String::as_str).unwrap_or("");
    let typmod = match (last, mods.as_slice()) {
        (_, []) => None,
        ("varchar" | "bpchar" | "char" | "character varying" | "character", [n, ..]) => Some(n + 4),
        ("numeric" | "decimal", [p]) => Some((p << 16) + 4),
        ("numeric" | "decimal", [p, s, ..]) => Some(((p << 16) | (s & 0xffff)) + 4),
        (_, [n, ..]) => Some(*n),
    };
    if !t.array_bounds.is_empty() {
        base.push_str("[]");
    }
    let text = names::type_text(t);
    TypeSpec { base, typmod, text }
}
