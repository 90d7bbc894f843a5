//! The server's own account of a failure, for the tools that store none (golang-migrate, dbmate,
//! drizzle, knex and every half-applied migration): the `ERROR` a migration's statement raised,
//! with its `DETAIL`, `HINT` and `STATEMENT` lines, read from the PostgreSQL log. Through the
//! server (`pg_current_logfile()`, else Debian's `/var/log/postgresql/postgresql-<cluster>.log`,
//! with `pg_read_file`, which needs `pg_read_server_files`), else from that file on this host.
//! Only the log's tail is read. An entry belongs to the migration when it is this database's and
//! its statement is one of the migration's or names an object the migration makes; the first
//! since the baseline is the cause (later ones are the tool's retries failing "already exists").
//! When nothing can read the log, the report says which grant or setting would let it.

use chrono::{DateTime, NaiveDateTime, Utc};
use tokio_postgres::Client;

use crate::sql::{Effect, Statement};

/// How much of the log's end is read.
const TAIL: i64 = 8 * 1024 * 1024;

/// The log entry of the failure, or why there is none.
pub struct ServerLog {
    pub entry: Option<String>,
    pub sqlstate: Option<String>,
    pub why: Option<String>,
}

/// One `ERROR` and the lines of the same backend that follow it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    at: Option<DateTime<Utc>>,
    database: Option<String>,
    error: String,
    lines: Vec<String>,
    statement: String,
}

pub async fn read(client: &Client, stmts: &[Statement], since: Option<DateTime<Utc>>) -> ServerLog {
    let (text, path) = match tail(client).await {
        Ok(t) => t,
        Err(why) => return ServerLog { entry: None, sqlstate: None, why: Some(why) },
    };
    let db: String = match client.query_one("SELECT current_database()", &[]).await {
        Ok(r) => r.get(0),
        Err(e) => return ServerLog { entry: None, sqlstate: None, why: Some(crate::pg::error_text(&e)) },
    };
    let wanted = Wanted::of(stmts);
    let found = entries(&text)
        .into_iter()
        .filter(|e| e.database.as_deref().is_none_or(|d| d == db))
        .filter(|e| since.is_none_or(|s| e.at.is_none_or(|at| at >= s)))
        .find(|e| wanted.matches(e));
    match found {
        Some(e) => {
            let sqlstate = sqlstate(&e.error);
            let mut text = vec![e.error.clone()];
            text.extend(e.lines.iter().cloned());
            ServerLog { entry: Some(crate::redact::redact(&text.join("\n"))), sqlstate, why: None }
        }
        None => ServerLog {
            entry: None,
            sqlstate: None,
            why: Some(format!(
                "{path} holds no error of this migration's statements in its last {} MiB",
                TAIL >> 20
            )),
        },
    }
}

/// `ERROR:  23505: …` (log_error_verbosity = verbose) carries the SQLSTATE.
fn sqlstate(error: &str) -> Option<String> {
    let rest = error.strip_prefix("ERROR:")?.trim_start();
    let code = rest.get(..5)?;
    (rest[5..].starts_with(':') && code.chars().all(|c| c.is_ascii_alphanumeric())).then(|| code.to_string())
}

/// The end of the server's log and its path: through the server, else from this host's file.
async fn tail(client: &Client) -> Result<(String, String), String> {
    // pg_current_logfile() answers superusers and pg_monitor; without a collector it is NULL,
    // and Debian's clusters log to /var/log/postgresql/postgresql-<version>-<name>.log.
    let current: Option<String> = match client.query_one("SELECT pg_current_logfile()", &[]).await {
        Ok(r) => r.get(0),
        Err(_) => None,
    };
    let debian = "SELECT '/var/log/postgresql/postgresql-' || replace(current_setting('cluster_name'), '/', '-') || '.log'";
    let path = match current {
        Some(p) => p,
        None => match client.query_one(debian, &[]).await {
            Ok(r) => r.get::<_, String>(0),
            Err(e) => return Err(crate::pg::error_text(&e)),
        },
    };
    if path.ends_with("postgresql-.log") {
        return Err("the server names no log file (no logging_collector, no cluster_name): set logging_collector = on, and grant pg_monitor to pgmedic's role so pg_current_logfile() answers".into());
    }
    let read = "SELECT pg_read_file($1::text, greatest(0, (pg_stat_file($1::text)).size - $2), $2)";
    let server_err = match client.query_one(read, &[&path, &TAIL]).await {
        Ok(r) => return Ok((r.get(0), path)),
        Err(e) => crate::pg::error_text(&e),
    };
    match local_tail(&path) {
        Ok(text) => Ok((text, path)),
        Err(local) => Err(format!("cannot read the server log {path}: through the server: {server_err} (grant pg_read_server_files to pgmedic's role); on this host: {local} (or run pgmedic where it may read that file)")),
    }
}

fn local_tail(path: &str) -> Result<String, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL as u64))).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What ties a log entry to the migration: its statements' text, and the names they make.
struct Wanted {
    texts: Vec<String>,
    names: Vec<String>,
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").trim_end_matches(';').to_lowercase()
}

