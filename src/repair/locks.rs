//! The two locks a repair holds: pgmedic's own per-database repair lock (a second repair, from
//! any host, is refused and told who holds it) and the migration tool's advisory lock when it
//! has one (Prisma's 72707369, golang-migrate's and sqlx's computed keys), so the tool cannot
//! run in the middle; a deploy holding it is waited for, then the repair refuses.

use std::time::{Duration, Instant};

use crate::pg::{DbError, Session};
use crate::snapshot::locks::{CLASS, REPAIR};

/// Takes pgmedic's repair lock, or describes who holds it.
pub async fn take_repair_lock(session: &Session) -> Result<Result<(), String>, DbError> {
    if session.try_advisory_lock(CLASS, REPAIR).await? {
        return Ok(Ok(()));
    }
    Ok(Err(holder(session, CLASS as i64, REPAIR as i64, 2).await?))
}

/// Waits up to `wait` for the tool's lock; `Err(holder)` when it stays taken.
pub async fn take_tool_lock(
    session: &Session,
    key: i64,
    wait: Duration,
) -> Result<Result<(), String>, DbError> {
    let deadline = Instant::now() + wait;
    loop {
        let row = (session.client().query_one("SELECT pg_try_advisory_lock($1)", &[&key]))
            .await
            .map_err(|e| session.err("take the migration tool's advisory lock", e))?;
        if row.get::<_, bool>(0) {
            return Ok(Ok(()));
        }
        if Instant::now() >= deadline {
            return Ok(Err(holder(session, (key >> 32) & 0xffff_ffff, key & 0xffff_ffff, 1).await?));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn release_tool_lock(session: &Session, key: i64) -> Result<(), DbError> {
    (session.client().query_one("SELECT pg_advisory_unlock($1)", &[&key]))
        .await
        .map(|_| ())
        .map_err(|e| session.err("release the migration tool's advisory lock", e))
}

/// "pid 123 (pgmedic@host:456, user postgres, from 10.0.0.5) since …" for the lock's holder.
async fn holder(session: &Session, classid: i64, objid: i64, objsubid: i16) -> Result<String, DbError> {
    let sql = "SELECT a.pid, coalesce(nullif(a.application_name, ''), '?'), coalesce(a.usename::text, '?'), \
                      coalesce(a.client_addr::text, 'local socket'), a.backend_start::text \
               FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
               WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::bigint::oid \
                 AND l.objid = $2::bigint::oid AND l.objsubid = $3 \
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1";
    let rows = (session.client().query(sql, &[&classid, &objid, &objsubid]))
        .await
        .map_err(|e| session.err("look up the lock's holder", e))?;
    Ok(match rows.first() {
        Some(r) => format!(
            "pid {} ({}, user {}, from {}) since {}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4)
        ),
        None => "a session that has just let go".into(),
    })
}
