//! What a repair checks before it touches anything, and how it judges the table afterwards: a
//! standby, a migration in progress, a missing playbook or a migrator's backend that still
//! runs each stop it with a message saying what to do; after the steps, the table decides.

use crate::config::DatabaseConfig;
use crate::watch::{Migration, Status, TableState};

/// Why a repair must not run on this table now, if it must not.
pub(super) fn blocked(db: &DatabaseConfig, state: &TableState) -> Option<String> {
    match state {
        TableState::Standby => Some(format!("{} is a standby: repair its primary", db.name)),
        TableState::Rows { migrations } => migrations.iter().find(|m| m.status == Status::InProgress).map(|m| {
            let why = m.logs.clone().unwrap_or_else(|| "its tool holds its lock".into());
            format!(
                "`{}` of {} is in progress ({why}): never repair under a running migrator; try again once it is done",
                m.name, db.name
            )
        }),
        _ => None,
    }
}

/// The error of a failed migration no playbook matches, with the match that would.
pub(super) fn no_playbook(db: &DatabaseConfig, target: &Migration) -> String {
    format!(
        "no playbook matches failed migration `{}` of {} (add one with match = {{ migration = \"*{}\" }})",
        target.name,
        db.name,
        target.name.split_once('_').map(|(_, rest)| format!("_{rest}")).unwrap_or_default()
    )
}

/// The refusal while a backend of the crashed migrator still runs.
pub(super) fn still_running(running: &[String]) -> String {
    format!(
        "wait: a backend of the migrator is still running ({}); its statement may still commit: repair once it has ended",
        running.join("; ")
    )
}

/// Why a crashed migration must wait: it began less than `grace` ago (by the server's clock), so
/// it may be a deploy running without its tool's lock rather than one that died.
pub(super) fn too_recent(
    target: &Migration,
    grace: std::time::Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let started = target.started_at.filter(|_| target.status == Status::Crashed)?;
    let age = (now - started).to_std().unwrap_or_default();
    (age < grace).then(|| {
        format!(
            "`{}` began {} ago and has no log: it may be a deploy still running without its tool's lock \
             (PRISMA_SCHEMA_DISABLE_ADVISORY_LOCK); a crashed migration is repaired once it is older than \
             repair.crash_grace ({})",
            target.name,
            humantime::format_duration(std::time::Duration::from_secs(age.as_secs())),
            humantime::format_duration(grace)
        )
    })
}

/// Why the run must stop after its snapshot: the row it was about to repair changed meanwhile
/// (a deploy finished it, or another tool run moved on); the steps were chosen for the old one.
pub(super) fn changed_since(before: &Migration, now: &TableState) -> Option<String> {
    let same = now.needing_repair().into_iter().any(|m| {
        (&m.name, m.status, &m.started_at, &m.finished_at, &m.logs, m.applied_steps_count)
            == (
                &before.name,
                before.status,
                &before.started_at,
                &before.finished_at,
                &before.logs,
                before.applied_steps_count,
            )
    });
    (!same).then(|| {
        format!(
            "the migrations table changed while the pre-repair snapshot was taken: `{}` is no longer {} as it was \
             when the run chose its playbook; no step was run — look at `pgmedic migrations` and run the repair again if it is still needed",
            before.name,
            serde_json::to_value(before.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        )
    })
}

/// A run whose steps all succeeded succeeded only if the table no longer needs a repair.
pub(super) fn outcome(after: &TableState) -> (String, Option<String>) {
    let still: Vec<String> = after.needing_repair().iter().map(|m| m.name.clone()).collect();
    if still.is_empty() {
        ("succeeded".into(), None)
    } else {
        (
            "failed".into(),
            Some(format!("every step succeeded but these migrations are still failed: {}", still.join(", "))),
        )
    }
}
