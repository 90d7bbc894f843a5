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
