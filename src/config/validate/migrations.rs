//! `[databases.migrations]`: the tool and where its table and files are, what a failure gets,
//! and the commands that rehearse a deploy or print a migration's SQL.

use std::time::Duration;

use super::super::raw::RawMigrations;
use super::super::{MigrationsConfig, OnFailure};
use super::{ConfigError, Ctx};

/// Each tool's default table (a leaf: the list lives here, the dialects in `watch`); `auto`
/// finds its table by columns.
const TOOLS: &[(&str, &str)] = &[
    ("prisma", "_prisma_migrations"),
    ("golang-migrate", "schema_migrations"),
    ("knex", "knex_migrations"),
    ("liquibase", "databasechangelog"),
    ("sqlx", "_sqlx_migrations"),
    ("flyway", "flyway_schema_history"),
    ("dbmate", "schema_migrations"),
    ("node-pg-migrate", "pgmigrations"),
    ("drizzle", "__drizzle_migrations"),
    ("sequelize", "SequelizeMeta"),
    ("typeorm", "migrations"),
    ("django", "django_migrations"),
    ("alembic", "alembic_version"),
    ("rails", "schema_migrations"),
    ("auto", ""),
];

/// A command's argv: absent is none, present must name a program.
fn argv(ctx: &Ctx, key: &str, value: Option<Vec<String>>, example: &str) -> Result<Vec<String>, ConfigError> {
    match value {
        Some(argv) if argv.first().is_none_or(|p| p.is_empty()) => {
            let name = key.rsplit('.').next().unwrap_or(key);
            Err(ctx.err(key, format!("needs a program: {name} = {example}")))
        }
        argv => Ok(argv.unwrap_or_default()),
    }
}

fn default_table(tool: &str) -> Option<&'static str> {
    TOOLS.iter().find(|(t, _)| *t == tool).map(|(_, table)| *table)
}

pub(super) fn migrations(ctx: &Ctx, i: usize, raw: RawMigrations) -> Result<MigrationsConfig, ConfigError> {
    let key = |k: &str| format!("databases[{i}].migrations.{k}");
    let tool = raw.tool.unwrap_or_else(|| "prisma".into());
    let Some(default_table) = default_table(&tool) else {
        return Err(ctx.err(
            key("tool"),
            format!(
                "`{tool}` is not supported (supported: {})",
                TOOLS.iter().map(|(t, _)| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let on_failure = match raw.on_failure.as_deref().unwrap_or("notify") {
        "repair" => OnFailure::Repair,
        "snapshot" => OnFailure::Snapshot,
        "notify" => OnFailure::Notify,
        other => {
            return Err(ctx
                .err(key("on_failure"), format!("`{other}` is not \"repair\", \"snapshot\" or \"notify\"")));
        }
    };
    Ok(MigrationsConfig {
        table: raw.table.unwrap_or_else(|| default_table.into()),
        schema: raw.schema.unwrap_or_else(|| "public".into()),
        // drizzle keeps its table in a schema of its own.
        table_schema: raw.table_schema.or_else(|| (tool == "drizzle").then(|| "drizzle".into())),
        dir: raw.dir.map(|d| ctx.path(&d)),
        watch_interval: ctx.duration(
            &key("watch_interval"),
            raw.watch_interval.as_deref(),
            Duration::from_secs(30),
        )?,
        on_failure,
        tool,
        rehearse_command: argv(
            ctx,
            &key("rehearse_command"),
            raw.rehearse_command,
            "[\"npx\", \"prisma\", \"migrate\", \"deploy\"]",
        )?,
        sql_command: argv(
            ctx,
            &key("sql_command"),
            raw.sql_command,
            "[\"python\", \"manage.py\", \"sqlmigrate\", \"shop\", \"{name}\"]",
        )?,
        sql_command_cwd: ctx.path(raw.rehearse_cwd.as_deref().unwrap_or(".")),
        // Relative to the config file's folder, as the operator reads the file.
        rehearse_cwd: raw.rehearse_cwd.map(|d| ctx.path(&d)),
    })
}
