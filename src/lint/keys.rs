//! `unindexed-foreign-key`: every foreign key the migrations add, and every index (or primary
//! key, or unique constraint) they or the live database have; a key whose columns no index leads
//! with makes each delete or key update of the referenced table scan this one, under lock.

use pg_query::protobuf::{self, ConstrType};
use pg_query::NodeEnum;
use tokio_postgres::Client;

use super::{Finding, Severity};
use crate::sql::names::{self, ObjName};

struct Fk {
    table: ObjName,
    columns: Vec<String>,
    file: String,
    line: usize,
}

/// What the migrations declared, statement after statement.
#[derive(Default)]
pub struct Keys {
    fks: Vec<Fk>,
    /// (table, leading columns) of each index the migrations create.
    indexes: Vec<(ObjName, Vec<String>)>,
    /// (name, file, line) of each named index the migrations create.
    pub named: Vec<(String, String, usize)>,
}

fn strings(list: &[protobuf::Node]) -> Vec<String> {
    list.iter().filter_map(names::string).collect()
}

fn index_columns(params: &[protobuf::Node]) -> Vec<String> {
    params
        .iter()
        .map_while(|p| match p.node.as_ref() {
            Some(NodeEnum::IndexElem(e)) if !e.name.is_empty() => Some(e.name.clone()),
            _ => None,
        })
        .collect()
}

impl Keys {
    /// Notes the keys and indexes of one statement (`table`: the qualified name resolver).
    pub fn observe(
        &mut self,
        node: &NodeEnum,
        file: &str,
        line: usize,
        qualify: &dyn Fn(ObjName) -> ObjName,
    ) {
        match node {
            NodeEnum::IndexStmt(s) => {
                if !s.idxname.is_empty() {
                    self.named.push((s.idxname.clone(), file.into(), line));
                }
                if let Some(r) = &s.relation {
                    self.indexes.push((qualify(names::from_range(r)), index_columns(&s.index_params)));
                }
            }
            NodeEnum::CreateStmt(s) => {
                let Some(r) = &s.relation else { return };
                let table = qualify(names::from_range(r));
                for n in s.table_elts.iter().chain(&s.constraints) {
                    match n.node.as_ref() {
                        Some(NodeEnum::Constraint(k)) => self.constraint(&table, k, &[], file, line),
                        Some(NodeEnum::ColumnDef(c)) => {
                            for k in c.constraints.iter().filter_map(|k| match k.node.as_ref() {
                                Some(NodeEnum::Constraint(k)) => Some(k),
                                _ => None,
                            }) {
                                self.constraint(&table, k, std::slice::from_ref(&c.colname), file, line);
                            }
                        }
                        _ => {}
                    }
                }
            }
            NodeEnum::AlterTableStmt(s) => {
                let Some(r) = &s.relation else { return };
                let table = qualify(names::from_range(r));
                for c in &s.cmds {
                    let Some(NodeEnum::AlterTableCmd(cmd)) = c.node.as_ref() else { continue };
                    if let Some(NodeEnum::Constraint(k)) = cmd.def.as_ref().and_then(|d| d.node.as_ref()) {
                        self.constraint(&table, k, &[], file, line);
                    }
                }
            }
            _ => {}
        }
    }

    /// A constraint of `table`; `column` is the column it is declared on, for a column constraint.
    fn constraint(
        &mut self,
        table: &ObjName,
        k: &protobuf::Constraint,
        column: &[String],
        file: &str,
        line: usize,
    ) {
        let cols = |list: &[protobuf::Node]| if list.is_empty() { column.to_vec() } else { strings(list) };
        match ConstrType::try_from(k.contype) {
            Ok(ConstrType::ConstrForeign) => {
                let columns = cols(&k.fk_attrs);
                self.fks.push(Fk { table: table.clone(), columns, file: file.into(), line });
            }
            Ok(ConstrType::ConstrPrimary | ConstrType::ConstrUnique) => {
                self.indexes.push((table.clone(), cols(&k.keys)));
            }
            _ => {}
        }
    }

    /// A finding for each foreign key that no index of the migrations or the live table leads with.
    pub async fn unindexed(&self, live: Option<&Client>) -> Result<Vec<Finding>, tokio_postgres::Error> {
        let mut out = Vec::new();
        for fk in &self.fks {
            let leads = |cols: &[String]| {
                cols.len() >= fk.columns.len()
                    && fk.columns.iter().all(|c| cols[..fk.columns.len()].contains(c))
            };
            if self.indexes.iter().any(|(t, cols)| *t == fk.table && leads(cols)) {
                continue;
            }
            if let Some(c) = live {
                let q = "SELECT (SELECT array_agg(a.attname::text ORDER BY k.i) FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(n, i) \
                         JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n) FROM pg_index x WHERE x.indrelid = to_regclass($1)";
                let rows = c.query(q, &[&fk.table.sql()]).await?;
                if rows.iter().any(|r| r.get::<_, Option<Vec<String>>>(0).is_some_and(|cols| leads(&cols))) {
                    continue;
                }
            }
            let cols = fk.columns.join(", ");
            out.push(Finding {
                rule: "unindexed-foreign-key",
                severity: Severity::Warning,
                file: fk.file.clone(),
                line: fk.line,
                message: format!("the foreign key on {} ({cols}) has no index leading with its columns: each delete or key update of the referenced row scans {}", fk.table, fk.table),
                fix: format!("CREATE INDEX CONCURRENTLY … ON {} ({cols})", fk.table),
            });
        }
        Ok(out)
    }
}
