//! `sql` and `sql_file` steps: the SQL runs in one transaction with a statement timeout, so a
//! hotfix either applies whole or not at all. A file is read when the step runs, not at load.

use std::path::Path;
use std::time::Duration;

use super::StepFailure;
use crate::pg::{error_text, Session};

pub async fn run(session: &Session, sql: &str, timeout: Duration) -> Result<String, StepFailure> {
    let begin = format!("BEGIN; SET LOCAL statement_timeout = {}", timeout.as_millis().max(1));
    session.client().batch_execute(&begin).await.map_err(|e| StepFailure(error_text(&e)))?;
    if let Err(e) = session.client().batch_execute(sql).await {
        let _ = session.client().batch_execute("ROLLBACK").await;
        return Err(StepFailure(format!("{} (rolled back)", error_text(&e))));
    }
    session.client().batch_execute("COMMIT").await.map_err(|e| StepFailure(error_text(&e)))?;
    Ok(String::new())
}

pub async fn run_file(session: &Session, path: &Path, timeout: Duration) -> Result<String, StepFailure> {
    let sql = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| StepFailure(format!("cannot read {}: {e}", path.display())))?;
    run(session, &sql, timeout).await
}
