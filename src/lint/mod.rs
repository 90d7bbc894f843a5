//! `pgmedic lint`: migration files checked before they run, with PostgreSQL's own parser (the
//! same `sql` understanding as `diagnose`). Errors (exit 1): SQL that does not parse, references to
//! relations, columns or types that exist neither live nor earlier in the migrations, statements
//! that cannot run in the tool's transaction. Warnings: non-idempotent DDL, and locks that
//! rewrite or scan an existing table (with its live size when a database is given). A finding is
//! silenced by `-- pgmedic: allow <rule-id>` on the statement's lines or the line above it.

mod keys;
pub mod layout;
mod live;
mod model;
mod rules;

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Serialize;
use tokio_postgres::Client;

use crate::sql::{self, names, refs::Ref, Statement};
use model::Model;
pub use rules::RULES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub file: String,
    pub line: usize,
    pub message: String,
    pub fix: String,
}

/// One migration file: its name (Prisma's folder, else the file without `.sql`/`.up.sql`), path,
/// and version (the leading number the tool records, where it has one).
pub struct File {
    pub name: String,
    pub path: PathBuf,
    pub version: Option<String>,
}

pub struct Linter<'a> {
    pub live: Option<&'a Client>,
    /// The migrations' schema (unqualified names resolve there).
    pub schema: String,
    /// The tool runs a multi-statement file as one transaction (Prisma does).
    pub wraps_files: bool,
}

fn line_of(text: &str, at: i32) -> Option<usize> {
    let at = usize::try_from(at).ok().filter(|a| *a <= text.len())?;
    Some(text[..at].matches('\n').count() + 1)
}

fn silenced(text: &str, stmt: &Statement, rule: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    let last = stmt.line + stmt.sql.lines().count();
    let marker = format!("pgmedic: allow {rule}");
    (stmt.line.saturating_sub(1).max(1)..last).any(|l| lines.get(l - 1).is_some_and(|t| t.contains(&marker)))
}

