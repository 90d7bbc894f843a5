//! Drafted SQL: a statement made idempotent (`finish`: `IF NOT EXISTS`, `IF EXISTS`, guarded
//! `DO` blocks, rewritten through the parse tree) and the inverse of what a statement applied
//! (`undo`: in reverse, re-creating what it dropped only from the baseline's own definition).
//! What cannot be undone is a refusal naming the statement and why.

use pg_query::protobuf::{self, AlterTableType as At};
use pg_query::NodeEnum;

use super::catalog::{Judged, Verdict};
use super::names::{deparse, literal, quote, ObjName};
use super::parse::{Effect, RelKind, Statement};
use super::schema::Baseline;

/// A statement's idempotent form: one or more statements, each safe to run twice, after
/// `clear_first` (an invalid index a failed build left). CONCURRENTLY is kept: the runner puts
/// such a statement outside any transaction.
pub fn idempotent(stmt: &Statement, clear_first: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = clear_first.map(String::from).into_iter().collect();
    let mut node = stmt.node.clone();
    let guard = |cond: String, sql: String| {
        format!("DO $pgmedic$\nBEGIN\n  IF {cond} THEN\n    {sql};\n  END IF;\nEND\n$pgmedic$")
    };
    match &mut node {
        NodeEnum::CreateStmt(s) => s.if_not_exists = true,
        NodeEnum::IndexStmt(s) => s.if_not_exists = !s.idxname.is_empty(),
        NodeEnum::CreateSeqStmt(s) => s.if_not_exists = true,
        NodeEnum::CreateExtensionStmt(s) => s.if_not_exists = true,
        NodeEnum::CreateSchemaStmt(s) => s.if_not_exists = true,
        NodeEnum::ViewStmt(s) => s.replace = true,
        NodeEnum::CreateFunctionStmt(s) => s.replace = true,
        NodeEnum::DropStmt(s) => s.missing_ok = true,
        NodeEnum::AlterEnumStmt(s) if s.old_val.is_empty() => s.skip_if_new_val_exists = true,
        NodeEnum::AlterTableStmt(s) => {
            out.extend(alter_table(s).into_iter().map(|(cond, sql)| match cond {
                Some(c) => guard(c, sql),
                None => sql,
            }));
            return out;
        }
        NodeEnum::CreateEnumStmt(_) | NodeEnum::CompositeTypeStmt(_) | NodeEnum::CreateDomainStmt(_) => {
            if let Some(Effect::CreateType { name }) = stmt.effects.first() {
                out.push(guard(format!("to_regtype({}) IS NULL", literal(&name.sql())), deparse(&node)));
                return out;
            }
        }
        NodeEnum::RenameStmt(_) => {
            if let Some(cond) = stmt.effects.first().and_then(rename_guard) {
                out.push(guard(cond, deparse(&node)));
                return out;
            }
        }
        _ => {
            out.push(stmt.sql.clone());
            return out;
        }
    }
    out.push(deparse(&node));
    out
}

/// One statement per command, each idempotent: `(guard, sql)`.
fn alter_table(s: &protobuf::AlterTableStmt) -> Vec<(Option<String>, String)> {
    let table = s.relation.as_ref().map(super::names::from_range);
    s.cmds
        .iter()
        .map(|cmd| {
            let mut one = s.clone();
            let mut cmd = cmd.clone();
            let mut cond = None;
            if let Some(NodeEnum::AlterTableCmd(c)) = cmd.node.as_mut() {
                match At::try_from(c.subtype).unwrap_or(At::Undefined) {
                    At::AtAddColumn | At::AtDropColumn | At::AtDropConstraint => c.missing_ok = true,
                    At::AtAddConstraint => cond = add_constraint_guard(table.as_ref(), c),
                    _ => {}
                }
            }
            one.cmds = vec![cmd];
            (cond, deparse(&NodeEnum::AlterTableStmt(one)))
        })
        .collect()
}

fn add_constraint_guard(table: Option<&ObjName>, c: &protobuf::AlterTableCmd) -> Option<String> {
    let Some(NodeEnum::Constraint(k)) = c.def.as_ref().and_then(|d| d.node.as_ref()) else { return None };
    let table = table?;
    (!k.conname.is_empty()).then(|| {
        format!(
            "NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = to_regclass({}) AND conname = {})",
            literal(&table.sql()),
            literal(&k.conname)
        )
    })
}

fn rename_guard(e: &Effect) -> Option<String> {
    let rel = |n: &ObjName| format!("to_regclass({})", literal(&n.sql()));
    let col = |t: &ObjName, c: &str| {
        format!(
            "EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass({}) AND attname = {} AND NOT attisdropped)",
            literal(&t.sql()),
            literal(c)
        )
    };
    Some(match e {
        Effect::RenameRelation { from, to, .. } => {
            format!("{} IS NOT NULL AND {} IS NULL", rel(from), rel(&from.with_name(to)))
        }
        Effect::RenameColumn { table, from, to } => {
            format!("{} AND NOT {}", col(table, from), col(table, to))
        }
        _ => return None,
    })
}

