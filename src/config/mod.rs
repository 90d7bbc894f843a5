//! pgmedic's one configuration file: where it is, how environment variables override it, and
//! the typed, validated values the rest of the program uses. Validation happens here, once, so
//! that every other module can trust what it is given.

mod dburl;
mod layers;
mod playbook;
mod raw;
mod render;
mod schedule;
mod tls;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use dburl::{passfile_line, DbUrl, DbUrlError, Secret};
pub use playbook::{glob, Playbook, RepairConfig, ResolveAs, Step};
pub use schedule::Schedule;
pub use tls::{SslMode, TlsSettings};
pub use validate::validate;

/// Where the configuration is read from when neither `--config` nor `$PGMEDIC_CONFIG` says.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pgmedic/pgmedic.toml";
/// The storage folder of pgmedic's own records; no database may be named so.
pub const OWN_STORAGE_FOLDER: &str = "_pgmedic";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("configuration key `{key}` in {path}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

/// Debug prints the redacted rendering: webhook tokens and passwords never reach a log.
#[derive(Clone)]
pub struct Config {
    pub source: PathBuf,
    pub daemon: DaemonConfig,
    pub storage: StorageConfig,
    pub snapshot: SnapshotConfig,
    pub databases: Vec<DatabaseConfig>,
    pub repair: RepairConfig,
    pub playbooks: Vec<Playbook>,
    pub notify: Vec<String>,
    pub rehearse: RehearseConfig,
    pub scratch: ScratchConfig,
}

/// Where pgmedic's throw-away databases live: replays, proofs, rehearsals, deep verifies.
#[derive(Debug, Clone)]
pub struct ScratchConfig {
    pub server: ScratchServer,
    /// An ephemeral cluster's data (a rehearsal needs room for a full restore).
    pub dir: PathBuf,
    /// Where a cluster that holds schemas only (diagnose's replays and proofs) lives; None:
    /// "auto", a RAM-backed folder (`/dev/shm`) when it has room, else `dir`.
    pub schema_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum ScratchServer {
    /// A private cluster started from this host's server binaries, removed when done.
    Ephemeral,
    /// The source database's own server (opt-in only).
    Source,
    /// Another server the operator provides.
    Url(DbUrl),
}

#[derive(Debug, Clone)]
pub struct RehearseConfig {
    /// The server for scratch databases; each database's own server when absent.
    pub target: Option<DbUrl>,
    /// The newest snapshot may be at most this old unless one is named or `--fresh` is given.
    pub max_age: Duration,
    /// The deploy command is killed (its whole process group) after this long.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub shutdown_timeout: Duration,
    pub allowed_uids: Vec<u32>,
    /// This installation's name among those sharing the storage (`daemon.instance`).
    pub instance: String,
    /// `daemon.http_token_file` and the token read from it, which the HTTP listener requires
    /// for everything but `/healthz` and `/readyz`.
    pub http_token: Option<HttpToken>,
    /// How often the heartbeat is written (`daemon.heartbeat_interval`, one minute).
    pub heartbeat_interval: Duration,
}

/// The HTTP listener's bearer token, read from its file at load (and again at each reload).
#[derive(Debug, Clone)]
pub struct HttpToken {
    pub file: PathBuf,
    pub token: Secret,
}

#[derive(Debug, Clone)]
pub enum StorageBackend {
    Local { path: PathBuf },
    S3(S3Config),
}

#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub force_path_style: bool,
    /// Server-side encryption on every upload: `AES256` or `aws:kms` (with its key).
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    /// `storage.part_checksum`: each multipart part sent with its CRC32 (true, the default), or
    /// none, for a store that refuses S3's checksum headers.
    pub part_crc32: bool,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Key prefix without leading or trailing slashes; may be empty.
    pub prefix: String,
    pub timeout: Duration,
    pub upload_concurrency: usize,
    pub part_size: u64,
    pub encryption: Option<Encryption>,
}

/// Client-side encryption with age: written to `recipients`, read with `identity_file`.
#[derive(Debug, Clone)]
pub struct Encryption {
    /// `age1…` X25519 recipients, checked at load.
    pub recipients: Vec<String>,
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    pub compression_level: i32,
    pub compression_threads: u32,
    /// Folders searched first for the client tools (see `pg::locate`).
    pub pg_bin_dir: Vec<PathBuf>,
    pub retention: Retention,
    /// Snapshots running at once across all databases (the daemon's global limit).
    pub max_concurrent: usize,
    /// How long pg_dump waits for a table lock before the snapshot fails.
    pub lock_wait_timeout: Duration,
    /// `storage.encryption`, here too: the snapshotter encrypts what it stores.
    pub encryption: Option<Encryption>,
    /// Whether scheduled snapshots of a standby are taken (`snapshot.on_standby = "snapshot"`)
    /// or skipped for its primary's daemon (`"skip"`, the default).
    pub snapshot_standbys: bool,
    /// `daemon.instance`, recorded in every manifest.
    pub instance: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_pre_repair_days: u32,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub name: String,
    pub url: DbUrl,
    pub schedule: Option<Schedule>,
    /// Restore drills of the newest snapshot on the scratch server, on this schedule.
    pub drill: Option<Schedule>,
    /// This database's client tools, searched before `snapshot.pg_bin_dir`.
    pub pg_bin_dir: Option<PathBuf>,
    pub migrations: Option<MigrationsConfig>,
}

#[derive(Debug, Clone)]
pub struct MigrationsConfig {
    pub tool: String,
    pub table: String,
    pub schema: String,
    /// The schema of the tool's own table when it is not `schema` (drizzle's `drizzle`);
    /// `schema` stays where the migrations' unqualified names resolve.
    pub table_schema: Option<String>,
    pub dir: Option<PathBuf>,
    pub watch_interval: Duration,
    pub on_failure: OnFailure,
    /// The deploy `rehearse` runs against a scratch copy (argv, no shell).
    pub rehearse_command: Vec<String>,
    /// Where the deploy runs (its schema, its config files); the config file's folder when None.
    pub rehearse_cwd: Option<PathBuf>,
    /// For migrations written as code: a command that prints one migration's SQL (`{name}`,
    /// `{prev}` replaced), run in `sql_command_cwd`.
    pub sql_command: Vec<String>,
    /// `rehearse_cwd`, or the config file's folder.
    pub sql_command_cwd: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Repair,
    Snapshot,
    Notify,
}

impl Config {
    /// Reads, overrides from the environment, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_toml(&text, path, &env)
    }

    /// The same as `load`, from text and an explicit environment (what tests use).
    pub fn from_toml(text: &str, path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        validate(layers::load(text, path, env)?, path)
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }
}

