//! The rules that read one statement: statements that cannot run in a transaction block,
//! non-idempotent DDL where an idempotent form exists, and operations that hold an ACCESS
//! EXCLUSIVE lock while they rewrite or scan an existing table. Each has a stable id.

use pg_query::protobuf::{self, AlterTableType as At, ConstrType};
use pg_query::{NodeEnum, NodeRef};

use super::Severity;

/// A finding before it gets its file and line.
pub struct Hit {
    pub rule: &'static str,
    pub severity: Severity,
    pub message: String,
    pub fix: String,
    /// The table whose live size matters (lock rules).
    pub table: Option<protobuf::RangeVar>,
}

pub const RULES: &[(&str, &str)] = &[
    ("syntax", "the file does not parse"),
    (
        "unknown-relation",
        "a table, view or index that exists neither in the database nor earlier in the migrations",
    ),
    ("unknown-column", "a column that exists neither in the database nor earlier in the migrations"),
    ("unknown-type", "a type that exists neither in the database nor earlier in the migrations"),
    (
        "not-in-transaction",
        "a statement that cannot run inside a transaction block, in a tool that wraps it in one",
    ),
    ("not-idempotent", "DDL that fails when run twice, where an IF [NOT] EXISTS form exists"),
    ("unguarded-constraint", "ADD CONSTRAINT outside a DO block that checks pg_constraint first"),
    (
        "volatile-default",
        "ADD COLUMN with a volatile default rewrites the table under an ACCESS EXCLUSIVE lock",
    ),
    (
        "column-type-change",
        "ALTER COLUMN TYPE rewrites the table (and its indexes) under an ACCESS EXCLUSIVE lock",
    ),
    (
        "set-not-null",
        "SET NOT NULL scans the table under an ACCESS EXCLUSIVE lock unless a validated CHECK proves it",
    ),
    ("fk-not-valid", "a FOREIGN KEY added without NOT VALID scans the table while it blocks writes"),
    (
        "require-concurrent-index",
        "CREATE or DROP INDEX without CONCURRENTLY on a table that exists blocks its writes for the whole build",
    ),
    (
        "missing-lock-timeout",
        "a strong lock on an existing table in a file that sets no lock_timeout first: queued behind one long query, it stalls every query on that table",
    ),
    (
        "invalid-index-present",
        "the database holds an invalid index (a failed CONCURRENTLY build); a migration creating it again fails \"already exists\"",
    ),
    (
        "might-fail",
        "UNIQUE over duplicate rows, SET NOT NULL over NULLs, a foreign key over orphans, a CHECK over violating rows: counted on the live database",
    ),
    (
        "unindexed-foreign-key",
        "a foreign key whose columns no index leads with: each delete or key update of the referenced table scans this one",
    ),
];

/// CREATE INDEX / DROP INDEX without CONCURRENTLY where `existing(table or index)` says the
/// object is already there (its table holds rows others write).
pub fn require_concurrent(node: &NodeEnum, existing: &dyn Fn(&crate::sql::ObjName) -> bool) -> Option<Hit> {
    let fix = "CREATE INDEX CONCURRENTLY (or DROP INDEX CONCURRENTLY) in a migration file of its own, outside a transaction";
    match node {
        NodeEnum::IndexStmt(s) if !s.concurrent => {
            let r = s.relation.as_ref()?;
            existing(&crate::sql::names::from_range(r)).then(|| Hit {
                table: Some(r.clone()),
                ..hit(
                    "require-concurrent-index",
                    Severity::Warning,
                    format!(
                        "CREATE INDEX on {} blocks every write to it until the index is built",
                        r.relname
                    ),
                    fix,
                )
            })
        }
        NodeEnum::DropStmt(s)
            if !s.concurrent && s.remove_type == protobuf::ObjectType::ObjectIndex as i32 =>
        {
            let names = crate::sql::names::drop_objects(s);
            let first = names.into_iter().find(|n| existing(n))?;
            Some(hit(
                "require-concurrent-index",
                Severity::Warning,
                format!("DROP INDEX {first} blocks every write to its table while it waits and runs"),
                fix,
            ))
        }
        _ => None,
    }
}

/// The existing table a statement locks ACCESS EXCLUSIVE (or SHARE, for an index build).
pub fn strong_lock_target(node: &NodeEnum) -> Option<crate::sql::ObjName> {
    let from = |r: &Option<protobuf::RangeVar>| r.as_ref().map(crate::sql::names::from_range);
    match node {
        NodeEnum::AlterTableStmt(s) => from(&s.relation),
        NodeEnum::IndexStmt(s) if !s.concurrent => from(&s.relation),
        NodeEnum::RenameStmt(s) => from(&s.relation),
        NodeEnum::TruncateStmt(s) => s.relations.iter().find_map(|n| match n.node.as_ref() {
            Some(NodeEnum::RangeVar(r)) => Some(crate::sql::names::from_range(r)),
            _ => None,
        }),
        NodeEnum::DropStmt(s)
            if !s.concurrent && s.remove_type == protobuf::ObjectType::ObjectTable as i32 =>
        {
            crate::sql::names::drop_objects(s).into_iter().next()
        }
        _ => None,
    }
}

