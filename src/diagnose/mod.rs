//! What a failed migration actually did, proven. For one failed or crashed migration: its
//! statements (parsed from the tool's SQL file), each checked alone against the live catalog
//! (the explanation), whether a backend of a crashed migrator still runs, and the newest
//! snapshot from before it. Its schema, loaded on pgmedic's scratch server and replayed
//! statement by statement, says where the migration stopped (`evidence`); the two drafted
//! repairs, `finish` and `undo`, are run on copies there before anything may run them live.
//! `diagnose` prints the analysis; the playbook steps of the same names compute it again at
//! run time, after the pre-repair snapshot.

pub mod baseline;
mod evidence;
pub mod lab;
pub mod leftovers;
mod log;
pub mod plan;
mod proof;
mod reconstruct;
mod replay;
mod report;
mod serverlog;
pub mod sqlcmd;

use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::config::{DatabaseConfig, MigrationsConfig};
use crate::sql::{self, Judged, ObjName, Statement, Verdict};
use crate::storage::Storage;
use crate::watch::{Dialect, Migration, Status};

pub use baseline::{find_baseline, BaselineSnapshot};
pub use evidence::{qualify, Evidence, Proof, UndoPlan};
pub use lab::Env;
pub use log::{running_backends, sqlstate, transient};
pub use replay::Mode;
pub use report::{report, Draft, Report};

#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("cannot read the catalog of {database} for migration `{migration}`: {message}")]
    Catalog { database: String, migration: String, message: String },
}

/// Everything judged about one migration.
pub struct Analysis {
    pub database: String,
    pub migration: Migration,
    /// The migration file, or why its statements cannot be judged.
    pub file: Result<PathBuf, String>,
    pub file_text: Option<String>,
    /// Each statement with the catalog check alone (the explanation; replay decides).
    pub statements: Vec<(Statement, Judged)>,
    /// Live backends still running the migration's statements (a crashed migrator's).
    pub running: Vec<String>,
    pub baseline: Result<BaselineSnapshot, String>,
    /// A half-applied code migration: the objects its statements were written from (attributed
    /// to it by position and by the names its file mentions, not by its SQL).
    pub reconstructed: Option<Vec<String>>,
    pub evidence: Evidence,
}

impl Analysis {
    /// Statement `index`'s verdict and why: the replay's when it proves one, else the catalog's.
    pub fn verdict(&self, index: usize) -> (Verdict, String) {
        let Some((_, j)) = self.statements.iter().find(|(s, _)| s.index == index) else {
            return (Verdict::Unknown, String::new());
        };
        let stop = &self.evidence.stop;
        let (lo, hi) = match (stop.stopped_after, stop.range) {
            (Some(k), _) => (k, k),
            (None, Some(r)) => r,
            (None, None) => return (j.verdict, j.reason.clone()),
        };
        let (v, mut why) = if index <= lo {
            (
                Verdict::Applied,
                format!("ran: the live schema is the baseline replayed through statement {hi}"),
            )
        } else if index > hi {
            (
                Verdict::NotApplied,
                format!("did not run: the live schema is the baseline replayed through statement {lo}"),
            )
        } else {
            (
                Verdict::Unknown,
                format!("the replay cannot tell: statements {} to {hi} leave no visible trace", lo + 1),
            )
        };
        if j.verdict != v && j.verdict != Verdict::Unknown {
            why.push_str(&format!(" (the catalog check alone says {}: {})", j.verdict.words(), j.reason));
        }
        (v, why)
    }

    pub fn first_not_applied(&self) -> Option<usize> {
        self.statements.iter().map(|(s, _)| s.index).find(|i| self.verdict(*i).0 == Verdict::NotApplied)
    }

    /// Why no repair may run now, if one may not.
    pub fn blocked(&self) -> Option<String> {
        if !self.running.is_empty() {
            return Some(format!(
                "wait: a backend of the migrator is still running ({}); its statement may still commit",
                self.running.join("; ")
            ));
        }
        self.file.as_ref().err().map(|why| format!("its statements cannot be judged: {why}"))
    }

    /// The proven finish's statements, in order.
    pub fn finish_sql(&self) -> Result<Vec<String>, String> {
        self.evidence.finish.as_ref().map(|p| p.statements()).map_err(Clone::clone)
    }

    /// The proven undo.
    pub fn undo(&self) -> Result<&UndoPlan, String> {
        self.evidence.undo.as_ref().map_err(Clone::clone)
    }

    /// Tables the migration created (and the baseline did not have).
    pub fn created_tables(&self) -> Vec<ObjName> {
        let baseline = self.baseline.as_ref().ok().map(|b| &b.schema);
        self.statements
            .iter()
            .flat_map(|(s, j)| {
                let ran = self.verdict(s.index).0 == Verdict::Applied;
                s.effects.iter().zip(&j.effects).map(move |(e, v)| (e, ran || *v == Verdict::Applied))
            })
            .filter_map(|(e, applied)| match e {
                sql::Effect::CreateRelation { kind: sql::parse::RelKind::Table, name, .. } if applied => {
                    Some(name.clone())
                }
                _ => None,
            })
            .filter(|n| !baseline.is_some_and(|b| b.has("TABLE", n)))
            .collect()
    }

