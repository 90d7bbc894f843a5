//! Restoring a scoped snapshot: its archive holds only some tables' rows (`pg_dump --data-only
//! --table …`), its schema text the whole schema. Into an empty database, the schema is loaded
//! and then the rows; onto a database that has them (`--clean`, the source after a repair), the
//! rows of exactly those tables are replaced and nothing else is touched. Either way it is one
//! transaction of pgmedic's own session, committed only after the stored object matched its
//! manifest. pg_restore only turns the archive into text; what that text may do is checked line
//! by line: `COPY` into a table of the scope, `setval` of a sequence those tables own, and
//! pg_dump's settings and comments — anything else (a forged archive) stops the restore.

use std::collections::HashSet;
use std::ffi::OsString;

use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use pg_query::NodeEnum;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_postgres::Client;

use super::stream::{stream_object, SinkMode, Streamed};
use super::{Progress, RestoreError, Restorer};
use crate::config::DbUrl;
use crate::pg::{self, Pipes};
use crate::snapshot::{Manifest, ScopedTable};

/// Flushes a COPY's rows to the server in chunks of about this size.
const CHUNK: usize = 256 * 1024;

impl Restorer {
    /// `empty`: the target has no user objects (load the schema first); otherwise replace the
    /// scoped tables' rows.
    pub(super) async fn restore_scoped(
        &self,
        m: &Manifest,
        tables: &[ScopedTable],
        url: &DbUrl,
        empty: bool,
        progress: &Progress,
    ) -> Result<Streamed, RestoreError> {
        let target = url.display_target();
        let fail = |message: String| RestoreError::Restore { target: target.clone(), message };
        let session = pg::connect(url).await?;
        let c = session.client();
        let q = |e: tokio_postgres::Error| {
            fail(format!("{} (one transaction: nothing was committed)", pg::error_text(&e)))
        };
        c.batch_execute("BEGIN").await.map_err(q)?;
        let result = async {
            if empty {
                self.load_schema(c, m).await.map_err(fail)?;
                // The other tables are empty: their rows are not in this snapshot, so foreign
                // keys into them cannot hold (a superuser loads the rows with triggers off).
                if superuser(c).await.map_err(q)? {
                    c.batch_execute("SET LOCAL session_replication_role = replica").await.map_err(q)?;
                }
            } else {
                let list: Vec<String> = tables.iter().map(ScopedTable::sql).collect();
                let sql = format!("LOCK TABLE {0} IN ACCESS EXCLUSIVE MODE; TRUNCATE {0}", list.join(", "));
                c.batch_execute(&sql).await.map_err(|e| {
                    fail(format!("cannot replace the rows of {}: {} (a table referenced by a foreign key from outside the snapshot's scope cannot be emptied: restore into a new database with --create and copy the rows back); nothing was committed", list.join(", "), pg::error_text(&e)))
                })?;
            }
            let owned = owned_sequences(c, tables).await.map_err(q)?;
            self.stream_rows(m, c, tables, &owned, url, progress).await
        }
        .await;
        match result {
            Ok(s) => {
                c.batch_execute("COMMIT").await.map_err(q)?;
                Ok(s)
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn load_schema(&self, c: &Client, m: &Manifest) -> Result<(), String> {
        use crate::diagnose::baseline::{schema_text, SchemaTextError};
        let text = match schema_text(&self.storage, m).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(format!("scoped snapshot {} has no schema text to restore its rows into", m.id))
            }
            Err(SchemaTextError::Mismatch) => {
                return Err(format!(
                    "the schema text of snapshot {} does not match its manifest: it is damaged",
                    m.id
                ))
            }
            Err(SchemaTextError::Unreadable(e)) => return Err(e),
        };
        let sql = crate::diagnose::lab::server_sql(&text);
        c.batch_execute(&sql)
            .await
            .map_err(|e| format!("the snapshot's schema does not load: {}", pg::error_text(&e)))
    }

    /// pg_restore turns the archive into text, which is applied here as it comes.
    async fn stream_rows(
        &self,
        m: &Manifest,
        c: &Client,
        tables: &[ScopedTable],
        owned: &HashSet<u32>,
        url: &DbUrl,
        progress: &Progress,
    ) -> Result<Streamed, RestoreError> {
        let args: Vec<OsString> = vec!["--data-only".into(), "--file=-".into()];
        let mut proc = self.tools.spawn("pg_restore", None, &args, Pipes { stdin: true, stdout: true })?;
        let stdin = proc.take_stdin()?;
        let stdout = proc.take_async_stdout().ok_or_else(|| RestoreError::Restore {
            target: url.display_target(),
            message: "pg_restore gave no output stream".into(),
        })?;
        let feed = stream_object(&self.storage, m, stdin, SinkMode::Strict, progress, self.keys(m)?);
        let apply = apply(c, BufReader::new(stdout), tables, owned);
        let (fed, applied) = tokio::join!(feed, apply);
        let fail = |message: String| RestoreError::Restore { target: url.display_target(), message };
        let streamed = match fed {
            Ok(s) => s,
            Err(e) => {
                proc.kill().await;
                return Err(e);
            }
        };
        proc.wait().await.map_err(|e| fail(format!("{e} (one transaction: nothing was committed)")))?;
        applied.map_err(|e| fail(format!("{e}; nothing was committed")))?;
        Ok(streamed)
    }
}

async fn superuser(c: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[]).await?.get(0))
}

