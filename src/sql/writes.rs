//! Which tables' rows a statement may change: what a scoped pre-repair snapshot must hold so
//! that restoring it puts back everything a repair step can have lost. Judged from PostgreSQL's
//! own parse tree, conservatively: an `ALTER TABLE` counts as writing its table unless every
//! command is one that keeps the rows (a new column, a constraint, a default…), a `DROP TABLE`
//! writes what it drops, DML writes its targets (CTEs included). What cannot be bounded from
//! the text — `DO`, `CALL`, `CASCADE`, an extension's script, a statement kind not listed here —
//! is an error saying why, and the caller takes a full snapshot. The functions a statement calls
//! are returned for the caller to judge against the catalog (a user function may write anything).

use pg_query::protobuf::{AlterTableType as At, DropBehavior, ObjectType};
use pg_query::NodeEnum;

use super::names::{self, ObjName};
use super::parse::Statement;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Writes {
    /// Tables whose rows the statements may change or remove.
    pub tables: Vec<ObjName>,
    /// Tables the statements create (an undo drops them with whatever rows they hold by then).
    pub created: Vec<ObjName>,
    /// Functions called, as written (`now`, `pg_catalog.setval`, `app.touch`).
    pub functions: Vec<String>,
}

/// The writes of `stmts`, or why they cannot be bounded.
pub fn writes(stmts: &[Statement]) -> Result<Writes, String> {
    let mut out = Writes::default();
    for s in stmts {
        one(s, &mut out).map_err(|why| format!("statement {} (line {}): {why}", s.index, s.line))?;
        let parsed = pg_query::parse(&s.sql, pg_query::ParserOptions::DEFAULT).map_err(|e| e.to_string())?;
        out.functions.extend(parsed.call_functions());
    }
    for list in [&mut out.tables, &mut out.created] {
        list.sort();
        list.dedup();
    }
    out.functions.sort();
    out.functions.dedup();
    Ok(out)
}

fn one(s: &Statement, out: &mut Writes) -> Result<(), String> {
    use NodeEnum as N;
    match &s.node {
        N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_) | N::SelectStmt(_) => {
            dml(&s.node, &mut out.tables)
        }
        N::TruncateStmt(t) => {
            if t.behavior == DropBehavior::DropCascade as i32 {
                return Err("TRUNCATE … CASCADE empties every table that refers to these".into());
            }
            out.tables.extend(t.relations.iter().filter_map(range));
        }
        N::CopyStmt(c) if c.is_program => return Err("COPY … PROGRAM runs a program on the server".into()),
        N::CopyStmt(c) => {
            if c.is_from {
                out.tables.extend(c.relation.as_ref().map(names::from_range));
            }
        }
        N::DropStmt(d) => {
            if d.behavior == DropBehavior::DropCascade as i32 {
                return Err("DROP … CASCADE drops whatever depends on it".into());
            }
            match ObjectType::try_from(d.remove_type) {
                Ok(ObjectType::ObjectTable | ObjectType::ObjectForeignTable) => {
                    out.tables.extend(d.objects.iter().filter_map(names::from_object))
                }
                Ok(ObjectType::ObjectSchema | ObjectType::ObjectExtension) => {
                    return Err("dropping a schema or an extension may drop tables".into())
                }
                _ => {}
            }
        }
        N::AlterTableStmt(a) if a.objtype == ObjectType::ObjectTable as i32 => {
            let keeps_rows = a.cmds.iter().all(|c| match c.node.as_ref() {
                Some(N::AlterTableCmd(cmd)) => keeps(cmd.subtype),
                _ => false,
            });
            if !keeps_rows {
                out.tables.extend(a.relation.as_ref().map(names::from_range));
            }
        }
        N::CreateStmt(c) => out.created.extend(c.relation.as_ref().map(names::from_range)),
        N::DoStmt(_) => return Err("a DO block may change any table".into()),
        N::CallStmt(_) => return Err("CALL runs a procedure that may change any table".into()),
        N::CreateExtensionStmt(_) | N::AlterExtensionStmt(_) => {
            return Err("an extension's script may change any table".into())
        }
        node if schema_only(node) => {}
        other => {
            let kind = format!("{other:?}");
            let kind = kind.split('(').next().unwrap_or("statement");
            return Err(format!("pgmedic cannot tell which rows a {kind} may change"));
        }
    }
    Ok(())
}

