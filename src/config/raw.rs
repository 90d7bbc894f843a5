//! The configuration file as written: serde structures that mirror the TOML exactly and reject
//! unknown keys. Nothing here is trusted; `validate` turns it into typed values.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub snapshot: RawSnapshot,
    #[serde(default)]
    pub databases: Vec<RawDatabase>,
    #[serde(default)]
    pub repair: RawRepair,
    #[serde(default)]
    pub playbooks: Vec<RawPlaybook>,
    #[serde(default)]
    pub notify: Vec<RawNotify>,
    #[serde(default)]
    pub rehearse: RawRehearse,
    #[serde(default)]
    pub scratch: RawScratch,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScratch {
    /// "ephemeral" (default), "source", or a PostgreSQL URL.
    pub server: Option<String>,
    /// An ephemeral cluster's data folder; `<state_dir>/scratch` when absent.
    pub dir: Option<String>,
    /// Where a cluster that holds schemas only (diagnose) lives: "auto" (a RAM-backed folder
    /// when the host has room there) or a folder.
    pub schema_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRehearse {
    /// A server for scratch databases (a URL); the database's own server when absent.
    pub target: Option<String>,
    pub max_age: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub socket: Option<String>,
    pub state_dir: Option<String>,
    pub metrics_listen: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub allowed_uids: Option<Vec<u32>>,
    /// This installation's name among those sharing the storage (default: the host name).
    pub instance: Option<String>,
    /// A file holding the bearer token `/`, `/fleet` and `/metrics` require (none: open).
    pub http_token_file: Option<String>,
    /// How often the heartbeat under `_pgmedic/hosts/` is written.
    pub heartbeat_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub backend: Option<String>,
    pub path: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    /// Per-request attempt timeout for the object store.
    pub timeout: Option<String>,
    /// Parts uploaded at once.
    pub upload_concurrency: Option<usize>,
    /// Size of the first multipart parts, in MiB; it doubles every 1,000 parts.
    pub part_size_mib: Option<u64>,
    pub encryption: Option<RawEncryption>,
    /// S3 server-side encryption sent on every upload: "AES256" or "aws:kms".
    pub sse: Option<String>,
    /// "crc32" (each multipart part with its CRC32) or "none".
    pub part_checksum: Option<String>,
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    /// age X25519 recipients (`age1…`): snapshots are encrypted to every one.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// The identity (secret key) file, needed only to read snapshots back.
    pub identity_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshot {
    pub compression_level: Option<i32>,
    /// zstd worker threads; 0 means one per core.
    pub compression_threads: Option<u32>,
    /// Where pg_dump, pg_dumpall, pg_restore and psql live: one folder or a list, searched
    /// before the standard places and PATH.
    pub pg_bin_dir: Option<StringOrList>,
    #[serde(default)]
    pub retention: RawRetention,
    /// Snapshots at once across all databases; pre-repair snapshots go first.
    pub max_concurrent: Option<usize>,
    /// pg_dump's --lock-wait-timeout.
    pub lock_wait_timeout: Option<String>,
    /// Scheduled snapshots of a server in recovery: "skip" (its primary's daemon takes them)
    /// or "snapshot".
    pub on_standby: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_pre_repair_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub name: String,
    pub url: Option<String>,
    pub url_file: Option<String>,
    pub schedule: Option<String>,
    pub drill: Option<String>,
    /// This database's client tools, searched first.
    pub pg_bin_dir: Option<String>,
    pub migrations: Option<RawMigrations>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMigrations {
    pub tool: Option<String>,
    pub table: Option<String>,
    pub schema: Option<String>,
    pub table_schema: Option<String>,
    pub dir: Option<String>,
    pub watch_interval: Option<String>,
    pub on_failure: Option<String>,
    pub rehearse_command: Option<Vec<String>>,
    pub rehearse_cwd: Option<String>,
    pub sql_command: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub webhook: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepair {
    /// statement_timeout for `sql`, `sql_file` and `assert_sql` steps.
    pub statement_timeout: Option<String>,
    /// How long to wait for Prisma's advisory lock while a deploy holds it.
    pub lock_wait: Option<String>,
    /// Every repair statement gives up waiting for a table lock after this long…
    pub lock_timeout: Option<String>,
    /// …and is retried this many times, with backoff.
    pub lock_retries: Option<u32>,
    /// A crashed migration younger than this waits: it may be a deploy without its lock.
    pub crash_grace: Option<String>,
    /// "auto" (a scoped pre-repair snapshot when every step's effects are known) or "full".
    pub snapshot: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlaybook {
    pub name: String,
    pub database: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub migration: Option<String>,
    pub log_contains: Option<String>,
}

/// One of `sql`, `sql_file`, `resolve`, `command`, `assert_sql`, `finish` or `undo`, with its
/// options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub sql: Option<String>,
    pub sql_file: Option<String>,
    pub resolve: Option<String>,
    pub command: Option<Vec<String>>,
    pub assert_sql: Option<String>,
    pub finish: Option<bool>,
    pub undo: Option<bool>,
    pub allow_data_loss: Option<bool>,
    pub release_lock: Option<bool>,
    pub accept_checksums: Option<bool>,
    pub cwd: Option<String>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub timeout: Option<String>,
}
