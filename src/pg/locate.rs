//! Which client tools talk to which server: pg_dump refuses a server newer than itself, and
//! hosts run several majors side by side. For a server of major N the tools are the lowest
//! installed version ≥ N among, in this order, the database's own `pg_bin_dir`,
//! `snapshot.pg_bin_dir` (one or a list), the standard places (`/usr/lib/postgresql/<N>/bin`,
//! `/usr/pgsql-<N>/bin`) and `PATH`. A configured folder whose pg_dump does not say its version
//! (a wrapper script) is trusted. When nothing fits, the error names the version needed and
//! every place looked at, with the version found there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::process;

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("no PostgreSQL client tools of version {need} or newer (pg_dump refuses a newer server); looked in: {looked}; install them (e.g. postgresql-client-{need}) or name their folder in snapshot.pg_bin_dir or the database's pg_bin_dir")]
    NoVersion { need: u32, looked: String },
}

/// `pg_dump --version` answers per folder, asked once per process.
static MAJORS: Mutex<Option<HashMap<PathBuf, Option<u32>>>> = Mutex::new(None);

/// `pg_dump (PostgreSQL) 15.19 (Debian …)` → 15.
pub fn major_of_version(text: &str) -> Option<u32> {
    let after = text.split(')').nth(1).unwrap_or(text);
    let number = after.split_whitespace().next()?;
    number.split('.').next()?.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()
}

async fn major_in(dir: &Path) -> Option<u32> {
    if let Some(known) = MAJORS.lock().ok()?.get_or_insert_with(HashMap::new).get(dir) {
        return *known;
    }
    let out = process::command(dir.join("pg_dump")).arg("--version").output().await.ok();
    let major = out
        .filter(|o| o.status.success())
        .and_then(|o| major_of_version(&String::from_utf8_lossy(&o.stdout)));
    if let Ok(mut m) = MAJORS.lock() {
        m.get_or_insert_with(HashMap::new).insert(dir.to_path_buf(), major);
    }
    major
}

/// `/usr/lib/postgresql/<N>/bin`, `/usr/pgsql-<N>/bin`, then `PATH`'s folders holding pg_dump.
fn standard_places() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut versioned = |parent: &str, prefix: &str, suffix: &str| {
        let Ok(entries) = std::fs::read_dir(parent) else { return };
        let mut found: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_prefix(prefix)?.parse().ok()?;
                Some((n, e.path().join(suffix)))
            })
            .collect();
        found.sort();
        out.extend(found.into_iter().map(|(_, p)| p));
    };
    versioned("/usr/lib/postgresql", "", "bin");
    versioned("/usr", "pgsql-", "bin");
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path));
    }
    let mut seen = std::collections::HashSet::new();
    // `/bin` and `/usr/bin` are one folder on merged-/usr systems: list each folder once.
    out.into_iter()
        .filter(|d| d.join("pg_dump").is_file())
        .filter(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())))
        .collect()
}

/// Every folder searched, with the major its pg_dump reports (for `check-config`).
pub async fn inventory(configured: &[PathBuf]) -> Vec<(PathBuf, Option<u32>)> {
    let mut out = Vec::new();
    for dir in configured.iter().chain(standard_places().iter()) {
        out.push((dir.clone(), major_in(dir).await));
    }
    out
}

/// The folder to use for a server of major `need`: configured folders first, then the
/// standard places; among those that fit, the lowest major.
pub async fn locate(configured: &[PathBuf], need: u32) -> Result<PathBuf, LocateError> {
    let mut looked = Vec::new();
    let mut best: Option<(u32, PathBuf)> = None;
    for (i, dir) in configured.iter().chain(standard_places().iter()).enumerate() {
        let explicit = i < configured.len();
        let major = major_in(dir).await;
        looked.push(format!(
            "{} ({})",
            dir.display(),
            major.map(|m| m.to_string()).unwrap_or_else(|| "no version".into())
        ));
        // A configured folder that does not say its version is the operator's choice.
        let fits = match major {
            Some(m) => m >= need,
            None => explicit && dir.join("pg_dump").exists(),
        };
        let rank = major.unwrap_or(need);
        if fits && best.as_ref().is_none_or(|(b, _)| rank < *b) {
            best = Some((rank, dir.clone()));
        }
    }
    best.map(|(_, d)| d).ok_or_else(|| LocateError::NoVersion { need, looked: looked.join(", ") })
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_from_pg_dump() {
        assert_eq!(super::major_of_version("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"), Some(15));
        assert_eq!(super::major_of_version("pg_dump (PostgreSQL) 18.1"), Some(18));
        assert_eq!(super::major_of_version("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(super::major_of_version("pg_dump (PostgreSQL) 19devel"), Some(19));
    }
}