impl DatabaseConfig {
    /// The `[databases.migrations]` section, or Prisma's defaults when there is none.
    pub fn migrations_or_default(&self) -> MigrationsConfig {
        self.migrations.clone().unwrap_or_else(|| MigrationsConfig {
            tool: "prisma".into(),
            table: "_prisma_migrations".into(),
            schema: "public".into(),
            table_schema: None,
            dir: None,
            watch_interval: Duration::from_secs(30),
            on_failure: OnFailure::Notify,
            rehearse_command: Vec::new(),
            rehearse_cwd: None,
            sql_command: Vec::new(),
            sql_command_cwd: PathBuf::from("."),
        })
    }
}

impl Config {
    /// The folder a rehearsal's deploy runs in: `rehearse_cwd`, or the config file's folder
    /// (never the daemon's own working directory, `/` under systemd).
    pub fn rehearse_cwd(&self, m: &MigrationsConfig) -> PathBuf {
        m.rehearse_cwd.clone().unwrap_or_else(|| {
            let dir = self.source.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
        })
    }
}

/// A configuration from text and an environment given as pairs, its error as text (unit tests).
#[cfg(test)]
fn load_for_test(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    Config::from_toml(text, Path::new("t.toml"), &env).map_err(|e| e.to_string())
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&render_redacted(self))
    }
}

/// The effective configuration as TOML, with secrets redacted, for `check-config`.
pub fn render_redacted(cfg: &Config) -> String {
    render::render(cfg)
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    /// The shipped example, which every mutation starts from.
    const EXAMPLE: &str = include_str!("../../config/pgmedic.toml");

    #[test]
    fn the_example_loads() {
        super::load_for_test(EXAMPLE, &[]).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]
        /// Any text and any PGMEDIC_ variables: a configuration or an error, never a panic.
        #[test]
        fn mutated_configurations_never_panic(
            at in 0usize..4000, junk in "\\PC{0,12}", cut in 0usize..8000,
            var in "[A-Z_0-9]{1,30}", value in "\\PC{0,20}",
        ) {
            let mut text = EXAMPLE.to_string();
            let at = text.char_indices().map(|(i, _)| i).nth(at).unwrap_or(text.len());
            text.insert_str(at, &junk);
            let cut = text.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(text.len());
            text.truncate(cut);
            let var = format!("PGMEDIC_{var}");
            let _ = super::load_for_test(&text, &[(var.as_str(), value.as_str())]);
        }
    }
}
