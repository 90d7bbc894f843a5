//! Turns the raw file into typed values, naming the key at fault when it cannot.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawConfig, RawDatabase, RawRetention, RawSnapshot, RawStorage};
use super::*;

mod migrations;

use migrations::migrations;

const DEFAULT_SOCKET: &str = "/run/pgmedic/pgmedic.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/pgmedic";
const MIB: u64 = 1024 * 1024;

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    /// A path as the file gives it: relative ones are from the configuration file's folder
    /// (as the operator reads the file), never from wherever pgmedic was started.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let base = self.path.parent().filter(|b| !b.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let joined = base.join(p);
        // `config/../var` reads as the folder it names (lexically: `..` after a folder drops it).
        let mut out = PathBuf::new();
        for c in std::path::absolute(&joined).unwrap_or(joined).components() {
            match c {
                std::path::Component::ParentDir if out.parent().is_some() => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }

    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_path_buf(), key: key.into(), message: message.into() }
    }

    fn duration(&self, key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v)
                .map_err(|e| self.err(key, format!("`{v}` is not a duration like \"30s\" or \"10m\": {e}"))),
        }
    }
}

pub fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let ctx = Ctx { path };
    let daemon = DaemonConfig {
        socket: ctx.path(raw.daemon.socket.as_deref().unwrap_or(DEFAULT_SOCKET)),
        state_dir: ctx.path(raw.daemon.state_dir.as_deref().unwrap_or(DEFAULT_STATE_DIR)),
        metrics_listen: match raw.daemon.metrics_listen.as_deref() {
            None | Some("") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                ctx.err("daemon.metrics_listen", format!("`{a}` is not an address like \"127.0.0.1:9832\""))
            })?),
        },
        shutdown_timeout: ctx.duration(
            "daemon.shutdown_timeout",
            raw.daemon.shutdown_timeout.as_deref(),
            Duration::from_secs(60),
        )?,
        allowed_uids: raw.daemon.allowed_uids.unwrap_or_default(),
        instance: match raw.daemon.instance {
            None => crate::snapshot::hostname(),
            Some(i) if i.is_empty() || i.len() > 128 || !i.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || i.starts_with('.') => {
                return Err(ctx.err("daemon.instance", format!("`{i}` must be 1 to 128 letters, digits, `-`, `_` or `.` (it names a file in the storage), not starting with `.`")))
            }
            Some(i) => i,
        },
        http_token: raw.daemon.http_token_file.map(|f| http_token(&ctx, &f)).transpose()?,
        heartbeat_interval: ctx.duration(
            "daemon.heartbeat_interval",
            raw.daemon.heartbeat_interval.as_deref(),
            Duration::from_secs(60),
        )?,
    };
    if daemon.heartbeat_interval < Duration::from_secs(1) {
        return Err(ctx.err("daemon.heartbeat_interval", "must be at least 1s"));
    }
    let storage = storage(&ctx, raw.storage)?;
    let mut snapshot = snapshot(&ctx, raw.snapshot)?;
    snapshot.encryption = storage.encryption.clone();
    snapshot.instance = daemon.instance.clone();
    if raw.databases.is_empty() {
        return Err(ctx.err("databases", "no [[databases]] entry: add one with `name` and `url`"));
    }
    let mut names = HashSet::new();
    let mut databases = Vec::new();
    for (i, db) in raw.databases.into_iter().enumerate() {
        let db = database(&ctx, i, db)?;
        if !names.insert(db.name.clone()) {
            return Err(ctx.err(format!("databases[{i}].name"), format!("`{}` is used twice", db.name)));
        }
        databases.push(db);
    }
    let mut notify = Vec::new();
    for (i, n) in raw.notify.into_iter().enumerate() {
        // The URL carries a token: say what is wrong with it, never echo it.
        match url::Url::parse(&n.webhook) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                notify.push(n.webhook)
            }
            _ => return Err(ctx.err(format!("notify[{i}].webhook"), "is not an http(s) URL with a host")),
        }
    }
    let names: Vec<String> = databases.iter().map(|d| d.name.clone()).collect();
    let repair = super::playbook::repair(raw.repair).map_err(|(k, m)| ctx.err(k, m))?;
    let playbooks = raw
        .playbooks
        .into_iter()
        .enumerate()
        .map(|(i, p)| super::playbook::playbook(i, p, &names).map_err(|(k, m)| ctx.err(k, m)))
        .map(|p| p.map(|p| from_config_folder(&ctx, p)))
        .collect::<Result<Vec<_>, _>>()?;
    let rehearse = rehearse(&ctx, raw.rehearse)?;
    let scratch = scratch(&ctx, raw.scratch, &daemon.state_dir)?;
    Ok(Config {
        source: path.to_path_buf(),
        daemon,
        storage,
        snapshot,
        databases,
        repair,
        playbooks,
        notify,
        rehearse,
        scratch,
    })
}