pub fn missing_lock_timeout(table: &crate::sql::ObjName) -> Hit {
    Hit {
        table: None,
        ..hit("missing-lock-timeout", Severity::Warning, format!("{table} is locked with no lock_timeout set: behind one long query it waits, and every query on {table} waits behind it"), "SET lock_timeout = '5s'; at the top of the file (retry the deploy if it gives up)")
    }
}

/// `SET lock_timeout = …` (not 0).
pub fn sets_lock_timeout(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::VariableSetStmt(v) if v.name == "lock_timeout" => {
            let text = crate::sql::names::deparse(node);
            !text.ends_with(" 0") && !text.ends_with("'0'")
        }
        _ => false,
    }
}

fn hit(rule: &'static str, severity: Severity, message: String, fix: &str) -> Hit {
    Hit { rule, severity, message, fix: fix.to_string(), table: None }
}

/// `wraps`: the tool runs a file as one transaction (Prisma sends a multi-statement file as one
/// script, which PostgreSQL runs as one implicit transaction).
pub fn not_in_transaction(node: &NodeEnum, wraps: bool) -> Option<Hit> {
    let what = match node {
        NodeEnum::IndexStmt(s) if s.concurrent => "CREATE INDEX CONCURRENTLY",
        NodeEnum::DropStmt(s) if s.concurrent => "DROP INDEX CONCURRENTLY",
        NodeEnum::ReindexStmt(s) if reindex_concurrently(s) => "REINDEX CONCURRENTLY",
        NodeEnum::VacuumStmt(_) => "VACUUM",
        NodeEnum::AlterSystemStmt(_) => "ALTER SYSTEM",
        NodeEnum::CreatedbStmt(_) => "CREATE DATABASE",
        NodeEnum::DropdbStmt(_) => "DROP DATABASE",
        _ => return None,
    };
    wraps.then(|| {
        hit(
            "not-in-transaction",
            Severity::Error,
            format!("{what} cannot run inside a transaction block, and this file runs as one (it holds other statements)"),
            "put it in a migration file of its own",
        )
    })
}

fn reindex_concurrently(s: &protobuf::ReindexStmt) -> bool {
    s.params
        .iter()
        .any(|p| matches!(p.node.as_ref(), Some(NodeEnum::DefElem(d)) if d.defname == "concurrently"))
}

pub fn not_idempotent(node: &NodeEnum) -> Vec<Hit> {
    let w = |m: &str, fix: &str| hit("not-idempotent", Severity::Warning, m.to_string(), fix);
    match node {
        NodeEnum::CreateStmt(s) if !s.if_not_exists => vec![w(
            "CREATE TABLE without IF NOT EXISTS fails when run again after a partial failure",
            "CREATE TABLE IF NOT EXISTS",
        )],
        NodeEnum::IndexStmt(s) if !s.if_not_exists && !s.idxname.is_empty() => {
            vec![w("CREATE INDEX without IF NOT EXISTS fails when run again", "CREATE INDEX IF NOT EXISTS")]
        }
        NodeEnum::CreateSeqStmt(s) if !s.if_not_exists => vec![w(
            "CREATE SEQUENCE without IF NOT EXISTS fails when run again",
            "CREATE SEQUENCE IF NOT EXISTS",
        )],
        NodeEnum::CreateExtensionStmt(s) if !s.if_not_exists => vec![w(
            "CREATE EXTENSION without IF NOT EXISTS fails when run again",
            "CREATE EXTENSION IF NOT EXISTS",
        )],
        NodeEnum::CreateSchemaStmt(s) if !s.if_not_exists => {
            vec![w("CREATE SCHEMA without IF NOT EXISTS fails when run again", "CREATE SCHEMA IF NOT EXISTS")]
        }
        NodeEnum::DropStmt(s) if !s.missing_ok => {
            vec![w("DROP without IF EXISTS fails when run again", "DROP … IF EXISTS")]
        }
        NodeEnum::CreateEnumStmt(_) | NodeEnum::CompositeTypeStmt(_) | NodeEnum::CreateDomainStmt(_) => {
            vec![w(
                "CREATE TYPE fails when run again (it has no IF NOT EXISTS)",
                "DO $$ BEGIN IF to_regtype('name') IS NULL THEN CREATE TYPE …; END IF; END $$",
            )]
        }
        NodeEnum::AlterEnumStmt(s) if s.old_val.is_empty() && !s.skip_if_new_val_exists => {
            vec![w(
                "ALTER TYPE … ADD VALUE without IF NOT EXISTS fails when run again",
                "ADD VALUE IF NOT EXISTS",
            )]
        }
        NodeEnum::AlterTableStmt(s) => s.cmds.iter().filter_map(alter_idempotent).collect(),
        _ => Vec::new(),
    }
}

