//! Repair playbooks as validated values: which failures they match and the steps they run.
//! A playbook that names an unknown database, or a step that is not exactly one kind, is a
//! configuration error naming `playbooks[i].steps[j]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawPlaybook, RawRepair, RawStep};

#[derive(Debug, Clone)]
pub struct RepairConfig {
    pub statement_timeout: Duration,
    pub lock_wait: Duration,
    /// `lock_timeout` of every repair statement: a queued ALTER never holds up the table's
    /// readers longer than this.
    pub lock_timeout: Duration,
    /// Attempts after the first when a statement gave up on a lock (55P03), with backoff.
    pub lock_retries: u32,
    /// A crashed migration younger than this is not repaired: with the tool's lock disabled
    /// (`PRISMA_SCHEMA_DISABLE_ADVISORY_LOCK`, behind poolers) a running deploy looks crashed.
    pub crash_grace: Duration,
    /// `repair.snapshot = "full"`: every pre-repair snapshot dumps the whole database, never
    /// only the tables the steps may write (`"auto"`, the default).
    pub snapshot_full: bool,
}

#[derive(Debug, Clone)]
pub struct Playbook {
    pub name: String,
    pub database: Option<String>,
    /// Glob over the migration's name (`*` and `?`); any when absent.
    pub migration: Option<String>,
    /// Text the failure log must contain; any when absent or empty.
    pub log_contains: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ResolveAs {
    #[serde(rename = "applied")]
    Applied,
    #[serde(rename = "rolled-back")]
    RolledBack,
    /// Applied when diagnose finds every statement applied, rolled back when none is.
    #[serde(rename = "from-diagnosis")]
    FromDiagnosis,
}

#[derive(Clone)]
pub enum Step {
    Sql {
        sql: String,
        timeout: Option<Duration>,
    },
    SqlFile {
        path: PathBuf,
        timeout: Option<Duration>,
    },
    Resolve(ResolveAs),
    Command {
        argv: Vec<String>,
        cwd: Option<PathBuf>,
        env: BTreeMap<String, String>,
        timeout: Duration,
    },
    AssertSql {
        sql: String,
    },
    /// Run the failed migration's statements not yet applied, made idempotent (diagnose's draft).
    Finish {
        timeout: Option<Duration>,
    },
    /// Undo what the failed migration applied, checked against the baseline snapshot's schema.
    Undo {
        allow_data_loss: bool,
        timeout: Option<Duration>,
    },
    /// The tool's own lock release (knex, Liquibase), only with no live migrator.
    ReleaseLock,
    /// The stored checksums realigned with the files (sqlx, Liquibase, Flyway).
    AcceptChecksums,
}

/// Env values and SQL may hold secrets: Debug shows names and redacted text only.
impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::redact::redact;
        match self {
            Step::Sql { sql, .. } => write!(f, "Sql({:?})", redact(sql)),
            Step::SqlFile { path, .. } => write!(f, "SqlFile({path:?})"),
            Step::Resolve(how) => write!(f, "Resolve({how:?})"),
            Step::Command { argv, env, .. } => {
                let argv: Vec<String> = argv.iter().map(|a| redact(a)).collect();
                write!(f, "Command({argv:?}, env keys {:?})", env.keys().collect::<Vec<_>>())
            }
            Step::AssertSql { sql } => write!(f, "AssertSql({:?})", redact(sql)),
            Step::Finish { .. } => write!(f, "Finish"),
            Step::Undo { allow_data_loss, .. } => write!(f, "Undo(allow_data_loss={allow_data_loss})"),
            Step::ReleaseLock => write!(f, "ReleaseLock"),
            Step::AcceptChecksums => write!(f, "AcceptChecksums"),
        }
    }
}

#[cfg(test)]
mod debug_tests {
    use super::Step;

    #[test]
    fn debug_hides_env_values_and_passwords() {
        let env = [("DATABASE_URL".to_string(), "postgresql://u:hunter2@db/app".to_string())].into();
        let step = Step::Command {
            argv: vec!["psql".into(), "postgresql://u:hunter2@db/x".into()],
            cwd: None,
            env,
            timeout: std::time::Duration::from_secs(1),
        };
        let text = format!("{step:?}");
        assert!(!text.contains("hunter2") && text.contains("DATABASE_URL"), "{text}");
    }
}

const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

pub fn repair(raw: RawRepair) -> Result<RepairConfig, (String, String)> {
    let d = |key: &str, v: Option<String>, default: u64| match v {
        None => Ok(Duration::from_secs(default)),
        Some(t) => {
            humantime::parse_duration(&t).map_err(|e| (format!("repair.{key}"), format!("`{t}`: {e}")))
        }
    };
    Ok(RepairConfig {
        statement_timeout: d("statement_timeout", raw.statement_timeout, 300)?,
        lock_wait: d("lock_wait", raw.lock_wait, 30)?,
        lock_timeout: match d("lock_timeout", raw.lock_timeout, 5)? {
            t if t.is_zero() => {
                return Err((
                    "repair.lock_timeout".into(),
                    "must be more than 0: a repair statement must never queue for a lock without bound"
                        .into(),
                ))
            }
            t => t,
        },
        lock_retries: match raw.lock_retries.unwrap_or(5) {
            n @ 0..=100 => n,
            n => return Err(("repair.lock_retries".into(), format!("{n} is outside 0..=100"))),
        },
        crash_grace: d("crash_grace", raw.crash_grace, 300)?,
        snapshot_full: match raw.snapshot.as_deref().unwrap_or("auto") {
            "auto" => false,
            "full" => true,
            other => {
                return Err(("repair.snapshot".into(), format!("`{other}` is not \"auto\" or \"full\"")))
            }
        },
    })
}