/// A playbook's `sql_file` and command `cwd`, relative to the configuration file's folder.
fn from_config_folder(ctx: &Ctx, mut p: super::Playbook) -> super::Playbook {
    for s in &mut p.steps {
        match s {
            super::Step::SqlFile { path, .. } => *path = ctx.path(&path.to_string_lossy()),
            super::Step::Command { cwd: Some(d), .. } => *d = ctx.path(&d.to_string_lossy()),
            _ => {}
        }
    }
    p
}

/// The token file's first line, trimmed; a missing, unreadable or empty file is named.
fn http_token(ctx: &Ctx, file: &str) -> Result<super::HttpToken, ConfigError> {
    let path = ctx.path(file);
    let key = "daemon.http_token_file";
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ctx.err(key, format!("cannot read the token file {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(ctx.err(
            key,
            format!(
                "the token file {} must hold a token of at least 16 characters on its first line",
                path.display()
            ),
        ));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(
            ctx.err(key, format!("the token in {} must be printable ASCII without spaces", path.display()))
        );
    }
    Ok(super::HttpToken { file: path, token: Secret::new(token) })
}

fn scratch(ctx: &Ctx, raw: super::raw::RawScratch, state_dir: &Path) -> Result<ScratchConfig, ConfigError> {
    let server = match raw.server.as_deref().map(str::trim) {
        None | Some("ephemeral") => ScratchServer::Ephemeral,
        Some("source") => ScratchServer::Source,
        Some(url) if url.contains("://") || url.contains('=') => ScratchServer::Url(
            url.parse::<DbUrl>()
                .map_err(|e| ctx.err("scratch.server", format!("not a PostgreSQL connection string: {e}")))?,
        ),
        Some(other) => {
            return Err(ctx.err(
                "scratch.server",
                format!("`{other}` is not \"ephemeral\", \"source\" or a PostgreSQL URL"),
            ))
        }
    };
    let dir = match raw.dir {
        Some(d) if d.trim().is_empty() => return Err(ctx.err("scratch.dir", "must not be empty")),
        Some(d) => ctx.path(&d),
        None => state_dir.join("scratch"),
    };
    let schema_dir = match raw.schema_dir.as_deref().map(str::trim) {
        None | Some("auto") => None,
        Some("") => return Err(ctx.err("scratch.schema_dir", "must not be empty (\"auto\" or a folder)")),
        Some(d) => Some(ctx.path(d)),
    };
    Ok(ScratchConfig { server, dir, schema_dir })
}

fn rehearse(ctx: &Ctx, raw: super::raw::RawRehearse) -> Result<super::RehearseConfig, ConfigError> {
    let target =
        match raw.target {
            None => None,
            Some(t) => Some(t.parse::<super::DbUrl>().map_err(|e| {
                ctx.err("rehearse.target", format!("not a PostgreSQL connection string: {e}"))
            })?),
        };
    Ok(super::RehearseConfig {
        target,
        max_age: ctx.duration("rehearse.max_age", raw.max_age.as_deref(), Duration::from_secs(24 * 3600))?,
        timeout: ctx.duration("rehearse.timeout", raw.timeout.as_deref(), Duration::from_secs(1800))?,
    })
}

