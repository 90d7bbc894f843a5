//! What a migration touches, by name: the relations, types, extensions and schemas its
//! statements' effects name. The replay reads these (and what live and the baseline differ in)
//! after each statement; `shape` is the catalog's description itself.

use std::collections::BTreeSet;

use super::names::ObjName;
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
