//! `sql_command`: the SQL of a migration written as code, printed by the tool's own command
//! (`python manage.py sqlmigrate shop {name}`, `alembic upgrade {prev}:{name} --sql`). It runs in
//! `rehearse_cwd` (or the config file's folder) in its own process group, for at most a minute,
//! with the connection variables of an empty database on pgmedic's scratch server — never the
//! production database (with `scratch.server = "source"`, which the operator chose, that empty
//! database is on the production server): Django's `sqlmigrate` connects, and a command that does
//! more than print (an `alembic upgrade` without `--sql`) then changes a throw-away database. Its transaction control
//! and its writes to the tool's own table are left out, so what remains is what the migration
//! does, replayed like any SQL file's.

use std::process::Stdio;
use std::time::Duration;

use super::lab::Env;
use crate::config::{DatabaseConfig, DbUrl, MigrationsConfig, ScratchConfig};
use crate::pg::scratch::{Purpose, Scratch};
use crate::process::{self, Group};
use crate::scratch::Server;
use crate::sql::{self, Statement};
use crate::watch::{Dialect, Migration};

const LIMIT: Duration = Duration::from_secs(60);

/// The command's output and the migration's statements in it.
pub async fn statements(
    mig: &MigrationsConfig,
    db: &DatabaseConfig,
    dialect: &dyn Dialect,
    m: &Migration,
    env: Env<'_>,
) -> Result<(String, Vec<Statement>), String> {
    let cfg = ScratchConfig { dir: crate::scratch::schema_dir(env.scratch), ..env.scratch.clone() };
    let server = Server::open(&cfg, env.state_dir, db, env.pg_bin_dir).await.map_err(|e| {
        format!("sql_command runs against a scratch database, never the production one, and none could be had: {e}")
    })?;
    let empty = match Scratch::create(server.admin(), Purpose::Baseline).await {
        Ok(s) => s,
        Err(e) => {
            server.close().await;
            return Err(format!("cannot create a scratch database for sql_command: {e}"));
        }
    };
    let out = run(mig, &empty.url, dialect, m).await;
    if !server.is_ephemeral() {
        if let Err(e) = empty.drop().await {
            tracing::warn!(database = %empty.url.dbname(), error = %e, "could not drop sql_command's scratch database");
        }
    }
    drop(empty);
    server.close().await;
    out
}

/// The command run against `url` (the scratch database), and its statements.
async fn run(
    mig: &MigrationsConfig,
    url: &DbUrl,
    dialect: &dyn Dialect,
    m: &Migration,
) -> Result<(String, Vec<Statement>), String> {
    let (name, prev) = (dialect.command_name(m), dialect.command_prev(m).unwrap_or_else(|| "base".into()));
    let argv: Vec<String> =
        mig.sql_command.iter().map(|a| a.replace("{name}", &name).replace("{prev}", &prev)).collect();
    let shown = crate::redact::redact(&argv.join(" "));
    let target = crate::rehearse::deploy::Target { url, loopback: None, cwd: &mig.sql_command_cwd };
    let mut cmd = process::command(&argv[0]);
    cmd.args(&argv[1..])
        .envs(crate::rehearse::deploy::env_for(&target))
        .current_dir(&mig.sql_command_cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut group = Group::spawn(&mut cmd).map_err(|e| format!("cannot start sql_command `{shown}`: {e}"))?;
    let out = tokio::spawn(process::read_head(group.child().stdout.take().expect("piped"), 16 << 20));
    let err = tokio::spawn(process::read_head(group.child().stderr.take().expect("piped"), 64 << 10));
    let status = tokio::time::timeout(LIMIT, group.child().wait()).await;
    group.kill().await;
    let (stdout, stderr) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    match status {
        Ok(Ok(s)) if s.success() => {}
        Ok(_) => {
            return Err(format!(
                "sql_command `{shown}` failed: {}",
                crate::redact::redact(String::from_utf8_lossy(&stderr).trim())
            ))
        }
        Err(_) => return Err(format!("sql_command `{shown}` did not finish within {}s", LIMIT.as_secs())),
    }
    let text = String::from_utf8_lossy(&stdout).into_owned();
    let parsed = sql::parse::parse(&text)
        .map_err(|e| format!("the SQL sql_command `{shown}` printed does not parse: {e}"))?;
    let own = dialect.table();
    let kept = parsed
        .into_iter()
        .filter(|s| !matches!(s.node, pg_query::NodeEnum::TransactionStmt(_)) && !s.sql.contains(own))
        .enumerate()
        .map(|(i, s)| Statement { index: i + 1, ..s })
        .collect();
    Ok((text, kept))
}