    /// `from-diagnosis`: applied when the migration provably ran whole, rolled back when it
    /// provably ran nothing; with the catalog alone, every statement must agree.
    pub fn resolution(&self) -> Result<crate::config::ResolveAs, String> {
        use crate::config::ResolveAs;
        if let Some(why) = self.blocked() {
            return Err(why);
        }
        let n = self.statements.len();
        if n == 0 {
            return Err("the migration has no statements to judge".into());
        }
        if self.evidence.proof == Proof::Replay {
            return match self.evidence.stop.stopped_after {
                Some(0) => Ok(ResolveAs::RolledBack),
                Some(_) if self.reconstructed.is_some() => Err("the migration is code: its statements were written from what it left, so nothing shows whether it ran to its end; resolve it applied or undo it, by name in the playbook".into()),
                Some(k) if k == n => Ok(ResolveAs::Applied),
                Some(k) => Err(format!("the replay shows it stopped after statement {k} of {n}; finish or undo it first (see `pgmedic diagnose`)")),
                None => Err(self.evidence.explanation.join("; ")),
            };
        }
        let count = |v: Verdict| self.statements.iter().filter(|(_, j)| j.verdict == v).count();
        match (count(Verdict::Applied), count(Verdict::NotApplied)) {
            (a, _) if a == n => Ok(ResolveAs::Applied),
            (_, x) if x == n => Ok(ResolveAs::RolledBack),
            (a, x) => Err(format!("{a} of {n} statement(s) applied, {x} not applied, {} unknown (the catalog alone: {}); finish or undo it first (see `pgmedic diagnose`)", n - a - x, self.evidence.explanation.join("; "))),
        }
    }
}

/// The tool's table read as `watch::read` reads it, and a code migration that ran half way
/// without a row (`half_applied` from the schema against the snapshots, see `leftovers`).
pub async fn read_state(
    session: &crate::pg::Session,
    dialect: &dyn Dialect,
    storage: &Arc<dyn Storage>,
    database: &str,
) -> Result<crate::watch::TableState, crate::pg::DbError> {
    let mut state = crate::watch::read(session, dialect).await?;
    if let crate::watch::TableState::Rows { migrations } = &mut state {
        if let Some(m) = leftovers::detect(session, dialect, migrations, storage, database).await? {
            // Before a lock a killed batch left: a repair takes the first, and releasing the lock
            // is a step of the playbook that resolves the migration (knex after a crash).
            let at = migrations.iter().position(|x| x.status == Status::Locked).unwrap_or(migrations.len());
            migrations.insert(at, m);
        }
    }
    Ok(state)
}

/// Analyses `migration` of `db` on `client`, a session on that database.
pub async fn analyse(
    client: &Client,
    db: &DatabaseConfig,
    mig: &MigrationsConfig,
    dialect: &dyn Dialect,
    storage: &Arc<dyn Storage>,
    migration: &Migration,
    env: Env<'_>,
) -> Result<Analysis, DiagnoseError> {
    // A migration written as code: its SQL from the tool's own command when one is configured,
    // else (half applied) statements written from what it left.
    let code = dialect.file(migration).is_none() && dialect.code_file(migration).is_some();
    if code && !mig.sql_command.is_empty() {
        let (file, text, parsed) = match sqlcmd::statements(mig, db, dialect, migration, env).await {
            Ok((text, stmts)) => (Ok(dialect.code_file(migration).unwrap_or_default()), Some(text), stmts),
            Err(why) => (Err(why), None, vec![]),
        };
        return analyse_statements(
            client,
            db,
            mig,
            dialect,
            storage,
            migration,
            env,
            (file, text, parsed, None),
        )
        .await;
    }
    let recon = match code && migration.status == Status::HalfApplied {
        true => Some(reconstruct::reconstruct(client, db, dialect, storage, migration, env.tools).await),
        false => None,
    };
    let (file, file_text, parsed, recon) = match recon {
        None => {
            let (f, t, p) = read_file(dialect, mig, migration);
            (f, t, p, None)
        }
        Some(Err(why)) => (
            Err(format!("it is code, and its effects cannot be written as statements: {why}")),
            None,
            vec![],
            None,
        ),
        Some(Ok(r)) => match sql::parse::parse(&r.statements) {
            Ok(p) => {
                (Ok(dialect.code_file(migration).unwrap_or_default()), Some(r.statements.clone()), p, Some(r))
            }
            Err(e) => (
                Err(format!("the statements written from its effects do not parse: {e}")),
                None,
                vec![],
                None,
            ),
        },
    };
    analyse_statements(client, db, mig, dialect, storage, migration, env, (file, file_text, parsed, recon))
        .await
}

