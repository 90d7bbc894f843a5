//! `pgmedic lint`: every rule tripped by one migration and not by its corrected form, a finding
//! silenced by its comment, the P3009 fixture's `"Users"` found against a database at the state
//! before the failure, live table sizes, and the GitHub annotation format.

mod common;

use std::path::Path;
use std::process::Command;

use common::migrate;
use common::prisma::{self, FAILED};
use common::*;

const INIT: &str = "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, a int, b text);\n";

/// Lints `0001_init` (INIT) and `0002_change` (`sql`) with `--dir` alone, no configuration.
fn lint_dir(sql: &str) -> (i32, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), "0001_init", INIT);
    migrate::write_migration(dir.path(), "0002_change", sql);
    let out = Command::new(env!("CARGO_BIN_EXE_pgmedic"))
        .args(["lint", "--json", "--dir"])
        .arg(dir.path())
        .env_remove("PGMEDIC_CONFIG")
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), doc["findings"].as_array().unwrap().clone())
}

fn rules_of(findings: &[serde_json::Value]) -> Vec<String> {
    findings.iter().map(|f| f["rule"].as_str().unwrap().to_string()).collect()
}

/// (rule, severity, a migration that trips it, one that does not).
const CASES: &[(&str, &str, &str, &str)] = &[
    ("syntax", "error", "CREATE TABLE IF NOT EXISTS x (id int;\n", "CREATE TABLE IF NOT EXISTS x (id int);\n"),
    ("unknown-relation", "error", "CREATE INDEX IF NOT EXISTS i ON missing (id);\n", "CREATE INDEX IF NOT EXISTS i ON t (id);\n"),
    ("unknown-column", "error", "CREATE INDEX IF NOT EXISTS i ON t (nope);\n", "CREATE INDEX IF NOT EXISTS i ON t (a);\n"),
    ("unknown-type", "error", "ALTER TABLE t ADD COLUMN IF NOT EXISTS c \"Mood\";\n", "CREATE TYPE \"Mood\" AS ENUM ('a');\nALTER TABLE t ADD COLUMN IF NOT EXISTS c \"Mood\";\n"),
    ("not-in-transaction", "error", "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\nSELECT 1;\n", "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\n"),
    ("not-idempotent", "warning", "CREATE TABLE u (id int);\n", "CREATE TABLE IF NOT EXISTS u (id int);\n"),
    (
        "unguarded-constraint",
        "warning",
        "ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0);\n",
        "DO $$ BEGIN\n  IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 't_a_check') THEN\n    ALTER TABLE t ADD CONSTRAINT t_a_check CHECK (a > 0);\n  END IF;\nEND $$;\n",
    ),
    ("volatile-default", "warning", "ALTER TABLE t ADD COLUMN IF NOT EXISTS r float8 DEFAULT random();\n", "ALTER TABLE t ADD COLUMN IF NOT EXISTS r float8 DEFAULT 0;\n"),
    ("column-type-change", "warning", "ALTER TABLE t ALTER COLUMN a TYPE bigint;\n", "ALTER TABLE t ALTER COLUMN a SET DEFAULT 0;\n"),
    ("set-not-null", "warning", "ALTER TABLE t ALTER COLUMN a SET NOT NULL;\n", "CREATE TABLE IF NOT EXISTS n (x int);\nALTER TABLE n ALTER COLUMN x SET NOT NULL;\n"),
    (
        "fk-not-valid",
        "warning",
        "ALTER TABLE t ADD CONSTRAINT t_fk FOREIGN KEY (a) REFERENCES t (id); -- pgmedic: allow unguarded-constraint\n",
        "ALTER TABLE t ADD CONSTRAINT t_fk FOREIGN KEY (a) REFERENCES t (id) NOT VALID; -- pgmedic: allow unguarded-constraint\n",
    ),
    ("require-concurrent-index", "warning", "CREATE INDEX IF NOT EXISTS i ON t (a);\n", "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\n"),
    (
        "missing-lock-timeout",
        "warning",
        "ALTER TABLE t ADD COLUMN IF NOT EXISTS c int;\n",
        "SET lock_timeout = '5s';\nALTER TABLE t ADD COLUMN IF NOT EXISTS c int;\n",
    ),
    (
        "unindexed-foreign-key",
        "warning",
        "CREATE TABLE IF NOT EXISTS c (id int PRIMARY KEY, t_id int REFERENCES t (id));\n",
        "CREATE TABLE IF NOT EXISTS c (id int PRIMARY KEY, t_id int REFERENCES t (id));\nCREATE INDEX IF NOT EXISTS c_t_id ON c (t_id);\n",
    ),
    (
        "unknown-type",
        "error",
        "CREATE TABLE IF NOT EXISTS e (id int PRIMARY KEY, email citext);\n",
        "CREATE EXTENSION IF NOT EXISTS citext;\nCREATE TABLE IF NOT EXISTS e (id int PRIMARY KEY, email citext);\n",
    ),
];

