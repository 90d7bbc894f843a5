//! Whether a statement's effects are present in the live catalog: one small, read-only query per
//! effect, names resolved by the session's search path exactly as the migration's were.

use serde::Serialize;
use tokio_postgres::Client;

use super::names::{quote, ObjName};
use super::parse::{Effect, Statement};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Applied,
    NotApplied,
    Unknown,
}

impl Verdict {
    pub fn words(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::NotApplied => "not applied",
            Verdict::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Judged {
    pub verdict: Verdict,
    pub reason: String,
    /// SQL that must run before the statement can (an invalid index a failed CONCURRENTLY left).
    pub clear_first: Option<String>,
    /// One verdict per effect, in the statement's order (undo inverts the applied ones).
    pub effects: Vec<Verdict>,
}

fn j(verdict: Verdict, reason: impl Into<String>) -> Judged {
    Judged { verdict, reason: reason.into(), clear_first: None, effects: vec![verdict] }
}

/// Judges a whole statement: every effect present, none, or a mixture (unknown).
pub async fn judge(client: &Client, stmt: &Statement) -> Result<Judged, tokio_postgres::Error> {
    let mut parts = Vec::new();
    for e in &stmt.effects {
        parts.push(effect(client, e).await?);
    }
    let all = |v: Verdict| parts.iter().all(|p| p.verdict == v);
    let reason = parts.iter().map(|p| p.reason.as_str()).collect::<Vec<_>>().join("; ");
    let clear_first = parts.iter().find_map(|p| p.clear_first.clone());
    let effects: Vec<Verdict> = parts.iter().map(|p| p.verdict).collect();
    let verdict = if parts.is_empty() || parts.iter().any(|p| p.verdict == Verdict::Unknown) {
        Verdict::Unknown
    } else if all(Verdict::Applied) {
        Verdict::Applied
    } else if all(Verdict::NotApplied) {
        Verdict::NotApplied
    } else {
        let reason = format!("partly present: {reason}");
        return Ok(Judged { verdict: Verdict::Unknown, reason, clear_first, effects });
    };
    Ok(Judged { verdict, reason, clear_first, effects })
}

fn present(yes: bool, what: String) -> Judged {
    if yes {
        j(Verdict::Applied, format!("{what} exists"))
    } else {
        j(Verdict::NotApplied, format!("{what} does not exist"))
    }
}

fn absent(gone: bool, what: String) -> Judged {
    if gone {
        j(Verdict::Applied, format!("{what} no longer exists"))
    } else {
        j(Verdict::NotApplied, format!("{what} still exists"))
    }
}

async fn effect(c: &Client, e: &Effect) -> Result<Judged, tokio_postgres::Error> {
    use Effect as E;
    Ok(match e {
        E::CreateRelation { kind, name, .. } => match relkind(c, name).await? {
            Some(k) if kind.relkinds().contains(k) => {
                present(true, format!("{} {name}", kind.word().to_lowercase()))
            }
            Some(_) => {
                j(Verdict::Unknown, format!("{name} exists but is not a {}", kind.word().to_lowercase()))
            }
            None => present(false, format!("{} {name}", kind.word().to_lowercase())),
        },
        E::DropRelation { kind, name } => {
            absent(relkind(c, name).await?.is_none(), format!("{} {name}", kind.word().to_lowercase()))
        }
        E::CreateIndex { name: Some(name), table, .. } => index(c, name, table).await?,
        E::CreateIndex { name: None, .. } => {
            j(Verdict::Unknown, "an index without a name cannot be found by name")
        }
        E::AddColumn { table, column } => {
            present(column_of(c, table, column).await?.is_some(), col(table, column))
        }
        E::DropColumn { table, column } => {
            absent(column_of(c, table, column).await?.is_none(), col(table, column))
        }
        E::AlterType { table, column, to } => alter_type(c, table, column, to).await?,
        E::SetDefault { table, column, expr } => default(c, table, column, Some(expr)).await?,
        E::DropDefault { table, column } => default(c, table, column, None).await?,
        E::SetNotNull { table, column } | E::DropNotNull { table, column } => {
            let want = matches!(e, E::SetNotNull { .. });
            match column_of(c, table, column).await? {
                None => j(Verdict::NotApplied, format!("{} does not exist", col(table, column))),
                Some(a) if a.not_null == want => {
                    j(Verdict::Applied, format!("{} is {}", col(table, column), null_word(want)))
                }
                Some(_) => j(Verdict::NotApplied, format!("{} is {}", col(table, column), null_word(!want))),
            }
        }
        E::AddConstraint { table, name: Some(name), .. } => {
            present(constraint(c, table, name).await?, format!("constraint {} on {table}", quote(name)))
        }
        E::AddConstraint { table, name: None, contype, columns } => {
            unnamed_constraint(c, table, *contype, columns).await?
        }
        E::DropConstraint { table, name } => {
            absent(!constraint(c, table, name).await?, format!("constraint {} on {table}", quote(name)))
        }
        E::CreateType { name } => present(type_exists(c, name).await?, format!("type {name}")),
        E::DropType { name } => absent(!type_exists(c, name).await?, format!("type {name}")),
        E::AddEnumValue { name, value } => {
            let q = "SELECT EXISTS (SELECT FROM pg_enum WHERE enumtypid = to_regtype($1) AND enumlabel = $2)";
            present(
                c.query_one(q, &[&name.sql(), value]).await?.get(0),
                format!("value '{value}' of type {name}"),
            )
        }
        E::RenameRelation { kind, from, to } => {
            let (old, new) =
                (relkind(c, from).await?.is_some(), relkind(c, &from.with_name(to)).await?.is_some());
            renamed(
                old,
                new,
                format!("{} {from}", kind.word().to_lowercase()),
                &from.with_name(to).to_string(),
            )
        }
        E::RenameColumn { table, from, to } => {
            let (old, new) =
                (column_of(c, table, from).await?.is_some(), column_of(c, table, to).await?.is_some());
            renamed(old, new, col(table, from), &quote(to))
        }
        E::RenameConstraint { table, from, to } => {
            let (old, new) = (constraint(c, table, from).await?, constraint(c, table, to).await?);
            renamed(old, new, format!("constraint {} on {table}", quote(from)), &quote(to))
        }
        E::CreateExtension { name } => {
            let q = "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = $1)";
            present(c.query_one(q, &[name]).await?.get(0), format!("extension {}", quote(name)))
        }
        E::DropExtension { name } => {
            let q = "SELECT NOT EXISTS (SELECT FROM pg_extension WHERE extname = $1)";
            absent(c.query_one(q, &[name]).await?.get(0), format!("extension {}", quote(name)))
        }
        E::CreateSchema { name } => {
            let q = "SELECT to_regnamespace($1) IS NOT NULL";
            present(c.query_one(q, &[&quote(name)]).await?.get(0), format!("schema {}", quote(name)))
        }
        E::CreateFunction { name } => {
            let q = "SELECT EXISTS (SELECT FROM pg_proc WHERE proname = $1 AND ($2::text IS NULL OR pronamespace = to_regnamespace($2)))";
            let schema = name.schema.as_deref().map(quote);
            let found: bool = c.query_one(q, &[&name.name, &schema]).await?.get(0);
            let mut r = present(found, format!("function {name}"));
            if found {
                r.reason.push_str(" (its body is not compared)");
            }
            r
        }
        E::Data { why, .. } | E::Unknown { why } => j(Verdict::Unknown, why.clone()),
    })
}

fn col(table: &ObjName, column: &str) -> String {
    format!("column {table}.{}", quote(column))
}

fn null_word(not_null: bool) -> &'static str {
    if not_null {
        "NOT NULL"
    } else {
        "nullable"
    }
}

fn renamed(old: bool, new: bool, what: String, to: &str) -> Judged {
    match (old, new) {
        (false, true) => j(Verdict::Applied, format!("{what} is now named {to}")),
        (true, false) => j(Verdict::NotApplied, format!("{what} still has its old name")),
        (true, true) => j(Verdict::Unknown, format!("both {what} and {to} exist")),
        (false, false) => j(Verdict::Unknown, format!("neither {what} nor {to} exists")),
    }
}

/// Resolves unqualified names as the migration tool did: Prisma puts the URL's `?schema=` (the
/// migrations table's schema) alone on the search path. Returns the previous setting.
pub async fn set_search_path(c: &Client, schema: &str) -> Result<String, tokio_postgres::Error> {
    let old: String = c.query_one("SELECT current_setting('search_path')", &[]).await?.get(0);
    c.execute("SELECT set_config('search_path', $1, false)", &[&quote(schema)]).await?;
    Ok(old)
}

pub async fn restore_search_path(c: &Client, old: &str) -> Result<(), tokio_postgres::Error> {
    c.execute("SELECT set_config('search_path', $1, false)", &[&old]).await.map(|_| ())
}

pub async fn relkind(c: &Client, name: &ObjName) -> Result<Option<char>, tokio_postgres::Error> {
    let row =
        c.query_opt("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", &[&name.sql()]).await?;
    Ok(row.and_then(|r| r.get::<_, String>(0).chars().next()))
}

pub struct Column {
    pub type_text: String,
    pub not_null: bool,
    pub default: Option<String>,
}

pub async fn column_of(
    c: &Client,
    table: &ObjName,
    column: &str,
) -> Result<Option<Column>, tokio_postgres::Error> {
    let q = "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped";
    let row = c.query_opt(q, &[&table.sql(), &column]).await?;
    Ok(row.map(|r| Column { type_text: r.get(0), not_null: r.get(1), default: r.get(2) }))
}

pub async fn constraint(c: &Client, table: &ObjName, name: &str) -> Result<bool, tokio_postgres::Error> {
    let q = "SELECT EXISTS (SELECT FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2)";
    Ok(c.query_one(q, &[&table.sql(), &name]).await?.get(0))
}

async fn unnamed_constraint(
    c: &Client,
    table: &ObjName,
    contype: char,
    columns: &[String],
) -> Result<Judged, tokio_postgres::Error> {
    if columns.is_empty() {
        return Ok(j(Verdict::Unknown, "an unnamed constraint without columns cannot be found"));
    }
    let q = "SELECT EXISTS (SELECT FROM pg_constraint k WHERE k.conrelid = to_regclass($1) AND k.contype = $2::\"char\" \
             AND ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, o) \
                       JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o) = $3::text[])";
    let found: bool = c.query_one(q, &[&table.sql(), &contype.to_string(), &columns]).await?.get(0);
    Ok(present(found, format!("a constraint of kind '{contype}' on {table} ({})", columns.join(", "))))
}

async fn type_exists(c: &Client, name: &ObjName) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one("SELECT to_regtype($1) IS NOT NULL", &[&name.sql()]).await?.get(0))
}