impl Linter<'_> {
    pub async fn lint(&self, files: &[File]) -> Result<Vec<Finding>, tokio_postgres::Error> {
        let old = match self.live {
            Some(c) => Some(sql::catalog::set_search_path(c, &self.schema).await?),
            None => None,
        };
        let result = self.lint_all(files).await;
        if let (Some(c), Some(old)) = (self.live, old) {
            sql::catalog::restore_search_path(c, &old).await?;
        }
        result
    }

    async fn lint_all(&self, files: &[File]) -> Result<Vec<Finding>, tokio_postgres::Error> {
        // Without a database, every earlier file is taken as deployed (its tables hold data):
        // only tables created in the same file are new. With one, the pending files are new.
        let mut model = Model::new(&self.schema, self.live.is_none());
        let mut keys = keys::Keys::default();
        let volatile = self.volatile_functions().await?;
        let mut out = Vec::new();
        for f in files {
            let file = f.path.display().to_string();
            let text = match std::fs::read_to_string(&f.path) {
                Ok(t) => t,
                Err(e) => {
                    out.push(Finding {
                        rule: "syntax",
                        severity: Severity::Error,
                        file,
                        line: 1,
                        message: format!("cannot read the file: {e}"),
                        fix: String::new(),
                    });
                    continue;
                }
            };
            let (text, in_transaction) = layout::up_text(&text);
            let stmts = match sql::parse::parse(&text) {
                Ok(s) => s,
                Err(sql::SqlError::Parse { message, line }) => {
                    let fix = "fix the SQL; PostgreSQL would refuse it the same way".to_string();
                    out.push(Finding {
                        rule: "syntax",
                        severity: Severity::Error,
                        file,
                        line: line.unwrap_or(1),
                        message,
                        fix,
                    });
                    continue;
                }
            };
            let wraps = self.wraps_files && in_transaction && stmts.len() > 1;
            model.begin_file();
            for s in &stmts {
                let mut found = Vec::new();
                let schema = &self.schema;
                let qualify = |n: sql::ObjName| sql::ObjName {
                    schema: Some(n.schema.unwrap_or_else(|| schema.clone())),
                    name: n.name,
                };
                keys.observe(&s.node, &file, s.line, &qualify);
                self.statement(&mut model, &text, s, wraps, &volatile, &mut found).await?;
                out.extend(found.into_iter().filter(|(rule, ..)| !silenced(&text, s, rule)).map(
                    |(rule, severity, line, message, fix)| Finding {
                        rule,
                        severity,
                        file: file.clone(),
                        line,
                        message,
                        fix,
                    },
                ));
            }
        }
        out.extend(keys.unindexed(self.live).await?);
        if let (Some(c), Some(first)) = (self.live, files.first()) {
            out.extend(live::invalid_indexes(c, &keys.named, &first.path.display().to_string()).await?);
        }
        Ok(out)
    }

    async fn volatile_functions(&self) -> Result<HashSet<String>, tokio_postgres::Error> {
        let Some(c) = self.live else { return Ok(HashSet::new()) };
        let rows = c.query("SELECT DISTINCT proname::text FROM pg_proc WHERE provolatile = 'v'", &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn statement(
        &self,
        model: &mut Model,
        text: &str,
        s: &Statement,
        wraps: bool,
        volatile: &HashSet<String>,
        out: &mut Vec<(&'static str, Severity, usize, String, String)>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut hits: Vec<rules::Hit> = rules::not_in_transaction(&s.node, wraps).into_iter().collect();
        hits.extend(rules::not_idempotent(&s.node));
        hits.extend(self.operational(model, &s.node).await);
        if let pg_query::NodeEnum::AlterTableStmt(a) = &s.node {
            let table = a.relation.as_ref().map(names::from_range);
            if let Some(t) = table.filter(|t| !model.is_new(t)) {
                let checks = self.validated_checks(&t).await?;
                let is_volatile = |f: &str| volatile.contains(f) || rules::known_volatile(f);
                let proven = |c: &str| {
                    checks.iter().any(|d| {
                        d.contains(&format!("{c} IS NOT NULL"))
                            || d.contains(&format!("{} IS NOT NULL", names::quote(c)))
                    })
                };
                hits.extend(rules::locks(a, &is_volatile, &proven));
            }
        }
        for h in hits {
            let size = match &h.table {
                Some(r) => self.size(&names::from_range(r)).await?,
                None => String::new(),
            };
            out.push((h.rule, h.severity, s.line, format!("{}{size}", h.message), h.fix));
        }
        model.create(&s.node, &s.effects);
        for r in sql::refs::references(&s.node) {
            if let Some(f) = self.reference(model, text, s, &r).await? {
                out.push(f);
            }
        }
        model.remove(&s.effects);
        Ok(())
    }

    /// The rules about running on a live, busy table: concurrent index builds, lock_timeout, and
    /// (with a database) rows the new constraint already rejects.
    async fn operational(&self, model: &mut Model, node: &pg_query::NodeEnum) -> Vec<rules::Hit> {
        let mut hits: Vec<rules::Hit> =
            rules::require_concurrent(node, &|t| !model.is_new(t)).into_iter().collect();
        if rules::sets_lock_timeout(node) {
            model.set_lock_timeout();
        }
        if let Some(t) = rules::strong_lock_target(node).filter(|t| !model.is_new(t)) {
            if model.warn_lock_timeout() {
                hits.push(rules::missing_lock_timeout(&t));
            }
        }
        if let Some(c) = self.live {
            hits.extend(live::might_fail(c, node, &|t| !model.is_new(t)).await);
        }
        hits
    }

    async fn reference(
        &self,
        model: &Model,
        text: &str,
        s: &Statement,
        r: &Ref,
    ) -> Result<Option<(&'static str, Severity, usize, String, String)>, tokio_postgres::Error> {
        let missing = if self.live.is_some() {
            "exists neither in the database nor earlier in the migrations"
        } else {
            "is not created earlier in the migrations"
        };
        let (rule, at, message) = match r {
            Ref::Relation { name, at } if !model.relation(self.live, name).await? => {
                ("unknown-relation", *at, format!("relation {name} {missing}"))
            }
            Ref::Column { table, column, at }
                if model.relation(self.live, table).await?
                    && !model.column(self.live, table, column).await? =>
            {
                ("unknown-column", *at, format!("column {} of {table} {missing}", names::quote(column)))
            }
            Ref::Type { ty, at } if !model.type_exists(self.live, ty).await? => {
                ("unknown-type", *at, format!("type {} {missing}", ty.text))
            }
            _ => return Ok(None),
        };
        let line = line_of(text, at).unwrap_or(s.line);
        Ok(Some((
            rule,
            Severity::Error,
            line,
            message,
            "check the name's spelling and case (quoted names are case-sensitive)".into(),
        )))
    }

    async fn validated_checks(&self, table: &sql::ObjName) -> Result<Vec<String>, tokio_postgres::Error> {
        let Some(c) = self.live else { return Ok(Vec::new()) };
        let q = "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'c' AND convalidated";
        Ok(c.query(q, &[&table.sql()]).await?.iter().map(|r| r.get(0)).collect())
    }

    /// ` (table "t": 1234 MB, ~5000000 rows)` with a database, else nothing.
    async fn size(&self, table: &sql::ObjName) -> Result<String, tokio_postgres::Error> {
        let Some(c) = self.live else { return Ok(String::new()) };
        let q = "SELECT pg_size_pretty(pg_total_relation_size(oid)), greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass($1)";
        Ok(match c.query_opt(q, &[&table.sql()]).await? {
            Some(r) => format!(" (table {table}: {}, ~{} rows)", r.get::<_, String>(0), r.get::<_, i64>(1)),
            None => String::new(),
        })
    }
}

/// Text, one line per finding (and its fix), then a count.
pub fn text(findings: &[Finding]) -> String {
    let mut o = String::new();
    for f in findings {
        let sev = if f.severity == Severity::Error { "error" } else { "warning" };
        o.push_str(&format!("{}:{}: {sev}[{}]: {}\n", f.file, f.line, f.rule, f.message));
        if !f.fix.is_empty() {
            o.push_str(&format!("    fix: {}\n", f.fix));
        }
    }
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    o.push_str(&format!("{errors} error(s), {} warning(s)\n", findings.len() - errors));
    o
}

/// GitHub Actions workflow commands: one annotation per finding.
pub fn github(findings: &[Finding]) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let prop = |s: &str| esc(s).replace(':', "%3A").replace(',', "%2C");
    findings
        .iter()
        .map(|f| {
            let level = if f.severity == Severity::Error { "error" } else { "warning" };
            format!(
                "::{level} file={},line={},title={}::{}\n",
                prop(&f.file),
                f.line,
                prop(&format!("pgmedic {}", f.rule)),
                esc(&format!("{} (fix: {})", f.message, f.fix))
            )
        })
        .collect()
}