/// The undo of a migration: `Ok(statements)` in the order to run, or why it cannot be drafted.
pub struct Undo {
    pub sql: Vec<String>,
    /// Tables the undo drops: it refuses to run when they hold rows (unless allowed).
    pub drops_tables: Vec<ObjName>,
}

/// `ran(i)` says whether statement `i` ran (statements before the first not-applied one did).
pub fn undo(
    stmts: &[(Statement, Judged)],
    baseline: Option<&Baseline>,
    ran: impl Fn(usize) -> bool,
) -> Result<Undo, String> {
    let created: Vec<ObjName> = stmts
        .iter()
        .flat_map(|(s, j)| s.effects.iter().zip(&j.effects))
        .filter_map(|(e, v)| match e {
            Effect::CreateRelation { kind: RelKind::Table, name, .. } if *v == Verdict::Applied => {
                Some(name.clone())
            }
            _ => None,
        })
        .filter(|n| !baseline.is_some_and(|b| b.has("TABLE", n)))
        .collect();
    let mut undo = Undo { sql: Vec::new(), drops_tables: created.clone() };
    for (s, j) in stmts.iter().rev() {
        for (e, v) in s.effects.iter().zip(&j.effects).rev() {
            let applied = *v == Verdict::Applied || (*v == Verdict::Unknown && ran(s.index));
            if !applied {
                continue;
            }
            let inverse = inverse(e, baseline, &created)
                .map_err(|why| format!("statement {} (line {}) cannot be undone: {why}", s.index, s.line))?;
            undo.sql.extend(inverse);
        }
    }
    Ok(undo)
}

fn need(baseline: Option<&Baseline>) -> Result<&Baseline, String> {
    baseline.ok_or_else(|| {
        "there is no snapshot from before the migration to take its former definition from".into()
    })
}