impl Wanted {
    fn of(stmts: &[Statement]) -> Wanted {
        let texts = stmts.iter().map(|s| squash(&s.sql)).filter(|t| t.len() >= 8).collect();
        let names = stmts
            .iter()
            .flat_map(|s| &s.effects)
            .filter_map(|e| match e {
                Effect::CreateRelation { name, .. } => Some(name.name.clone()),
                Effect::CreateIndex { name: Some(n), .. } => Some(n.name.clone()),
                Effect::AddColumn { column, .. } => Some(column.clone()),
                Effect::AddConstraint { name: Some(n), .. } => Some(n.clone()),
                _ => None,
            })
            .collect();
        Wanted { texts, names }
    }

    fn matches(&self, e: &Entry) -> bool {
        let statement = squash(&e.statement);
        if self.texts.iter().any(|t| statement.contains(t.as_str())) {
            return true;
        }
        let said = format!("{} {}", e.error, e.statement);
        self.names.iter().any(|n| super::leftovers::names(&said, n))
    }
}

/// One log line's parts: its time, backend pid, database, and message.
type Parts<'a> = (Option<DateTime<Utc>>, &'a str, Option<&'a str>, &'a str);

/// `2026-12-07 14:36:51.752 UTC [9345] user@db ERROR:  …` → (time, pid, database, the message).
fn split(line: &str) -> Option<Parts<'_>> {
    let open = line.find(" [")?;
    let close = open + line[open..].find("] ")?;
    let pid = &line[open + 2..close];
    let at = line
        .get(..open)
        .and_then(|t| t.strip_suffix(" UTC"))
        .and_then(|t| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").ok().map(|n| n.and_utc()));
    let rest = &line[close + 2..];
    let keys = [
        "ERROR:",
        "DETAIL:",
        "HINT:",
        "STATEMENT:",
        "CONTEXT:",
        "LOG:",
        "WARNING:",
        "NOTICE:",
        "FATAL:",
        "LOCATION:",
    ];
    let (k, _) = keys.iter().filter_map(|k| rest.find(k).map(|i| (i, k))).min()?;
    let who = rest[..k].trim();
    let database = who.split_once('@').map(|(_, d)| d).filter(|d| !d.is_empty());
    Some((at, pid, database, &rest[k..]))
}

/// Every ERROR in `text` with the DETAIL, HINT, CONTEXT and STATEMENT lines its backend wrote
/// after it (a statement's further lines start with a tab).
fn entries(text: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut open: Option<(String, usize)> = None;
    for line in text.lines() {
        if let Some(cont) = line.strip_prefix('\t') {
            if let Some((_, i)) = &open {
                out[*i].statement.push('\n');
                out[*i].statement.push_str(cont);
                if let Some(last) = out[*i].lines.last_mut() {
                    last.push('\n');
                    last.push_str(cont);
                }
            }
            continue;
        }
        let Some((at, pid, database, msg)) = split(line) else { continue };
        if msg.starts_with("ERROR:") {
            out.push(Entry {
                at,
                database: database.map(String::from),
                error: msg.to_string(),
                lines: vec![],
                statement: String::new(),
            });
            open = Some((pid.to_string(), out.len() - 1));
            continue;
        }
        match &open {
            Some((p, i)) if p == pid && !msg.starts_with("LOG:") && !msg.starts_with("ERROR:") => {
                if let Some(s) = msg.strip_prefix("STATEMENT:") {
                    out[*i].statement = s.trim().to_string();
                }
                out[*i].lines.push(msg.to_string());
            }
            Some((p, _)) if p == pid => open = None,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-12-07 14:36:51.752 UTC [9345] postgres@app ERROR:  could not create unique index \"accounts_email_key\"
2026-12-07 14:36:51.752 UTC [9345] postgres@app DETAIL:  Key (email)=(a@example.com) is duplicated.
2026-12-07 14:36:51.752 UTC [9345] postgres@app STATEMENT:  -- migrate:up transaction:false
\tCREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email);
2026-12-07 14:36:51.800 UTC [9350] postgres@other ERROR:  23505: duplicate key
2026-12-07 14:36:51.841 UTC [9364] postgres@app ERROR:  relation \"accounts_email_key\" already exists
2026-12-07 14:36:51.841 UTC [9364] postgres@app STATEMENT:  CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email);
";

    #[test]
    fn entries_keep_their_backends_lines_and_multi_line_statements() {
        let e = entries(LOG);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].database.as_deref(), Some("app"));
        assert_eq!(e[0].lines.len(), 2);
        assert!(e[0]
            .statement
            .ends_with("CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email);"));
        assert_eq!(sqlstate(&e[1].error).as_deref(), Some("23505"));
        assert_eq!(sqlstate(&e[0].error), None);
        let stmts = crate::sql::parse::parse(
            "CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email);",
        )
        .unwrap();
        let w = Wanted::of(&stmts);
        assert!(w.matches(&e[0]) && w.matches(&e[2]));
    }
}
