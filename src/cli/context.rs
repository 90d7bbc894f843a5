//! What every command of the CLI needs first: the storage opened, a database named on the
//! command line found in the configuration (or a usage error listing the known ones), and who
//! is asking, for triggers and the audit. Below every command module, so none imports another.

use std::sync::Arc;

use anyhow::Context;

use super::UsageError;
use crate::config::{Config, DatabaseConfig};
use crate::storage::{self, Storage};

pub(super) async fn open_storage(cfg: &Config) -> anyhow::Result<Arc<dyn Storage>> {
    storage::open(&cfg.storage).await.context("cannot open snapshot storage")
}

pub(super) fn database<'a>(cfg: &'a Config, name: &str) -> Result<&'a DatabaseConfig, UsageError> {
    cfg.database(name).ok_or_else(|| {
        let known: Vec<&str> = cfg.databases.iter().map(|d| d.name.as_str()).collect();
        UsageError(format!(
            "database `{name}` is not in {} (known: {})",
            cfg.source.display(),
            known.join(", ")
        ))
    })
}

/// Who ran the command, for triggers and the audit: the real uid and its name, which the caller
/// cannot choose, and the sudo caller as sudo reports it (`alice(uid=1000)`,
/// `root(uid=0),sudo_user=alice`). `SUDO_USER` alone is only an environment variable.
pub(super) fn invoking_user() -> String {
    let uid = unsafe { libc::getuid() };
    // getpwuid's buffer is static; the CLI reads it once, before any other thread asks.
    let pw = unsafe { libc::getpwuid(uid) };
    let name = if pw.is_null() {
        "?".to_string()
    } else {
        unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }.to_string_lossy().into_owned()
    };
    match std::env::var("SUDO_USER") {
        Ok(sudo) if !sudo.is_empty() => format!("{name}(uid={uid}),sudo_user={sudo}"),
        _ => format!("{name}(uid={uid})"),
    }
}