fn inverse(e: &Effect, baseline: Option<&Baseline>, created: &[ObjName]) -> Result<Vec<String>, String> {
    use Effect as E;
    let existed = |word: &str, n: &ObjName| baseline.is_some_and(|b| b.has(word, n));
    let alter = |t: &ObjName, what: String| Ok(vec![format!("ALTER TABLE IF EXISTS {t} {what}")]);
    match e {
        E::CreateRelation { kind, name, .. } if existed(kind.word(), name) => match kind {
            RelKind::View | RelKind::MatView => Ok(vec![
                format!("DROP {} IF EXISTS {name}", kind.word()),
                need(baseline)?.definition(kind.word(), name)?,
            ]),
            _ => Ok(vec![]),
        },
        E::CreateRelation { kind, name, .. } => Ok(vec![format!("DROP {} IF EXISTS {name}", kind.word())]),
        E::DropRelation { kind: RelKind::Table | RelKind::Sequence, name } => {
            Err(format!("it dropped {name} and its data; only a restore brings them back"))
        }
        // pg_dump's schema writes a materialised view WITH NO DATA: refreshed, it holds its rows again.
        E::DropRelation { kind: RelKind::MatView, name } => Ok(vec![
            need(baseline)?.definition(RelKind::MatView.word(), name)?,
            format!("REFRESH MATERIALIZED VIEW {name}"),
        ]),
        E::DropRelation { kind, name } => Ok(vec![need(baseline)?.definition(kind.word(), name)?]),
        E::CreateIndex { name: Some(name), .. } => Ok(vec![format!("DROP INDEX IF EXISTS {name}")]),
        E::CreateIndex { name: None, .. } => Err("the index has no name to drop it by".into()),
        E::AddColumn { table, column } => alter(table, format!("DROP COLUMN IF EXISTS {}", quote(column))),
        E::DropColumn { table, column } => Err(format!(
            "it dropped column {table}.{} and its values; only a restore brings them back",
            quote(column)
        )),
        E::AlterType { table, column, to } => {
            let before = need(baseline)?
                .column(table, column)
                .ok_or_else(|| format!("the snapshot has no column {table}.{}", quote(column)))?;
            if !widening(&before.type_text, &to.text) {
                return Err(format!(
                    "it changed {table}.{} from {} to {}, which may have lost precision",
                    quote(column),
                    before.type_text,
                    to.text
                ));
            }
            alter(table, format!("ALTER COLUMN {} TYPE {}", quote(column), before.type_text))
        }
        E::SetDefault { table, column, .. } | E::DropDefault { table, column } => {
            let before = need(baseline)?.column(table, column).and_then(|c| c.default);
            match before {
                Some(d) => alter(table, format!("ALTER COLUMN {} SET DEFAULT {d}", quote(column))),
                None => alter(table, format!("ALTER COLUMN {} DROP DEFAULT", quote(column))),
            }
        }
        E::SetNotNull { table, column } => {
            let was = baseline.and_then(|b| b.column(table, column)).is_some_and(|c| c.not_null);
            if was {
                Ok(vec![])
            } else {
                alter(table, format!("ALTER COLUMN {} DROP NOT NULL", quote(column)))
            }
        }
        E::DropNotNull { table, column } => {
            alter(table, format!("ALTER COLUMN {} SET NOT NULL", quote(column)))
        }
        E::AddConstraint { table, name: Some(name), .. } => {
            alter(table, format!("DROP CONSTRAINT IF EXISTS {}", quote(name)))
        }
        E::AddConstraint { name: None, .. } => Err("the constraint has no name to drop it by".into()),
        E::DropConstraint { table, name } => Ok(vec![need(baseline)?.constraint(table, name)?]),
        E::CreateType { name } if existed("TYPE", name) => Ok(vec![]),
        E::CreateType { name } => Ok(vec![format!("DROP TYPE IF EXISTS {name}")]),
        E::DropType { name } => Ok(vec![need(baseline)?.definition("TYPE", name)?]),
        E::AddEnumValue { name, value } => Err(format!(
            "PostgreSQL cannot remove value '{value}' from enum {name} (no ALTER TYPE … DROP VALUE)"
        )),
        E::RenameRelation { kind, from, to } => Ok(vec![format!(
            "ALTER {} IF EXISTS {} RENAME TO {}",
            kind.word(),
            from.with_name(to),
            quote(&from.name)
        )]),
        E::RenameColumn { table, from, to } => {
            alter(table, format!("RENAME COLUMN {} TO {}", quote(to), quote(from)))
        }
        E::RenameConstraint { table, from, to } => {
            alter(table, format!("RENAME CONSTRAINT {} TO {}", quote(to), quote(from)))
        }
        E::CreateExtension { name }
            if existed("EXTENSION", &ObjName { schema: None, name: name.clone() }) =>
        {
            Ok(vec![])
        }
        E::CreateExtension { name } => Ok(vec![format!("DROP EXTENSION IF EXISTS {}", quote(name))]),
        E::DropExtension { name } => Ok(vec![format!("CREATE EXTENSION IF NOT EXISTS {}", quote(name))]),
        E::CreateSchema { name } => Ok(vec![format!("DROP SCHEMA IF EXISTS {}", quote(name))]),
        E::CreateFunction { name } if existed("FUNCTION", name) => {
            Err(format!("it replaced function {name}, whose former body pgmedic does not restore"))
        }
        E::CreateFunction { name } => Ok(vec![format!("DROP FUNCTION IF EXISTS {name}")]),
        E::Data { table: Some(t), .. } if created.contains(t) => Ok(vec![]),
        E::Data { why, .. } | E::Unknown { why } => Err(format!("it ran and {why}")),
    }
}

/// Type changes whose way back keeps every value that was there before (the forward change lost
/// nothing): integer widening, float widening, a longer or unlimited string, numeric from integer.
fn widening(from: &str, to: &str) -> bool {
    let norm = |t: &str| t.to_ascii_lowercase().replace("character varying", "varchar").replace(' ', "");
    let (from, to) = (norm(from), norm(to));
    let len = |t: &str| t.split_once('(').and_then(|(_, r)| r.trim_end_matches(')').parse::<u32>().ok());
    let rank = |t: &str| match t {
        "smallint" | "int2" => Some(1),
        "integer" | "int" | "int4" => Some(2),
        "bigint" | "int8" => Some(3),
        "numeric" | "decimal" => Some(4),
        _ => None,
    };
    match (rank(&from), rank(&to)) {
        (Some(a), Some(b)) => return a < b,
        (_, _) if from == "real" || from == "float4" => return to == "doubleprecision" || to == "float8",
        _ => {}
    }
    if from.starts_with("varchar") || from.starts_with("character(") || from.starts_with("char(") {
        return to == "text" || (to.starts_with("varchar") && (len(&to).is_none() || len(&to) >= len(&from)));
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn widening_type_changes() {
        assert!(super::widening("integer", "BIGINT"));
        assert!(super::widening("character varying(10)", "varchar(20)"));
        assert!(super::widening("character varying(10)", "text"));
        assert!(!super::widening("character varying(20)", "varchar(10)"));
        assert!(!super::widening("bigint", "integer"));
        assert!(!super::widening("numeric(10,2)", "integer"));
        assert!(!super::widening("timestamp with time zone", "date"));
    }
}