fn snapshot(ctx: &Ctx, raw: RawSnapshot) -> Result<SnapshotConfig, ConfigError> {
    Ok(SnapshotConfig {
        compression_level: match raw.compression_level.unwrap_or(3) {
            l @ 1..=19 => l,
            l => {
                return Err(ctx.err("snapshot.compression_level", format!("{l} is outside 1..=19")));
            }
        },
        compression_threads: raw.compression_threads.unwrap_or(0),
        pg_bin_dir: raw
            .pg_bin_dir
            .map(|d| d.into_vec())
            .unwrap_or_default()
            .into_iter()
            .map(|d| ctx.path(&d))
            .collect(),
        retention: retention(raw.retention),
        max_concurrent: match raw.max_concurrent.unwrap_or(1) {
            n @ 1..=64 => n,
            n => return Err(ctx.err("snapshot.max_concurrent", format!("{n} is outside 1..=64"))),
        },
        lock_wait_timeout: ctx.duration(
            "snapshot.lock_wait_timeout",
            raw.lock_wait_timeout.as_deref(),
            Duration::from_secs(300),
        )?,
        encryption: None,
        snapshot_standbys: match raw.on_standby.as_deref().unwrap_or("skip") {
            "skip" => false,
            "snapshot" => true,
            other => {
                return Err(
                    ctx.err("snapshot.on_standby", format!("`{other}` is not \"skip\" or \"snapshot\""))
                )
            }
        },
        instance: String::new(),
    })
}

fn storage(ctx: &Ctx, mut raw: RawStorage) -> Result<StorageConfig, ConfigError> {
    let backend = match raw.backend.as_deref().unwrap_or("local") {
        "local" => {
            if raw.sse.is_some() || raw.kms_key_id.is_some() {
                return Err(ctx.err("storage.sse", "server-side encryption applies to backend = \"s3\""));
            }
            if raw.part_checksum.is_some() {
                return Err(ctx.err("storage.part_checksum", "applies to backend = \"s3\""));
            }
            let path =
                raw.path.ok_or_else(|| ctx.err("storage.path", "required when backend = \"local\""))?;
            StorageBackend::Local { path: ctx.path(&path) }
        }
        "s3" => {
            let bucket = raw.bucket.filter(|b| !b.is_empty());
            let bucket = bucket.ok_or_else(|| ctx.err("storage.bucket", "required when backend = \"s3\""))?;
            if let Some(e) = &raw.endpoint {
                url::Url::parse(e)
                    .map_err(|err| ctx.err("storage.endpoint", format!("`{e}` is not a URL: {err}")))?;
            }
            let (sse, kms_key_id) = sse(ctx, raw.sse.take(), raw.kms_key_id.take())?;
            let part_crc32 = match raw.part_checksum.as_deref().unwrap_or("crc32") {
                "crc32" => true,
                "none" => false,
                other => {
                    let why = format!("`{other}` is not \"crc32\" or \"none\"");
                    return Err(ctx.err("storage.part_checksum", why));
                }
            };
            StorageBackend::S3(S3Config {
                bucket,
                endpoint: raw.endpoint,
                region: raw.region.unwrap_or_else(|| "us-east-1".into()),
                force_path_style: raw.force_path_style.unwrap_or(false),
                sse,
                kms_key_id,
                part_crc32,
            })
        }
        other => {
            return Err(ctx.err("storage.backend", format!("`{other}` is not \"local\" or \"s3\"")));
        }
    };
    let prefix = raw.prefix.unwrap_or_default().trim_matches('/').to_string();
    if prefix.split('/').any(|s| s == ".." || s == ".") {
        return Err(ctx.err("storage.prefix", "must not contain `.` or `..` segments"));
    }
    let upload_concurrency = raw.upload_concurrency.unwrap_or(2);
    if !(1..=16).contains(&upload_concurrency) {
        return Err(ctx.err("storage.upload_concurrency", format!("{upload_concurrency} is outside 1..=16")));
    }
    let part_mib = raw.part_size_mib.unwrap_or(8);
    if !(5..=512).contains(&part_mib) {
        return Err(ctx.err(
            "storage.part_size_mib",
            format!("{part_mib} is outside 5..=512 (S3's minimum part is 5 MiB)"),
        ));
    }
    let encryption = raw.encryption.map(|e| encryption(ctx, e)).transpose()?;
    Ok(StorageConfig {
        backend,
        prefix,
        timeout: ctx.duration("storage.timeout", raw.timeout.as_deref(), Duration::from_secs(60))?,
        upload_concurrency,
        part_size: part_mib * MIB,
        encryption,
    })
}

type Sse = (Option<String>, Option<String>);

fn sse(ctx: &Ctx, sse: Option<String>, kms_key_id: Option<String>) -> Result<Sse, ConfigError> {
    match (sse.as_deref(), &kms_key_id) {
        (None, None) | (Some("AES256"), None) | (Some("aws:kms"), _) => Ok((sse, kms_key_id)),
        (Some("AES256") | None, Some(_)) => {
            Err(ctx.err("storage.kms_key_id", "belongs to sse = \"aws:kms\""))
        }
        (Some(other), _) => {
            Err(ctx.err("storage.sse", format!("`{other}` is not \"AES256\" or \"aws:kms\"")))
        }
    }
}