async fn index(c: &Client, name: &ObjName, table: &ObjName) -> Result<Judged, tokio_postgres::Error> {
    let q = "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1) AND i.indrelid = to_regclass($2)";
    Ok(match c.query_opt(q, &[&name.sql(), &table.sql()]).await? {
        None => present(false, format!("index {name} on {table}")),
        Some(r) if r.get::<_, bool>(0) => present(true, format!("index {name} on {table}")),
        Some(_) => Judged {
            verdict: Verdict::NotApplied,
            reason: format!("index {name} exists but is invalid (indisvalid = false: a failed CREATE INDEX CONCURRENTLY left it); it must be dropped and built again"),
            clear_first: Some(format!("DROP INDEX IF EXISTS {name}")),
            effects: vec![Verdict::NotApplied],
        },
    })
}

async fn alter_type(
    c: &Client,
    table: &ObjName,
    column: &str,
    to: &super::parse::TypeSpec,
) -> Result<Judged, tokio_postgres::Error> {
    let Some(now) = column_of(c, table, column).await? else {
        return Ok(j(Verdict::NotApplied, format!("{} does not exist", col(table, column))));
    };
    let q = "SELECT format_type(to_regtype($1), $2::int)";
    let want: Option<String> = c.query_one(q, &[&to.base, &to.typmod]).await?.get(0);
    Ok(match want {
        None => j(Verdict::Unknown, format!("type {} is not known to the server", to.text)),
        Some(w) if w == now.type_text => j(Verdict::Applied, format!("{} is {w}", col(table, column))),
        Some(w) => j(Verdict::NotApplied, format!("{} is {}, not {w}", col(table, column), now.type_text)),
    })
}

