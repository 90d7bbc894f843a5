//! Object names as the parser gives them (a schema when written, else the search path's), quoted
//! the way PostgreSQL quotes, and the small pieces of deparsing that messages and checks need.

use pg_query::protobuf::{self, a_const::Val};
use pg_query::{DeparseOptions, NodeEnum};

/// A possibly schema-qualified name, unquoted; the search path decides when `schema` is None.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjName {
    pub schema: Option<String>,
    pub name: String,
}

impl ObjName {
    /// `"schema"."name"` or `"name"`: ready for SQL and for `to_regclass`.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote(s), quote(&self.name)),
            None => quote(&self.name),
        }
    }

    /// Qualified with `schema` when it was not: the name as the migration's search path saw it.
    pub fn qualified_in(&self, schema: &str) -> ObjName {
        ObjName {
            schema: Some(self.schema.clone().unwrap_or_else(|| schema.to_string())),
            name: self.name.clone(),
        }
    }

    /// The same name with another last part (a rename's target, an index beside its table).
    pub fn with_name(&self, name: &str) -> ObjName {
        ObjName { schema: self.schema.clone(), name: name.to_string() }
    }
}

impl std::fmt::Display for ObjName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sql())
    }
}

/// Always quoted: a name is never mistaken for a keyword and keeps its case.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub fn from_range(r: &protobuf::RangeVar) -> ObjName {
    let schema = (!r.schemaname.is_empty()).then(|| r.schemaname.clone());
    ObjName { schema, name: r.relname.clone() }
}

/// `["schema", "name"]` or `["name"]` (type names, function names, dropped objects).
pub fn from_list(list: &[protobuf::Node]) -> ObjName {
    let mut parts: Vec<String> = list.iter().filter_map(string).collect();
    let name = parts.pop().unwrap_or_default();
    ObjName { schema: parts.pop(), name }
}

/// A DROP's object: a list of names, or a type name.
pub fn from_object(node: &protobuf::Node) -> Option<ObjName> {
    match node.node.as_ref()? {
        NodeEnum::List(l) => Some(from_list(&l.items)),
        NodeEnum::TypeName(t) => Some(from_list(&t.names)),
        NodeEnum::String(s) => Some(ObjName { schema: None, name: s.sval.clone() }),
        _ => None,
    }
}

/// The objects a DROP names.
pub fn drop_objects(s: &protobuf::DropStmt) -> Vec<ObjName> {
    s.objects.iter().filter_map(from_object).collect()
}

pub fn string(node: &protobuf::Node) -> Option<String> {
    match node.node.as_ref()? {
        NodeEnum::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

pub fn int(node: &protobuf::Node) -> Option<i32> {
    match node.node.as_ref()? {
        NodeEnum::Integer(i) => Some(i.ival),
        NodeEnum::AConst(c) => match &c.val {
            Some(Val::Ival(i)) => Some(i.ival),
            _ => None,
        },
        _ => None,
    }
}

/// One statement back to SQL (PostgreSQL's own spelling; comments are not kept).
pub fn deparse(node: &NodeEnum) -> String {
    node.deparse(DeparseOptions::default()).unwrap_or_else(|e| format!("/* cannot deparse: {e} */"))
}

/// An expression as SQL, through `SELECT <expr>`.
pub fn expr_text(expr: &NodeEnum) -> String {
    let target = protobuf::ResTarget {
        val: Some(Box::new(protobuf::Node { node: Some(expr.clone()) })),
        ..Default::default()
    };
    // Enum fields are 0 ("undefined") by default, which libpg_query refuses: set them.
    let select = protobuf::SelectStmt {
        target_list: vec![protobuf::Node { node: Some(NodeEnum::ResTarget(Box::new(target))) }],
        op: protobuf::SetOperation::SetopNone as i32,
        limit_option: protobuf::LimitOption::Default as i32,
        ..Default::default()
    };
    let text = deparse(&NodeEnum::SelectStmt(Box::new(select)));
    text.strip_prefix("SELECT ").unwrap_or(&text).to_string()
}

/// A type as SQL, through `NULL::<type>`.
pub fn type_text(t: &protobuf::TypeName) -> String {
    let null = protobuf::AConst { isnull: true, ..Default::default() };
    let cast = protobuf::TypeCast {
        arg: Some(Box::new(protobuf::Node { node: Some(NodeEnum::AConst(null)) })),
        type_name: Some(t.clone()),
        location: 0,
    };
    let text = expr_text(&NodeEnum::TypeCast(Box::new(cast)));
    if let Some(t) = text.strip_prefix("NULL::") {
        return t.to_string();
    }
    text.strip_prefix("CAST(NULL AS ").and_then(|t| t.strip_suffix(')')).unwrap_or(&text).to_string()
}
