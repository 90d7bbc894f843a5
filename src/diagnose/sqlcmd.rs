//! `sql_command`: the SQL of a migration written as code, printed by the tool's own command
//! (`python manage.py sqlmigrate shop {name}`, `alembic upgrade {prev}:{name} --sql`). It runs in
//! `rehearse_cwd` (or the config file's folder) in its own process group, with the database's
//! connection variables (Django's `sqlmigrate` connects; it only reads), for at most a minute;
//! its transaction control and its writes to the tool's own table are left out, so what remains
//! is what the migration does, replayed like any SQL file's.

use std::process::Stdio;
use std::time::Duration;

use crate::config::{DatabaseConfig, MigrationsConfig};
use crate::process::{self, Group};
use crate::sql::{self, Statement};
use crate::watch::{Dialect, Migration};

const LIMIT: Duration = Duration::from_secs(60);

/// The command's output and the migration's statements in it.
pub async fn statements(
    mig: &MigrationsConfig,
    db: &DatabaseConfig,
    dialect: &dyn Dialect,
    m: &Migration,
) -> Result<(String, Vec<Statement>), String> {
    let (name, prev) = (dialect.command_name(m), dialect.command_prev(m).unwrap_or_else(|| "base".into()));
    let argv: Vec<String> =
        mig.sql_command.iter().map(|a| a.replace("{name}", &name).replace("{prev}", &prev)).collect();
    let shown = crate::redact::redact(&argv.join(" "));
    let target = crate::rehearse::deploy::Target { url: &db.url, loopback: None, cwd: &mig.sql_command_cwd };
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
