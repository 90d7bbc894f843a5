//! What a statement refers to that must already exist: the tables it alters, indexes or points
//! foreign keys at, the columns it names on them, the types of the columns it defines. `lint`
//! checks each against the live schema and the statements before it. A reference the statement
//! itself guards (`IF EXISTS`) is not one.

use pg_query::protobuf::{self, AlterTableType as At, ConstrType, ObjectType};
use pg_query::NodeEnum;

use super::names::{self, ObjName};
use super::parse::{type_spec, TypeSpec};

#[derive(Debug, Clone)]
pub enum Ref {
    Relation { name: ObjName, at: i32 },
    Column { table: ObjName, column: String, at: i32 },
    Type { ty: TypeSpec, at: i32 },
}

pub fn references(node: &NodeEnum) -> Vec<Ref> {
    let mut out = Vec::new();
    match node {
        NodeEnum::CreateStmt(s) => {
            let Some(table) = s.relation.as_ref().map(names::from_range) else { return out };
            for e in s.table_elts.iter().chain(&s.constraints) {
                match e.node.as_ref() {
                    Some(NodeEnum::ColumnDef(c)) => column_def(c, &mut out),
                    Some(NodeEnum::Constraint(c)) => constraint(&table, c, &mut out),
                    _ => {}
                }
            }
        }
        NodeEnum::AlterTableStmt(s) if !s.missing_ok && s.objtype == ObjectType::ObjectTable as i32 => {
            let Some(r) = s.relation.as_ref() else { return out };
            let table = names::from_range(r);
            out.push(Ref::Relation { name: table.clone(), at: r.location });
            for c in &s.cmds {
                if let Some(NodeEnum::AlterTableCmd(cmd)) = c.node.as_ref() {
                    alter_cmd(&table, cmd, r.location, &mut out);
                }
            }
        }
        NodeEnum::IndexStmt(s) => {
            let Some(r) = s.relation.as_ref() else { return out };
            let table = names::from_range(r);
            out.push(Ref::Relation { name: table.clone(), at: r.location });
            for p in &s.index_params {
                if let Some(NodeEnum::IndexElem(e)) = p.node.as_ref() {
                    if !e.name.is_empty() {
                        out.push(Ref::Column {
                            table: table.clone(),
                            column: e.name.clone(),
                            at: r.location,
                        });
                    }
                }
            }
        }
        NodeEnum::RenameStmt(s) if !s.missing_ok => {
            if let Some(r) = s.relation.as_ref() {
                let table = names::from_range(r);
                out.push(Ref::Relation { name: table.clone(), at: r.location });
                if s.rename_type == ObjectType::ObjectColumn as i32 {
                    out.push(Ref::Column { table, column: s.subname.clone(), at: r.location });
                }
            }
        }
        NodeEnum::DropStmt(s) if !s.missing_ok => {
            let relation = [
                ObjectType::ObjectTable,
                ObjectType::ObjectView,
                ObjectType::ObjectIndex,
                ObjectType::ObjectSequence,
            ]
            .iter()
            .any(|t| *t as i32 == s.remove_type);
            for o in &s.objects {
                if let (true, Some(name)) = (relation, names::from_object(o)) {
                    out.push(Ref::Relation { name, at: -1 });
                }
            }
        }
        _ => {}
    }
    out
}

fn column_def(c: &protobuf::ColumnDef, out: &mut Vec<Ref>) {
    if let Some(t) = &c.type_name {
        out.push(Ref::Type { ty: type_spec(t), at: t.location });
    }
    for k in &c.constraints {
        if let Some(NodeEnum::Constraint(k)) = k.node.as_ref() {
            if k.contype == ConstrType::ConstrForeign as i32 {
                foreign(k, out);
            }
        }
    }
}

fn constraint(table: &ObjName, c: &protobuf::Constraint, out: &mut Vec<Ref>) {
    let keys = if c.contype == ConstrType::ConstrForeign as i32 { &c.fk_attrs } else { &c.keys };
    for k in keys.iter().filter_map(names::string) {
        out.push(Ref::Column { table: table.clone(), column: k, at: c.location });
    }
    if c.contype == ConstrType::ConstrForeign as i32 {
        foreign(c, out);
    }
}

/// The referenced table and its columns.
fn foreign(c: &protobuf::Constraint, out: &mut Vec<Ref>) {
    let Some(pk) = c.pktable.as_ref() else { return };
    let target = names::from_range(pk);
    out.push(Ref::Relation { name: target.clone(), at: pk.location });
    for col in c.pk_attrs.iter().filter_map(names::string) {
        out.push(Ref::Column { table: target.clone(), column: col, at: pk.location });
    }
}

fn alter_cmd(table: &ObjName, cmd: &protobuf::AlterTableCmd, at: i32, out: &mut Vec<Ref>) {
    let def = cmd.def.as_ref().and_then(|d| d.node.as_ref());
    let column = || Ref::Column { table: table.clone(), column: cmd.name.clone(), at };
    match At::try_from(cmd.subtype).unwrap_or(At::Undefined) {
        At::AtAddColumn => {
            if let Some(NodeEnum::ColumnDef(c)) = def {
                column_def(c, out);
            }
        }
        At::AtDropColumn if !cmd.missing_ok => out.push(column()),
        At::AtAlterColumnType => {
            out.push(column());
            if let Some(NodeEnum::ColumnDef(c)) = def {
                if let Some(t) = &c.type_name {
                    out.push(Ref::Type { ty: type_spec(t), at: t.location });
                }
            }
        }
        At::AtColumnDefault | At::AtSetNotNull | At::AtDropNotNull => out.push(column()),
        At::AtAddConstraint => {
            if let Some(NodeEnum::Constraint(c)) = def {
                constraint(table, c, out);
            }
        }
        _ => {}
    }
}
