//! `assert_sql` steps: a query whose first column of the first row must be true.

use super::StepFailure;
use crate::pg::{error_text, Session};

pub async fn run(session: &Session, sql: &str) -> Result<String, StepFailure> {
    let rows = session.client().query(sql, &[]).await.map_err(|e| StepFailure(error_text(&e)))?;
    let value = rows.first().map(|r| r.try_get::<_, Option<bool>>(0));
    match value {
        Some(Ok(Some(true))) => Ok("true".into()),
        Some(Ok(Some(false))) => Err(StepFailure("assertion returned false".into())),
        Some(Ok(None)) => Err(StepFailure("assertion returned NULL".into())),
        Some(Err(e)) => Err(StepFailure(format!("assertion must return a boolean: {e}"))),
        None => Err(StepFailure("assertion returned no row".into())),
    }
}