fn encryption(ctx: &Ctx, raw: super::raw::RawEncryption) -> Result<super::Encryption, ConfigError> {
    if raw.recipients.is_empty() {
        return Err(ctx.err("storage.encryption.recipients", "needs at least one age recipient (age1…)"));
    }
    for (i, r) in raw.recipients.iter().enumerate() {
        if r.parse::<age::x25519::Recipient>().is_err() {
            return Err(ctx.err(
                format!("storage.encryption.recipients[{i}]"),
                "is not an age X25519 recipient (age1…)",
            ));
        }
    }
    Ok(super::Encryption {
        recipients: raw.recipients,
        identity_file: raw.identity_file.map(|f| ctx.path(&f)),
    })
}

fn retention(raw: RawRetention) -> Retention {
    Retention {
        keep_last: raw.keep_last.unwrap_or(7),
        keep_daily: raw.keep_daily.unwrap_or(7),
        keep_weekly: raw.keep_weekly.unwrap_or(4),
        keep_monthly: raw.keep_monthly.unwrap_or(6),
        keep_pre_repair_days: raw.keep_pre_repair_days.unwrap_or(30),
    }
}

fn database(ctx: &Ctx, i: usize, raw: RawDatabase) -> Result<DatabaseConfig, ConfigError> {
    let key = |k: &str| format!("databases[{i}].{k}");
    let valid_name = !raw.name.is_empty()
        && raw.name.len() <= 63
        && raw.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(ctx.err(key("name"), format!("`{}` must be 1-63 letters, digits, `_` or `-`", raw.name)));
    }
    if raw.name.eq_ignore_ascii_case(super::OWN_STORAGE_FOLDER) {
        return Err(ctx.err(
            key("name"),
            format!("`{}` is reserved: pgmedic keeps its own records under that storage folder", raw.name),
        ));
    }
    let text = match (raw.url, raw.url_file) {
        (Some(u), None) => u,
        (None, Some(f)) => std::fs::read_to_string(ctx.path(&f))
            .map_err(|e| ctx.err(key("url_file"), format!("cannot read {f}: {e}")))?
            .trim()
            .to_string(),
        (Some(_), Some(_)) => return Err(ctx.err(key("url"), "give `url` or `url_file`, not both")),
        (None, None) => return Err(ctx.err(key("url"), "required (or `url_file`)")),
    };
    let url: DbUrl =
        text.parse().map_err(|e| ctx.err(key("url"), format!("not a PostgreSQL connection string: {e}")))?;
    let schedule =
        raw.schedule.as_deref().map(Schedule::parse).transpose().map_err(|m| ctx.err(key("schedule"), m))?;
    let drill =
        raw.drill.as_deref().map(Schedule::parse).transpose().map_err(|m| ctx.err(key("drill"), m))?;
    let migrations = raw.migrations.map(|m| migrations(ctx, i, m)).transpose()?;
    let pg_bin_dir = raw.pg_bin_dir.map(|d| ctx.path(&d));
    Ok(DatabaseConfig { name: raw.name, url, schedule, drill, pg_bin_dir, migrations })
}

#[cfg(test)]
mod tests {

    const BASE: &str = r#"
[storage]
path = "snaps"
[[databases]]
name = "app"
url = "postgresql://app:pw@127.0.0.1/app"
"#;

    use super::super::load_for_test as load;

    #[test]
    fn unknown_key_is_named() {
        let err = load(&format!("{BASE}\n[snapshot]\ncompresion_level = 3\n"), &[]).unwrap_err();
        assert!(err.contains("compresion_level"), "{err}");
    }

    #[test]
    fn bad_value_names_key() {
        let err = load(&format!("{BASE}\n[snapshot]\ncompression_level = 40\n"), &[]).unwrap_err();
        assert!(err.contains("snapshot.compression_level"), "{err}");
    }