/// Where a migration's statements came from: its file (or why not), the text, the statements,
/// and for a half-applied code migration, the reconstruction they were written from.
type Source = (Result<PathBuf, String>, Option<String>, Vec<Statement>, Option<reconstruct::Reconstruction>);

/// The analysis of `migration` from its statements: each judged on the catalog, the baseline,
/// and the evidence gathered on the scratch server.
#[allow(clippy::too_many_arguments)]
async fn analyse_statements(
    client: &Client,
    db: &DatabaseConfig,
    mig: &MigrationsConfig,
    dialect: &dyn Dialect,
    storage: &Arc<dyn Storage>,
    migration: &Migration,
    env: Env<'_>,
    (file, file_text, parsed, recon): Source,
) -> Result<Analysis, DiagnoseError> {
    let fail = |e: tokio_postgres::Error| DiagnoseError::Catalog {
        database: db.name.clone(),
        migration: migration.name.clone(),
        message: crate::pg::error_text(&e),
    };
    let old = sql::catalog::set_search_path(client, &mig.schema).await.map_err(fail)?;
    let mut statements = Vec::new();
    for s in parsed {
        let judged = sql::catalog::judge(client, &s).await;
        statements.push((s, judged));
    }
    sql::catalog::restore_search_path(client, &old).await.map_err(fail)?;
    let statements = statements
        .into_iter()
        .map(|(s, j)| j.map(|j| (s, j)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let running = still_running(client, dialect, mig, migration).await.map_err(fail)?;
    let made = made_by(migration, &statements);
    let before = |b: &sql::Baseline| {
        !made.iter().any(|(kind, name, column)| match column {
            Some(c) => b.column(name, c).is_some(),
            None => b.has(kind, name),
        })
    };
    let (baseline, reconstructed) = match recon {
        Some(r) => (Ok(r.baseline), Some(r.objects)),
        None => (find_baseline(storage, &db.name, migration, dialect, &before).await, None),
    };
    let exclude =
        sql::shape::Exclude { schema: dialect.table_schema().into(), table_prefix: dialect.table().into() };
    let mut a = Analysis {
        database: db.name.clone(),
        migration: migration.clone(),
        file,
        file_text,
        statements,
        running,
        baseline,
        reconstructed,
        evidence: Evidence::pending(exclude),
    };
    a.evidence = evidence::gather(&a, client, db, mig, dialect, env).await;
    Ok(a)
}

/// What a half-applied migration's statements made that is in the catalog now (pg_dump's kind,
/// the relation, the column): a snapshot holding any of it was taken after it ran.
fn made_by(
    m: &Migration,
    statements: &[(Statement, Judged)],
) -> Vec<(&'static str, ObjName, Option<String>)> {
    if m.status != Status::HalfApplied {
        return Vec::new();
    }
    let applied = statements.iter().filter(|(_, j)| j.verdict == Verdict::Applied);
    applied
        .flat_map(|(s, _)| &s.effects)
        .filter_map(|e| match e {
            sql::Effect::CreateRelation { kind, name, .. } => Some((kind.word(), name.clone(), None)),
            sql::Effect::AddColumn { table, column } => Some(("TABLE", table.clone(), Some(column.clone()))),
            _ => None,
        })
        .collect()
}

/// Live backends still running the statements of a crashed (or in-progress) migration: while
/// one runs, its statement may still commit, and nothing may be judged or repaired.
pub async fn still_running(
    client: &Client,
    dialect: &dyn Dialect,
    mig: &MigrationsConfig,
    migration: &Migration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    if !matches!(migration.status, Status::Crashed | Status::InProgress | Status::Dirty) {
        return Ok(Vec::new());
    }
    let (_, _, stmts) = read_file(dialect, mig, migration);
    let texts: Vec<&str> = stmts.iter().map(|s| s.sql.as_str()).collect();
    running_backends(client, &texts).await
}

/// The file's path, text and statements, or why there are none.
pub(crate) fn read_file(
    dialect: &dyn Dialect,
    mig: &MigrationsConfig,
    m: &Migration,
) -> (Result<PathBuf, String>, Option<String>, Vec<Statement>) {
    if mig.dir.is_none() {
        let why = "databases.migrations.dir is not configured, so the migration's SQL is unknown";
        return (Err(why.into()), None, vec![]);
    }
    let Some(path) = dialect.file(m) else {
        let why =
            format!("{} keeps no SQL file for `{}` in databases.migrations.dir", dialect.tool(), m.name);
        return (Err(why), None, vec![]);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return (Err(format!("cannot read {}: {e}", path.display())), None, vec![]),
    };
    match sql::parse::parse(&dialect.up_sql(&text)) {
        Ok(stmts) => (Ok(path), Some(text), stmts),
        Err(e) => (Err(format!("{}: {e}", path.display())), Some(text), vec![]),
    }
}