/// Validates playbook `i`; errors are (key, message).
pub fn playbook(i: usize, raw: RawPlaybook, databases: &[String]) -> Result<Playbook, (String, String)> {
    let key = |k: &str| format!("playbooks[{i}].{k}");
    if raw.name.trim().is_empty() {
        return Err((key("name"), "must not be empty".into()));
    }
    if let Some(db) = &raw.database {
        if !databases.contains(db) {
            return Err((key("database"), format!("`{db}` is not a [[databases]] name")));
        }
    }
    if raw.steps.is_empty() {
        return Err((key("steps"), "a playbook needs at least one step".into()));
    }
    let steps =
        raw.steps.into_iter().enumerate().map(|(j, s)| step(s).map_err(|m| (key(&format!("steps[{j}]")), m)));
    Ok(Playbook {
        name: raw.name,
        database: raw.database,
        migration: raw.matcher.migration.filter(|m| !m.is_empty()),
        log_contains: raw.matcher.log_contains.filter(|m| !m.is_empty()),
        steps: steps.collect::<Result<_, _>>()?,
    })
}

fn step(raw: RawStep) -> Result<Step, String> {
    let timeout = raw
        .timeout
        .as_deref()
        .map(|t| humantime::parse_duration(t).map_err(|e| format!("timeout `{t}`: {e}")))
        .transpose()?;
    let kinds = [
        raw.sql.is_some(),
        raw.sql_file.is_some(),
        raw.resolve.is_some(),
        raw.command.is_some(),
        raw.assert_sql.is_some(),
        raw.finish.is_some(),
        raw.undo.is_some(),
        raw.release_lock.is_some(),
        raw.accept_checksums.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err("a step is exactly one of sql, sql_file, resolve, command, assert_sql, finish, undo, release_lock or accept_checksums".into());
    }
    if let Some(flagged) = flag_step(&raw, timeout)? {
        return Ok(flagged);
    }
    if raw.command.is_none() && (raw.cwd.is_some() || raw.env.is_some()) {
        return Err("cwd and env belong to command steps".into());
    }
    if let Some(sql) = raw.sql {
        return Ok(Step::Sql { sql, timeout });
    }
    if let Some(path) = raw.sql_file {
        return Ok(Step::SqlFile { path: PathBuf::from(path), timeout });
    }
    if let Some(r) = raw.resolve {
        return match r.as_str() {
            "applied" => Ok(Step::Resolve(ResolveAs::Applied)),
            "rolled-back" => Ok(Step::Resolve(ResolveAs::RolledBack)),
            "from-diagnosis" => Ok(Step::Resolve(ResolveAs::FromDiagnosis)),
            other => {
                Err(format!("resolve = `{other}` is not \"applied\", \"rolled-back\" or \"from-diagnosis\""))
            }
        };
    }
    if let Some(argv) = raw.command {
        if argv.is_empty() || argv[0].is_empty() {
            return Err("command needs a program: command = [\"program\", \"arg\", ...]".into());
        }
        let (cwd, env) = (raw.cwd.map(PathBuf::from), raw.env.unwrap_or_default());
        return Ok(Step::Command { argv, cwd, env, timeout: timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT) });
    }
    Ok(Step::AssertSql { sql: raw.assert_sql.unwrap_or_default() })
}

/// The steps written `<kind> = true`.
fn flag_step(raw: &RawStep, timeout: Option<Duration>) -> Result<Option<Step>, String> {
    if [raw.finish, raw.undo, raw.release_lock, raw.accept_checksums].contains(&Some(false)) {
        return Err(
            "finish, undo, release_lock and accept_checksums steps are written `<kind> = true`".into()
        );
    }
    if raw.allow_data_loss.is_some() && raw.undo.is_none() {
        return Err("allow_data_loss belongs to undo steps".into());
    }
    Ok(if raw.finish.is_some() {
        Some(Step::Finish { timeout })
    } else if raw.undo.is_some() {
        Some(Step::Undo { allow_data_loss: raw.allow_data_loss.unwrap_or(false), timeout })
    } else if raw.release_lock.is_some() {
        Some(Step::ReleaseLock)
    } else if raw.accept_checksums.is_some() {
        Some(Step::AcceptChecksums)
    } else {
        None
    })
}

/// `*` matches any run of characters, `?` any one.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Playbook {
    pub fn matches(&self, database: &str, migration: &str, log: &str) -> bool {
        self.database.as_deref().is_none_or(|d| d == database)
            && self.migration.as_deref().is_none_or(|g| glob(g, migration))
            && self.log_contains.as_deref().is_none_or(|t| log.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("*_add_plugin_credential_model", "20250520130900_add_plugin_credential_model"));
        assert!(glob("2025*", "20250520130900_x"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("*_init", "20250101000000_init_more"));
        assert!(glob("*a*b*", "xxaxxbxx"));
    }
}
