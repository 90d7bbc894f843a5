//! Who is alive: the holder of a tool's advisory lock, and the sessions that may be a migrator,
//! named with pid, application, user, address and age so a refusal says whom to wait for.

use crate::pg::{DbError, Session};

const DESCRIBE: &str = "a.pid::text || ' (' || coalesce(nullif(a.application_name, ''), '?') || ', user ' || coalesce(a.usename::text, '?') \
    || ', from ' || coalesce(a.client_addr::text, 'local socket') || ', ' || coalesce(a.state, '?') || ' since ' || a.backend_start::text || ')'";

/// The session (not ours) holding session-level advisory lock `key`, described.
pub async fn advisory_holder(session: &Session, key: i64) -> Result<Option<String>, DbError> {
    let (class, obj) = ((key >> 32) & 0xffff_ffff, key & 0xffff_ffff);
    let sql = format!(
        "SELECT {DESCRIBE} FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid \
           AND l.objsubid = 1 AND l.pid <> pg_backend_pid() \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1"
    );
    let rows = session
        .client()
        .query(&sql, &[&class, &obj])
        .await
        .map_err(|e| session.err("look up a migration lock's holder", e))?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Client sessions of this database (not ours) matching `condition` (SQL over `a`, pg_stat_activity).
pub async fn sessions(session: &Session, condition: &str) -> Result<Vec<String>, DbError> {
    let sql = format!(
        "SELECT {DESCRIBE} FROM pg_stat_activity a WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
           AND a.backend_type = 'client backend' AND ({condition}) ORDER BY a.pid"
    );
    let rows = session
        .client()
        .query(&sql, &[])
        .await
        .map_err(|e| session.err("look for live migrator sessions", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every row of `qualified` as JSON (a lock table, for the audit's before and after).
pub async fn rows(session: &Session, qualified: &str) -> Result<Vec<serde_json::Value>, String> {
    let sql = format!("SELECT to_jsonb(t) FROM {qualified} t ORDER BY 1");
    let rows = session.client().query(&sql, &[]).await.map_err(|e| crate::pg::error_text(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The connected database's name (advisory keys derive from it).
pub async fn database(session: &Session) -> Result<String, DbError> {
    let row = session.client().query_one("SELECT current_database()", &[]).await;
    row.map(|r| r.get(0)).map_err(|e| session.err("read the database name", e))
}