    #[test]
    fn part_checksum_is_crc32_none_or_named_as_wrong() {
        let s3 = |v: &str| {
            format!("[storage]\nbackend = \"s3\"\nbucket = \"b\"\n{v}\n[[databases]]\nname = \"app\"\nurl = \"postgresql://app@h/app\"\n")
        };
        let crc = |cfg: super::super::Config| match cfg.storage.backend {
            super::super::StorageBackend::S3(c) => c.part_crc32,
            _ => unreachable!(),
        };
        assert!(crc(load(&s3(""), &[]).unwrap()), "crc32 by default");
        assert!(!crc(load(&s3("part_checksum = \"none\""), &[]).unwrap()));
        let err = load(&s3("part_checksum = \"md5\""), &[]).unwrap_err();
        assert!(err.contains("storage.part_checksum") && err.contains("`md5`"), "{err}");
        let local = "[storage]\npath = \"s\"\npart_checksum = \"none\"\n[[databases]]\nname = \"a\"\nurl = \"postgresql://a@h/a\"\n";
        let err = load(local, &[]).unwrap_err();
        assert!(err.contains("storage.part_checksum") && err.contains("s3"), "{err}");
    }

    #[test]
    fn env_overrides_sections_and_arrays() {
        let cfg = load(
            BASE,
            &[
                ("PGMEDIC_SNAPSHOT__COMPRESSION_LEVEL", "9"),
                ("PGMEDIC_DATABASES__0__NAME", "main"),
                ("PGMEDIC_SNAPSHOT__RETENTION__KEEP_LAST", "2"),
                ("PGMEDIC_CONFIG", "/ignored"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.snapshot.compression_level, 9);
        assert_eq!(cfg.snapshot.retention.keep_last, 2);
        assert_eq!(cfg.databases[0].name, "main");
    }

    #[test]
    fn playbook_errors_name_the_step() {
        let two_kinds = format!("{BASE}\n[[playbooks]]\nname = \"p\"\nsteps = [ {{ resolve = \"applied\" }}, {{ sql = \"x\", resolve = \"applied\" }} ]\n");
        let err = load(&two_kinds, &[]).unwrap_err();
        assert!(err.contains("playbooks[0].steps[1]") && err.contains("exactly one of"), "{err}");
        let bad_db = format!("{BASE}\n[[playbooks]]\nname = \"p\"\ndatabase = \"nope\"\nsteps = [ {{ resolve = \"applied\" }} ]\n");
        assert!(load(&bad_db, &[]).unwrap_err().contains("playbooks[0].database"));
        let bad_resolve =
            format!("{BASE}\n[[playbooks]]\nname = \"p\"\nsteps = [ {{ resolve = \"done\" }} ]\n");
        assert!(load(&bad_resolve, &[]).unwrap_err().contains("rolled-back"));
    }

    #[test]
    fn a_bad_webhook_is_named_but_not_echoed() {
        let err =
            load(&format!("{BASE}\n[[notify]]\nwebhook = \"hooks.example.com/T0K3N\"\n"), &[]).unwrap_err();
        assert!(err.contains("notify[0].webhook") && !err.contains("T0K3N"), "{err}");
    }

    #[test]
    fn a_syntax_error_names_the_line_but_never_echoes_it() {
        let text = "[storage]\npath = \"s\"\n[[databases]]\nname = \"app\"\nurl = \"postgresql://app:hunter2@db/app\n";
        let err = load(text, &[]).unwrap_err();
        assert!(err.contains("line 5") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_http_token_file_is_read_and_named_when_it_cannot_be() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.token");
        let text = |f: &std::path::Path| {
            format!("[daemon]\nhttp_token_file = {:?}\n{BASE}", f.display().to_string())
        };
        let err = load(&text(&missing), &[]).unwrap_err();
        assert!(
            err.contains("daemon.http_token_file") && err.contains(&missing.display().to_string()),
            "{err}"
        );
        let short = dir.path().join("short.token");
        std::fs::write(&short, "abc\n").unwrap();
        let err = load(&text(&short), &[]).unwrap_err();
        assert!(err.contains("at least 16") && err.contains("short.token") && !err.contains("abc"), "{err}");
        let good = dir.path().join("good.token");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let cfg = load(&text(&good), &[]).unwrap();
        assert_eq!(cfg.daemon.http_token.as_ref().unwrap().token.expose(), "0123456789abcdef0123");
        let shown = super::super::render::render(&cfg);
        assert!(shown.contains("good.token") && !shown.contains("0123456789abcdef"), "{shown}");
        assert!(!format!("{cfg:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn render_hides_password() {
        let cfg = load(BASE, &[]).unwrap();
        let text = super::super::render::render(&cfg);
        assert!(!text.contains("pw@"), "{text}");
        assert!(text.contains("app:***@"), "{text}");
    }
}