async fn default(
    c: &Client,
    table: &ObjName,
    column: &str,
    expr: Option<&String>,
) -> Result<Judged, tokio_postgres::Error> {
    let Some(now) = column_of(c, table, column).await? else {
        return Ok(j(Verdict::NotApplied, format!("{} does not exist", col(table, column))));
    };
    let what = col(table, column);
    Ok(match (expr, now.default) {
        (None, None) => j(Verdict::Applied, format!("{what} has no default")),
        (None, Some(d)) => j(Verdict::NotApplied, format!("{what} still has default {d}")),
        (Some(_), None) => j(Verdict::NotApplied, format!("{what} has no default")),
        (Some(want), Some(d)) if same_expr(want, &d) => {
            j(Verdict::Applied, format!("{what} has default {d}"))
        }
        (Some(want), Some(d)) => {
            j(Verdict::Unknown, format!("{what} has default {d}, the statement sets {want}"))
        }
    })
}

/// Compares a default as written with the catalog's spelling: casts, quotes, case and spaces
/// aside (`'x'` and `'x'::text`, `now()` and `CURRENT_TIMESTAMP` stay different: unknown).
fn same_expr(a: &str, b: &str) -> bool {
    norm(a) == norm(b)
}

/// Without `::type` casts (multi-word types and typmods too), quotes, parentheses and spaces.
fn norm(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("::") {
        out.push_str(&rest[..at]);
        rest = skip_type(&rest[at + 2..]);
    }
    out.push_str(rest);
    out.chars().filter(|c| !c.is_whitespace() && !"\"()".contains(*c)).flat_map(char::to_lowercase).collect()
}

fn skip_type(s: &str) -> &str {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_\".[]".contains(&b[i])) {
            i += 1;
        }
        if i + 1 < b.len()
            && b[i] == b' '
            && b[i + 1].is_ascii_alphabetic()
            && !s[i + 1..].to_ascii_lowercase().starts_with("and ")
        {
            i += 1;
            continue;
        }
        if i < b.len() && b[i] == b'(' {
            i += s[i..].find(')').map(|e| e + 1).unwrap_or(s.len() - i);
            continue;
        }
        return &s[i..];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults_compare_without_casts() {
        assert!(super::same_expr("'pending'", "'pending'::text"));
        assert!(super::same_expr("0", "0"));
        assert!(super::same_expr("nextval('seq')", "nextval('seq'::regclass)"));
        assert!(!super::same_expr("'a'", "'b'::text"));
    }
}