/// Statements that change the schema but no existing row (or nothing at all).
fn schema_only(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    matches!(
        node,
        N::AlterTableStmt(_) // of an index, a sequence, a view (tables are matched before)
            | N::CreateTableAsStmt(_)
            | N::IndexStmt(_)
            | N::ViewStmt(_)
            | N::CreateSeqStmt(_)
            | N::AlterSeqStmt(_)
            | N::CommentStmt(_)
            | N::GrantStmt(_)
            | N::GrantRoleStmt(_)
            | N::RenameStmt(_)
            | N::AlterObjectSchemaStmt(_)
            | N::AlterOwnerStmt(_)
            | N::CreateEnumStmt(_)
            | N::AlterEnumStmt(_)
            | N::CreateDomainStmt(_)
            | N::CompositeTypeStmt(_)
            | N::DefineStmt(_)
            | N::CreateFunctionStmt(_)
            | N::CreateTrigStmt(_)
            | N::CreatePolicyStmt(_)
            | N::AlterPolicyStmt(_)
            | N::CreateSchemaStmt(_)
            | N::CreateStatsStmt(_)
            | N::VariableSetStmt(_)
            | N::TransactionStmt(_)
            | N::LockStmt(_)
            | N::VacuumStmt(_)
            | N::ReindexStmt(_)
            | N::ClusterStmt(_)
            | N::RefreshMatViewStmt(_)
            | N::NotifyStmt(_)
            | N::ExplainStmt(_)
    )
}

/// ALTER TABLE commands that keep every row as it was.
fn keeps(subtype: i32) -> bool {
    let Ok(t) = At::try_from(subtype) else { return false };
    !matches!(
        t,
        At::AtDropColumn
            | At::AtAlterColumnType
            | At::AtSetExpression
            | At::AtDropExpression
            | At::AtAttachPartition
            | At::AtDetachPartition
            | At::AtDetachPartitionFinalize
            | At::AtAddInherit
            | At::AtDropInherit
            | At::AtSetAccessMethod
            | At::Undefined
    )
}

fn range(n: &pg_query::protobuf::Node) -> Option<ObjName> {
    match n.node.as_ref() {
        Some(NodeEnum::RangeVar(r)) => Some(names::from_range(r)),
        _ => None,
    }
}

/// The targets of a DML statement and of the data-modifying CTEs under it, at any depth.
fn dml(node: &NodeEnum, out: &mut Vec<ObjName>) {
    use NodeEnum as N;
    let (target, with) = match node {
        N::InsertStmt(s) => (s.relation.as_ref(), s.with_clause.as_ref()),
        N::UpdateStmt(s) => (s.relation.as_ref(), s.with_clause.as_ref()),
        N::DeleteStmt(s) => (s.relation.as_ref(), s.with_clause.as_ref()),
        N::MergeStmt(s) => (s.relation.as_ref(), s.with_clause.as_ref()),
        N::SelectStmt(s) => {
            for arm in [&s.larg, &s.rarg].into_iter().flatten() {
                dml(&N::SelectStmt(arm.clone()), out);
            }
            (None, s.with_clause.as_ref())
        }
        _ => (None, None),
    };
    out.extend(target.map(names::from_range));
    for cte in with.map(|w| w.ctes.as_slice()).unwrap_or_default() {
        if let Some(N::CommonTableExpr(c)) = cte.node.as_ref() {
            if let Some(q) = c.ctequery.as_ref().and_then(|q| q.node.as_ref()) {
                dml(q, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Result<Writes, String> {
        writes(&crate::sql::parse::parse(sql).unwrap())
    }

    fn tables(sql: &str) -> Vec<String> {
        of(sql).unwrap().tables.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn rows_that_may_change() {
        assert_eq!(
            tables("UPDATE \"User\" SET a = 1; DELETE FROM app.s WHERE x"),
            ["\"User\"", "\"app\".\"s\""]
        );
        assert_eq!(tables("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"), ["\"t\""]);
        assert_eq!(
            tables("ALTER TABLE t ADD COLUMN c int DEFAULT 0, ADD CONSTRAINT k CHECK (c > 0)"),
            Vec::<String>::new()
        );
        assert_eq!(tables("ALTER TABLE t DROP COLUMN c"), ["\"t\""]);
        assert_eq!(tables("ALTER TABLE t ALTER COLUMN c TYPE bigint"), ["\"t\""]);
        assert_eq!(tables("DROP TABLE a, b; DROP INDEX i; CREATE INDEX j ON c (x)"), ["\"a\"", "\"b\""]);
        assert_eq!(tables("TRUNCATE t; COPY u FROM STDIN; COPY v TO STDOUT"), ["\"t\"", "\"u\""]);
        assert_eq!(of("CREATE TABLE n (x int)").unwrap().created[0].to_string(), "\"n\"");
    }

    #[test]
    fn what_cannot_be_bounded() {
        for sql in [
            "DO $$ BEGIN END $$",
            "CALL p()",
            "DROP TABLE t CASCADE",
            "TRUNCATE t CASCADE",
            "CREATE EXTENSION x",
            "COPY t FROM PROGRAM 'x'",
            "DROP SCHEMA s",
        ] {
            assert!(of(sql).is_err(), "{sql}");
        }
        assert_eq!(of("SELECT app.touch(1), now()").unwrap().functions, ["app.touch", "now"]);
    }
}