#[test]
fn each_rule_trips_on_its_case_and_not_on_the_fixed_one() {
    let ids: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    for (rule, severity, bad, good) in CASES {
        let (code, found) = lint_dir(bad);
        let hit = found
            .iter()
            .find(|f| f["rule"] == *rule)
            .unwrap_or_else(|| panic!("{rule} on {bad:?}: {found:#?}"));
        assert_eq!(hit["severity"], *severity, "{hit}");
        assert!(
            hit["file"].as_str().unwrap().ends_with("0002_change/migration.sql")
                && hit["line"].as_u64() >= Some(1),
            "{hit}"
        );
        assert_eq!(code, if *severity == "error" { 1 } else { 0 }, "{rule}: {found:#?}");
        let (code, found) = lint_dir(good);
        let rules = rules_of(&found);
        assert!(!rules.contains(&rule.to_string()), "{rule} on the fixed {good:?}: {found:#?}");
        assert!(rules.iter().all(|r| ids.contains(&r.as_str())), "{rules:?}");
        assert_eq!(code, 0, "{rule}: {found:#?}");
    }
}

#[test]
fn a_comment_silences_one_rule_on_its_statement() {
    let (_, found) =
        lint_dir("-- pgmedic: allow not-idempotent\nCREATE TABLE u (id int);\nCREATE TABLE v (id int);\n");
    let lines: Vec<u64> =
        found.iter().filter(|f| f["rule"] == "not-idempotent").map(|f| f["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [3], "only the unsilenced statement: {found:#?}");
}

#[test]
fn the_fixtures_users_reference_is_an_error_against_the_database_before_the_failure() {
    let db = prisma::p3009();
    db.sql(&format!(
        r#"DROP TABLE "PluginCredential"; DELETE FROM _prisma_migrations WHERE migration_name = '{FAILED}'"#
    ));
    let pgm = migrate::config(&db, &prisma::fixture("migrations"), "");
    let run = pgm.run(&["lint", "--db", "app", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let found = run.json()["findings"].as_array().unwrap().clone();
    let errors: Vec<&serde_json::Value> = found.iter().filter(|f| f["severity"] == "error").collect();
    assert_eq!(errors.len(), 1, "{found:#?}");
    assert_eq!(errors[0]["rule"], "unknown-relation");
    assert_eq!(errors[0]["line"], 10);
    assert!(errors[0]["file"].as_str().unwrap().ends_with(&format!("{FAILED}/migration.sql")), "{found:#?}");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("relation \"Users\" exists neither in the database"),
        "{found:#?}"
    );
    assert!(
        found.iter().all(|f| !f["file"].as_str().unwrap().contains("20250101000000_init")),
        "applied migrations are not linted: {found:#?}"
    );

    let gh = pgm.run(&["lint", "--db", "app", "--format", "github"]);
    assert_eq!(gh.code, 1);
    let line =
        gh.stdout.lines().find(|l| l.starts_with("::error ")).unwrap_or_else(|| panic!("{}", gh.stdout));
    assert!(line.contains(",line=10,title=pgmedic unknown-relation::relation \"Users\""), "{line}");
}

#[test]
fn against_a_database_lock_warnings_carry_the_live_size_and_a_validated_check_proves_not_null() {
    let db = TestDb::new("lintsize");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a int, b text); INSERT INTO t SELECT g, g, 'x' FROM generate_series(1, 1000) g; \
            ALTER TABLE t ADD CONSTRAINT t_b_not_null CHECK (b IS NOT NULL); ANALYZE t");
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), "0002_change", "ALTER TABLE t ALTER COLUMN a TYPE bigint;\nALTER TABLE t ALTER COLUMN b SET NOT NULL;\nALTER TABLE t ALTER COLUMN a SET NOT NULL;\n");
    let pgm = migrate::config(&db, dir.path(), "");
    let run = pgm.run(&["lint", "--db", "app", "--json"]);
    assert_eq!(run.code, 0, "warnings only: {}", run.stderr);
    let found = run.json()["findings"].as_array().unwrap().clone();
    let change = found.iter().find(|f| f["rule"] == "column-type-change").unwrap();
    let message = change["message"].as_str().unwrap();
    assert!(message.contains("(table \"t\": ") && message.ends_with(", ~1000 rows)"), "{message}");
    let not_null: Vec<u64> =
        found.iter().filter(|f| f["rule"] == "set-not-null").map(|f| f["line"].as_u64().unwrap()).collect();
    assert_eq!(not_null, [3], "b is proven by its validated CHECK, a is not: {found:#?}");
    assert!(Path::new(&dir.path().join("0002_change/migration.sql")).exists());
}

/// `pgmedic lint --dir` on `files` (name, text) written at the folder's top level.
fn lint_flat(files: &[(&str, &str)]) -> (i32, String, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pgmedic"))
        .args(["lint", "--json", "--dir"])
        .arg(dir.path())
        .env_remove("PGMEDIC_CONFIG")
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let findings = doc["findings"].as_array().cloned().unwrap_or_default();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned(), findings)
}

