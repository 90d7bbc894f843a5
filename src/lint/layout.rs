//! Where each tool keeps its migration files, and which part of a file runs going up: Prisma's
//! `<name>/migration.sql`; golang-migrate's `<version>_<name>.up.sql`; Flyway's
//! `V<version>__<name>.sql`; and `<version>_<name>.sql` for sqlx, dbmate (`-- migrate:up`),
//! goose (`-- +goose Up`), node-pg-migrate (`-- Up Migration`) and drizzle. A folder with none of
//! these is an error naming what was looked for, never "0 findings".

use std::path::{Path, PathBuf};

use super::File;

/// What `lint` looks for, in words for the error when it finds nothing.
pub const LOOKED_FOR: &str = "<name>/migration.sql (Prisma), <version>_<name>.up.sql (golang-migrate, sqlx), V<version>__<name>.sql (Flyway), <version>_<name>.sql (sqlx, dbmate, goose, node-pg-migrate, drizzle)";

/// The migration files under `dir`, in the order their tool runs them.
pub fn files(dir: &Path) -> Result<Vec<File>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read migrations dir {}: {e}", dir.display()))?;
    let paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    let mut prisma: Vec<File> = paths
        .iter()
        .filter(|p| p.join("migration.sql").is_file())
        .map(|p| file(name_of(p), p.join("migration.sql"), None))
        .collect();
    if !prisma.is_empty() {
        prisma.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(prisma);
    }
    let mut out: Vec<(Vec<u128>, File)> =
        paths.iter().filter(|p| p.is_file()).filter_map(|p| sql_file(p)).collect();
    if out.is_empty() {
        return Err(format!("no migration files in {}: looked for {LOOKED_FOR}", dir.display()));
    }
    out.sort_by(|(va, a), (vb, b)| va.cmp(vb).then_with(|| a.name.cmp(&b.name)));
    Ok(out.into_iter().map(|(_, f)| f).collect())
}

fn name_of(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn file(name: String, path: PathBuf, version: Option<String>) -> File {
    File { name, path, version }
}

/// A top-level `.sql` migration and its version (for ordering), or None for down/undo files and
/// files without a version.
fn sql_file(p: &Path) -> Option<(Vec<u128>, File)> {
    let name = name_of(p);
    let stem = name.strip_suffix(".sql")?;
    if stem.ends_with(".down") || stem.starts_with('U') || stem.starts_with('R') {
        return None;
    }
    let (version, stem) = match stem.strip_prefix('V').and_then(|s| s.split_once("__")) {
        // Flyway orders by the version's dotted parts: 1.10 after 1.9, 2 after both.
        Some((v, _)) => (v.to_string(), stem),
        None => (stem.split('_').next()?.to_string(), stem),
    };
    let order: Vec<u128> = version.split(['.', '_']).map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let stem = stem.strip_suffix(".up").unwrap_or(stem);
    Some((order, file(stem.to_string(), p.to_path_buf(), Some(version))))
}

/// The part of a file that runs going up, and whether its tool runs it in one transaction.
pub fn up_text(text: &str) -> (String, bool) {
    let no_tx = text.lines().any(|l| {
        let l = l.trim();
        (l.starts_with("-- migrate:up") && l.contains("transaction:false"))
            || l == "-- no-transaction"
            || l.eq_ignore_ascii_case("-- +goose NO TRANSACTION")
    });
    for (up, down) in [
        ("-- migrate:up", "-- migrate:down"),
        ("-- +goose Up", "-- +goose Down"),
        ("-- Up Migration", "-- Down Migration"),
    ] {
        if text.lines().any(|l| l.trim_start().starts_with(up)) {
            return (section(text, up, down), !no_tx);
        }
    }
    (text.to_string(), !no_tx)
}

/// The lines between `up` and `down` markers, the others blanked so line numbers stay the file's.
fn section(text: &str, up: &str, down: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with(up) {
            inside = true;
        } else if t.starts_with(down) {
            inside = false;
        } else if inside && !t.starts_with("-- +goose") {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layout_is_found_in_its_order() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["10_later.up.sql", "2_first.up.sql", "2_first.down.sql", "README.md"] {
            std::fs::write(dir.path().join(f), "SELECT 1;").unwrap();
        }
        let names: Vec<String> = files(dir.path()).unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["2_first", "10_later"]);

        let fly = tempfile::tempdir().unwrap();
        for f in ["V2__c.sql", "V1.10__b.sql", "V1.9__a.sql", "U1.9__a.sql"] {
            std::fs::write(fly.path().join(f), "SELECT 1;").unwrap();
        }
        let names: Vec<String> = files(fly.path()).unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["V1.9__a", "V1.10__b", "V2__c"]);

        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("notes.txt"), "").unwrap();
        let e = files(empty.path()).err().unwrap();
        assert!(e.contains("no migration files") && e.contains("golang-migrate"), "{e}");
    }

    #[test]
    fn sections_and_transaction_annotations_are_read() {
        let (up, tx) = up_text("-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON t (a);\n-- migrate:down\nDROP INDEX i;\n");
        assert!(!tx && up.contains("CONCURRENTLY") && !up.contains("DROP"));
        let (up, tx) = up_text("-- +goose Up\nCREATE TABLE a (id int);\n-- +goose Down\nDROP TABLE a;\n");
        assert!(tx && up.contains("CREATE TABLE") && !up.contains("DROP") && up.lines().count() == 4);
        assert!(!up_text("-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);").1);
    }
}
