//! The effective configuration rendered back as TOML for `check-config` and `Debug`, with
//! secrets redacted: URL passwords, webhook tokens, secrets in playbook SQL and commands.

use super::*;

const MIB: u64 = 1024 * 1024;

pub fn render(cfg: &Config) -> String {
    let mut out = format!("# effective configuration from {}\n", cfg.source.display());
    let d = &cfg.daemon;
    out += &format!(
        "[daemon]\nsocket = {:?}\nstate_dir = {:?}\nmetrics_listen = {:?}\nshutdown_timeout = {:?}\nallowed_uids = {:?}\ninstance = {:?}\nheartbeat_interval = {:?}\n{}\n",
        d.socket.display().to_string(),
        d.state_dir.display().to_string(),
        d.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
        humantime::format_duration(d.shutdown_timeout).to_string(),
        d.allowed_uids,
        d.instance,
        humantime::format_duration(d.heartbeat_interval).to_string(),
        // The file, never the token it holds.
        d.http_token
            .as_ref()
            .map(|t| format!("http_token_file = {:?}\n", t.file.display().to_string()))
            .unwrap_or_default(),
    );
    let s = &cfg.storage;
    out += "[storage]\n";
    match &s.backend {
        StorageBackend::Local { path } => {
            out += &format!("backend = \"local\"\npath = {:?}\n", path.display().to_string())
        }
        StorageBackend::S3(c) => {
            out += &format!(
                "backend = \"s3\"\nbucket = {:?}\nendpoint = {:?}\nregion = {:?}\nforce_path_style = {}\n",
                c.bucket,
                c.endpoint.clone().unwrap_or_default(),
                c.region,
                c.force_path_style
            );
            if let Some(sse) = &c.sse {
                out += &format!("sse = {sse:?}\n");
            }
            if let Some(k) = &c.kms_key_id {
                out += &format!("kms_key_id = {k:?}\n");
            }
            out += &format!("part_checksum = {:?}\n", if c.part_crc32 { "crc32" } else { "none" });
        }
    }
    out += &format!(
        "prefix = {:?}\ntimeout = {:?}\nupload_concurrency = {}\npart_size_mib = {}\n\n",
        s.prefix,
        humantime::format_duration(s.timeout).to_string(),
        s.upload_concurrency,
        s.part_size / MIB
    );
    if let Some(e) = &cfg.storage.encryption {
        out += &format!(
            "\n[storage.encryption]\nrecipients = {:?}\nidentity_file = {:?}\n",
            e.recipients,
            e.identity_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    let n = &cfg.snapshot;
    let r = &n.retention;
    out += &format!(
        "[snapshot]\ncompression_level = {}\ncompression_threads = {}\nmax_concurrent = {}\nlock_wait_timeout = {:?}\npg_bin_dir = {:?}\nretention = {{ keep_last = {}, keep_daily = {}, keep_weekly = {}, keep_monthly = {}, keep_pre_repair_days = {} }}\non_standby = {:?}\n",
        n.compression_level,
        n.compression_threads,
        n.max_concurrent,
        humantime::format_duration(n.lock_wait_timeout).to_string(),
        n.pg_bin_dir.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        r.keep_last,
        r.keep_daily,
        r.keep_weekly,
        r.keep_monthly,
        r.keep_pre_repair_days,
        if n.snapshot_standbys { "snapshot" } else { "skip" }
    );
    for db in &cfg.databases {
        out += &format!("\n[[databases]]\nname = {:?}\nurl = {:?}\n", db.name, db.url.redacted());
        if let Some(s) = &db.drill {
            out += &format!("drill = {:?}\n", s.as_str());
        }
        if let Some(s) = &db.schedule {
            out += &format!("schedule = {:?}\n", s.as_str());
        }
        if let Some(m) = &db.migrations {
            out += &format!(
                "[databases.migrations]\ntool = {:?}\ntable = {:?}\nschema = {:?}\ndir = {:?}\nwatch_interval = {:?}\non_failure = {:?}\n",
                m.tool,
                m.table,
                m.schema,
                m.dir
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                humantime::format_duration(m.watch_interval).to_string(),
                format!("{:?}", m.on_failure).to_lowercase()
            );
            if !m.sql_command.is_empty() {
                let argv: Vec<String> = m.sql_command.iter().map(|a| crate::redact::redact(a)).collect();
                out += &format!("sql_command = {argv:?}\n");
            }
            if let Some(t) = &m.table_schema {
                out += &format!("table_schema = {t:?}\n");
            }
            if !m.rehearse_command.is_empty() {
                let argv: Vec<String> = m.rehearse_command.iter().map(|a| crate::redact::redact(a)).collect();
                out += &format!("rehearse_command = {argv:?}\n");
            }
            if let Some(d) = &m.rehearse_cwd {
                out += &format!("rehearse_cwd = {:?}\n", d.display().to_string());
            }
        }
    }
    out += &format!(
        "\n[repair]\nstatement_timeout = {:?}\nlock_wait = {:?}\nlock_timeout = {:?}\nlock_retries = {}\ncrash_grace = {:?}\nsnapshot = {:?}\n",
        humantime::format_duration(cfg.repair.statement_timeout).to_string(),
        humantime::format_duration(cfg.repair.lock_wait).to_string(),
        humantime::format_duration(cfg.repair.lock_timeout).to_string(),
        cfg.repair.lock_retries,
        humantime::format_duration(cfg.repair.crash_grace).to_string(),
        if cfg.repair.snapshot_full { "full" } else { "auto" },
    );
    out += &format!(
        "\n[rehearse]\n{}max_age = {:?}\ntimeout = {:?}\n",
        cfg.rehearse.target.as_ref().map(|t| format!("target = {:?}\n", t.redacted())).unwrap_or_default(),
        humantime::format_duration(cfg.rehearse.max_age).to_string(),
        humantime::format_duration(cfg.rehearse.timeout).to_string()
    );
    let server = match &cfg.scratch.server {
        super::ScratchServer::Ephemeral => "ephemeral".to_string(),
        super::ScratchServer::Source => "source".to_string(),
        super::ScratchServer::Url(u) => u.redacted(),
    };
    out += &format!("\n[scratch]\nserver = {server:?}\ndir = {:?}\n", cfg.scratch.dir.display().to_string());
    let schema_dir =
        cfg.scratch.schema_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "auto".into());
    out += &format!("schema_dir = {schema_dir:?}\n");
    for p in &cfg.playbooks {
        out += &render_playbook(p);
    }
    for w in &cfg.notify {
        out += &format!("\n[[notify]]\nwebhook = {:?}\n", redact_webhook(w));
    }
    out
}

fn render_playbook(p: &super::Playbook) -> String {
    use super::Step;
    let mut out = format!("\n[[playbooks]]\nname = {:?}\n", p.name);
    if let Some(d) = &p.database {
        out += &format!("database = {d:?}\n");
    }
    out += &format!(
        "match = {{ migration = {:?}, log_contains = {:?} }}\nsteps = [\n",
        p.migration.clone().unwrap_or_else(|| "*".into()),
        p.log_contains.clone().unwrap_or_default()
    );
    for step in &p.steps {
        let line = match step {
            Step::Sql { sql, .. } => format!("{{ sql = {:?} }}", crate::redact::redact(sql)),
            Step::SqlFile { path, .. } => format!("{{ sql_file = {:?} }}", path.display().to_string()),
            Step::Resolve(how) => format!(
                "{{ resolve = {:?} }}",
                serde_json::to_value(how).unwrap_or_default().as_str().unwrap_or("")
            ),
            Step::Command { argv, timeout, .. } => format!(
                "{{ command = {:?}, timeout = {:?} }}",
                argv.iter().map(|a| crate::redact::redact(a)).collect::<Vec<_>>(),
                humantime::format_duration(*timeout).to_string()
            ),
            Step::AssertSql { sql } => format!("{{ assert_sql = {:?} }}", crate::redact::redact(sql)),
            Step::Finish { .. } => "{ finish = true }".to_string(),
            Step::Undo { allow_data_loss, .. } => {
                format!("{{ undo = true, allow_data_loss = {allow_data_loss} }}")
            }
            Step::ReleaseLock => "{ release_lock = true }".to_string(),
            Step::AcceptChecksums => "{ accept_checksums = true }".to_string(),
        };
        out += &format!("  {line},\n");
    }
    out + "]\n"
}

/// Webhook URLs carry their token in the path (Slack, Teams): keep only scheme and host.
fn redact_webhook(w: &str) -> String {
    match url::Url::parse(w) {
        Ok(u) => format!("{}://{}/***", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "***".into(),
    }
}