/// golang-migrate's, Flyway's and dbmate's layouts are linted like Prisma's (the same
/// `unknown-column` in each); a dbmate `transaction:false` file may build an index
/// concurrently; a folder with no migration files is a usage error naming what was looked for.
#[test]
fn every_layout_is_linted_and_an_empty_folder_is_an_error() {
    let bad = "CREATE INDEX IF NOT EXISTS i ON t (nope);\n";
    let (init, change) = (
        format!("-- migrate:up\n{INIT}-- migrate:down\nDROP TABLE t;\n"),
        format!("-- migrate:up\n{bad}-- migrate:down\nDROP TABLE nope;\n"),
    );
    for files in [
        [("1_init.up.sql", INIT), ("2_change.up.sql", bad), ("2_change.down.sql", "DROP INDEX i;\n")],
        [("V1__init.sql", INIT), ("V2__change.sql", bad), ("README.sql", bad)],
        [
            ("20260101000000_init.sql", init.as_str()),
            ("20260102000000_change.sql", change.as_str()),
            (
                "20260103000000_index.sql",
                "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY IF NOT EXISTS j ON t (a);\n",
            ),
        ],
    ] {
        let (code, err, findings) = lint_flat(&files);
        let errors: Vec<serde_json::Value> =
            findings.iter().filter(|f| f["severity"] == "error").cloned().collect();
        assert_eq!(
            (code, rules_of(&errors)),
            (1, vec!["unknown-column".to_string()]),
            "{files:?}: {err} {findings:#?}"
        );
        assert!(errors[0]["file"].as_str().unwrap().contains("change"), "{findings:#?}");
    }
    let (code, err, _) = lint_flat(&[("notes.txt", "hello")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no migration files") && err.contains("golang-migrate") && err.contains("Flyway"),
        "{err}"
    );
}

/// Against a database, the rows a new constraint already rejects are counted (`might-fail`, an
/// error, for each kind), an invalid index a pending migration creates again is an error, and a
/// foreign key no live index leads with is a warning.
#[test]
fn against_a_database_rows_that_break_a_new_constraint_are_counted() {
    let db = TestDb::new("lintrows");
    db.sql(
        "CREATE TABLE p (id int PRIMARY KEY); INSERT INTO p VALUES (1); \
            CREATE TABLE t (id int PRIMARY KEY, email text, n int, p_id int); \
            INSERT INTO t VALUES (1, 'a', 1, 1), (2, 'a', NULL, 7), (3, 'b', -1, 8), (4, 'b', 2, 1); \
            CREATE FUNCTION noisy(int, int) RETURNS bool LANGUAGE sql VOLATILE AS 'SELECT $1 > $2'; \
            CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = noisy); \
            SET maintenance_work_mem = '1MB'",
    );
    // A failed CONCURRENTLY build leaves email_key invalid.
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            PG_HOST,
            "-U",
            "postgres",
            "-d",
            &db.name,
            "-XAtqc",
            "CREATE UNIQUE INDEX CONCURRENTLY email_key ON t (email)",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let sql = "SET lock_timeout = '5s';
CREATE UNIQUE INDEX CONCURRENTLY email_key ON t (email);
ALTER TABLE t ALTER COLUMN n SET NOT NULL;
ALTER TABLE t ADD CONSTRAINT t_p FOREIGN KEY (p_id) REFERENCES p;
ALTER TABLE t ADD CONSTRAINT t_n CHECK (n > 0);
ALTER TABLE t ADD CONSTRAINT t_id_ok CHECK (id > 0);
ALTER TABLE t ADD CONSTRAINT t_random CHECK (n > random() * 0);
ALTER TABLE t ADD CONSTRAINT t_operator CHECK (n ### 0);
";
    migrate::write_migration(dir.path(), "0002_constraints", sql);
    let pgm = migrate::config(&db, dir.path(), "");
    let run = pgm.run(&["lint", "--db", "app", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let found = run.json()["findings"].as_array().unwrap().clone();
    let at = |rule: &str| -> Vec<(u64, String)> {
        found
            .iter()
            .filter(|f| f["rule"] == rule)
            .map(|f| (f["line"].as_u64().unwrap(), f["message"].as_str().unwrap().to_string()))
            .collect()
    };
    let fails = at("might-fail");
    let lines: Vec<u64> = fails.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [2, 3, 4, 5], "t_id_ok holds for every row; t_random calls a volatile function and t_operator is a user's operator over one, which never run on the live database: {found:#?}");
    assert!(fails[0].1.contains("2 values are duplicated"), "{fails:?}");
    assert!(fails[1].1.contains("1 rows hold NULL"), "{fails:?}");
    assert!(fails[2].1.contains("2 rows reference nothing"), "{fails:?}");
    assert!(fails[3].1.contains("1 rows of"), "{fails:?}");
    let invalid = at("invalid-index-present");
    assert_eq!(invalid.len(), 1, "{found:#?}");
    assert_eq!(invalid[0].0, 2, "on the statement that creates it again: {found:#?}");
    let fk = at("unindexed-foreign-key");
    assert_eq!(fk.len(), 1, "{found:#?}");
    assert!(fk[0].1.contains("(p_id)"), "{fk:?}");
    assert!(at("missing-lock-timeout").is_empty(), "the file sets it: {found:#?}");
}
