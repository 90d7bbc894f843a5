//! The server binaries (`initdb`, `postgres`) of one major, found the way the client tools are
//! found: the database's own `pg_bin_dir`, `snapshot.pg_bin_dir`, the standard places
//! (`/usr/lib/postgresql/<N>/bin`, `/usr/pgsql-<N>/bin`) and `PATH`. Unlike the client tools
//! the major must match exactly: a replay on another major proves nothing about this one.

use std::path::{Path, PathBuf};

use super::ScratchError;
use crate::process;

/// `postgres (PostgreSQL) 15.19 (Debian …)` → 15, asked of the folder's own `postgres`.
async fn major_in(dir: &Path) -> Option<u32> {
    if !dir.join("initdb").is_file() || !dir.join("postgres").is_file() {
        return None;
    }
    let out = process::command(dir.join("postgres")).arg("--version").output().await.ok()?;
    out.status
        .success()
        .then(|| crate::pg::locate::major_of_version(&String::from_utf8_lossy(&out.stdout)))
        .flatten()
}

fn candidates(configured: &[PathBuf], major: u32) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = configured.to_vec();
    out.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    out.push(PathBuf::from(format!("/usr/pgsql-{major}/bin")));
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path));
    }
    let mut seen = std::collections::HashSet::new();
    out.into_iter().filter(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))).collect()
}

/// The first folder holding `initdb` and `postgres` of exactly `major`.
pub async fn locate(configured: &[PathBuf], major: u32) -> Result<PathBuf, ScratchError> {
    let mut looked = Vec::new();
    let named = configured.len() + 2;
    for (i, dir) in candidates(configured, major).into_iter().enumerate() {
        // PATH's folders are named in the error only when they hold a server.
        if i >= named && !dir.join("postgres").is_file() {
            continue;
        }
        match major_in(&dir).await {
            Some(m) if m == major => return Ok(dir),
            Some(m) => looked.push(format!("{} (PostgreSQL {m})", dir.display())),
            None if dir.exists() => looked.push(format!("{} (no initdb and postgres)", dir.display())),
            None => looked.push(format!("{} (absent)", dir.display())),
        }
    }
    Err(ScratchError::NoServer { major, looked: looked.join(", ") })
}