fn alter_idempotent(c: &protobuf::Node) -> Option<Hit> {
    let Some(NodeEnum::AlterTableCmd(cmd)) = c.node.as_ref() else { return None };
    let w = |m: &str, fix: &str| Some(hit("not-idempotent", Severity::Warning, m.to_string(), fix));
    match At::try_from(cmd.subtype).unwrap_or(At::Undefined) {
        At::AtAddColumn if !cmd.missing_ok => w("ADD COLUMN without IF NOT EXISTS fails when run again", "ADD COLUMN IF NOT EXISTS"),
        At::AtDropColumn if !cmd.missing_ok => w("DROP COLUMN without IF EXISTS fails when run again", "DROP COLUMN IF EXISTS"),
        At::AtDropConstraint if !cmd.missing_ok => w("DROP CONSTRAINT without IF EXISTS fails when run again", "DROP CONSTRAINT IF EXISTS"),
        At::AtAddConstraint => Some(hit(
            "unguarded-constraint",
            Severity::Warning,
            "ADD CONSTRAINT fails when run again (it has no IF NOT EXISTS)".into(),
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = '…' AND conrelid = to_regclass('…')) THEN ALTER TABLE … ADD CONSTRAINT …; END IF; END $$",
        )),
        _ => None,
    }
}

/// Lock rules for one ALTER TABLE on an existing table. `volatile(name)` says whether a
/// function is volatile; `proven(column)` whether a validated CHECK proves the column not null.
pub fn locks(
    s: &protobuf::AlterTableStmt,
    volatile: &dyn Fn(&str) -> bool,
    proven: &dyn Fn(&str) -> bool,
) -> Vec<Hit> {
    let mut out = Vec::new();
    let w = |rule: &'static str, m: String, fix: &str| Hit {
        table: s.relation.clone(),
        ..hit(rule, Severity::Warning, m, fix)
    };
    for c in &s.cmds {
        let Some(NodeEnum::AlterTableCmd(cmd)) = c.node.as_ref() else { continue };
        let def = cmd.def.as_ref().and_then(|d| d.node.as_ref());
        match (At::try_from(cmd.subtype).unwrap_or(At::Undefined), def) {
            (At::AtAddColumn, Some(NodeEnum::ColumnDef(col))) => {
                if let Some(f) = volatile_default(col, volatile) {
                    out.push(w("volatile-default", format!("column {} gets a default calling volatile {f}(), which rewrites every row", col.colname), "add the column without a default, backfill in batches, then SET DEFAULT"));
                }
            }
            (At::AtAlterColumnType, _) => out.push(w("column-type-change", format!("changing the type of column {} rewrites the table and its indexes", cmd.name), "add a new column, backfill in batches, switch over; or make sure the change is binary-coercible (varchar(n) to a longer varchar or text)")),
            (At::AtSetNotNull, _) if !proven(&cmd.name) => out.push(w("set-not-null", format!("SET NOT NULL on column {} scans the whole table", cmd.name), "first ADD CONSTRAINT … CHECK (col IS NOT NULL) NOT VALID, then VALIDATE CONSTRAINT, then SET NOT NULL")),
            (At::AtAddConstraint, Some(NodeEnum::Constraint(k))) if k.contype == ConstrType::ConstrForeign as i32 && !k.skip_validation => {
                out.push(w("fk-not-valid", format!("FOREIGN KEY {} is validated at once, scanning the table", k.conname), "ADD CONSTRAINT … NOT VALID, then VALIDATE CONSTRAINT in a later step"))
            }
            _ => {}
        }
    }
    out
}

fn volatile_default(col: &protobuf::ColumnDef, volatile: &dyn Fn(&str) -> bool) -> Option<String> {
    let expr = col.constraints.iter().find_map(|k| match k.node.as_ref() {
        Some(NodeEnum::Constraint(k)) if k.contype == ConstrType::ConstrDefault as i32 => {
            k.raw_expr.as_ref()?.node.clone()
        }
        _ => None,
    })?;
    let called = |f: &protobuf::FuncCall| {
        let name = f.funcname.iter().filter_map(crate::sql::names::string).next_back()?;
        volatile(&name).then_some(name)
    };
    if let NodeEnum::FuncCall(f) = &expr {
        if let Some(name) = called(f) {
            return Some(name);
        }
    }
    expr.nodes().into_iter().find_map(|(n, ..)| match n {
        NodeRef::FuncCall(f) => called(f),
        _ => None,
    })
}

/// Functions known to be volatile, for `--dir` alone.
pub fn known_volatile(name: &str) -> bool {
    matches!(
        name,
        "random"
            | "clock_timestamp"
            | "gen_random_uuid"
            | "uuid_generate_v1"
            | "uuid_generate_v4"
            | "timeofday"
            | "nextval"
            | "txid_current"
            | "random_normal"
            | "uuidv4"
            | "uuidv7"
    )
}