/// The sequences the scoped tables own (serial and identity columns), as `regclass` prints them.
async fn owned_sequences(c: &Client, tables: &[ScopedTable]) -> Result<HashSet<u32>, tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(ScopedTable::sql).collect();
    let rows = c
        .query(
            "SELECT d.objid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
               AND d.refobjid IN (SELECT to_regclass(x) FROM unnest($1::text[]) x)",
            &[&names],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Applies pg_restore's data-only text: COPY blocks into scoped tables, setval of their
/// sequences; pg_dump's own settings and comments are passed over (this session keeps its own).
async fn apply<R: tokio::io::AsyncBufRead + Unpin>(
    c: &Client,
    mut input: R,
    tables: &[ScopedTable],
    owned: &HashSet<u32>,
) -> Result<(), String> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if !next_line(&mut input, &mut line).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if passed_over(text) {
            continue;
        }
        match statement(text, tables)? {
            Line::Copy(sql) => copy(c, &mut input, &sql).await?,
            Line::Setval { sql, sequence } => {
                let row = c
                    .query_one("SELECT to_regclass($1)::oid", &[&sequence])
                    .await
                    .map_err(|e| pg::error_text(&e))?;
                if !row.get::<_, Option<u32>>(0).is_some_and(|oid| owned.contains(&oid)) {
                    return Err(format!("the scoped snapshot's data sets sequence {sequence}, which no table of its scope owns"));
                }
                c.batch_execute(&sql).await.map_err(|e| pg::error_text(&e))?
            }
        }
    }
}

fn passed_over(text: &str) -> bool {
    text.is_empty()
        || text.starts_with("--")
        || text.starts_with("\\restrict ")
        || text.starts_with("\\unrestrict ")
        || (text.starts_with("SET ") && text.ends_with(';'))
        || text.starts_with("SELECT pg_catalog.set_config(")
}

enum Line {
    Copy(String),
    Setval { sql: String, sequence: String },
}

/// What a line of pg_restore's text is, by PostgreSQL's parser; Err for anything not allowed.
fn statement(text: &str, tables: &[ScopedTable]) -> Result<Line, String> {
    let refuse =
        || format!("the scoped snapshot's data holds a statement pgmedic does not run: {}", short(text));
    let parsed = pg_query::parse(text, pg_query::ParserOptions::DEFAULT).map_err(|_| refuse())?;
    let [raw] = parsed.protobuf.stmts.as_slice() else { return Err(refuse()) };
    match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
        Some(NodeEnum::CopyStmt(cs))
            if cs.is_from && !cs.is_program && cs.filename.is_empty() && cs.query.is_none() =>
        {
            let r = cs.relation.as_ref().ok_or_else(refuse)?;
            if !tables.iter().any(|t| t.schema == r.schemaname && t.table == r.relname) {
                return Err(format!(
                    "the scoped snapshot's data writes {}.{}, which is outside its scope",
                    r.schemaname, r.relname
                ));
            }
            Ok(Line::Copy(text.trim_end_matches(';').to_string()))
        }
        Some(NodeEnum::SelectStmt(s))
            if s.from_clause.is_empty() && s.where_clause.is_none() && s.target_list.len() == 1 =>
        {
            let sequence = setval_target(&s.target_list[0]).ok_or_else(refuse)?;
            Ok(Line::Setval { sql: text.to_string(), sequence })
        }
        _ => Err(refuse()),
    }
}

/// The sequence name of `pg_catalog.setval('<name>', <n>, <bool>)` with constant arguments.
fn setval_target(node: &pg_query::protobuf::Node) -> Option<String> {
    let Some(NodeEnum::ResTarget(t)) = node.node.as_ref() else { return None };
    let Some(NodeEnum::FuncCall(f)) = t.val.as_ref().and_then(|v| v.node.as_ref()) else { return None };
    let name: Vec<String> = f.funcname.iter().filter_map(crate::sql::names::string).collect();
    if name != ["pg_catalog", "setval"] || f.args.len() != 3 {
        return None;
    }
    if !f.args.iter().all(|a| matches!(a.node.as_ref(), Some(NodeEnum::AConst(_)))) {
        return None;
    }
    match f.args[0].node.as_ref() {
        Some(NodeEnum::AConst(c)) => match c.val.as_ref() {
            Some(pg_query::protobuf::a_const::Val::Sval(s)) => Some(s.sval.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// One COPY block: its rows, up to `\.`, streamed to the server.
async fn copy<R: tokio::io::AsyncBufRead + Unpin>(
    c: &Client,
    input: &mut R,
    sql: &str,
) -> Result<(), String> {
    let sink = c.copy_in::<_, Bytes>(sql).await.map_err(|e| pg::error_text(&e))?;
    futures::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(CHUNK);
    let mut line = Vec::new();
    loop {
        line.clear();
        if !next_line(input, &mut line).await? {
            return Err(format!("pg_restore's output ended inside `{}`", short(sql)));
        }
        if line == b"\\.\n" || line == b"\\." {
            break;
        }
        buf.extend_from_slice(&line);
        if buf.len() >= CHUNK {
            sink.send(buf.split().freeze()).await.map_err(|e| pg::error_text(&e))?;
        }
    }
    if !buf.is_empty() {
        sink.send(buf.freeze()).await.map_err(|e| pg::error_text(&e))?;
    }
    sink.finish().await.map_err(|e| format!("{}: {}", short(sql), pg::error_text(&e)))?;
    Ok(())
}

/// The next line of pg_restore's output into `line`; false at its end.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    input: &mut R,
    line: &mut Vec<u8>,
) -> Result<bool, String> {
    let n = input.read_until(b'\n', line).await.map_err(|e| format!("reading pg_restore's output: {e}"))?;
    Ok(n > 0)
}

fn short(text: &str) -> String {
    crate::redact::redact(&text.chars().take(120).collect::<String>())
}
