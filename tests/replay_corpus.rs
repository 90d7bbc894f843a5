//! The replay as a property: for each migration of a corpus and every stopping point k, the
//! first k statements applied one at a time onto a database at its baseline (Prisma's way) and
//! the row left failed: diagnose names k, the drafted finish leaves the schema the whole
//! migration gives a fresh database, the drafted undo gives the baseline back (or refuses,
//! naming why), and no row is ever dropped without allow_data_loss. The scratch server here is
//! a URL (the local PostgreSQL): one server for the whole file, no cluster per run.

mod common;

use common::migrate::{self, schema_dump};
use common::*;

const INIT: &str = "20250101000000_init";
const NEXT: &str = "20250601000000_next";
const USER: &str = "CREATE TABLE \"User\" (\"id\" SERIAL NOT NULL, \"name\" TEXT NOT NULL, CONSTRAINT \"User_pkey\" PRIMARY KEY (\"id\"));\nCREATE TABLE \"Session\" (\"id\" TEXT NOT NULL, \"userId\" INTEGER NOT NULL, CONSTRAINT \"Session_pkey\" PRIMARY KEY (\"id\"));\n";

struct Migration {
    label: &'static str,
    schema: &'static str,
    /// Run before the baseline snapshot (besides INIT), outside the migrations.
    before: &'static str,
    /// One statement per line.
    sql: &'static str,
}

const CORPUS: &[Migration] = &[
    Migration {
        label: "prisma",
        schema: "public",
        before: "",
        sql: "CREATE TYPE \"Role\" AS ENUM ('USER', 'ADMIN');\nALTER TABLE \"User\" ADD COLUMN \"role\" \"Role\" NOT NULL DEFAULT 'USER';\nCREATE TABLE \"Post\" (\"id\" SERIAL NOT NULL, \"authorId\" INTEGER NOT NULL, \"title\" TEXT NOT NULL, CONSTRAINT \"Post_pkey\" PRIMARY KEY (\"id\"));\nCREATE INDEX \"Post_authorId_idx\" ON \"Post\"(\"authorId\");\nALTER TABLE \"Post\" ADD CONSTRAINT \"Post_authorId_fkey\" FOREIGN KEY (\"authorId\") REFERENCES \"User\"(\"id\") ON DELETE RESTRICT ON UPDATE CASCADE;\nALTER TABLE \"User\" RENAME COLUMN \"name\" TO \"fullName\";\n",
    },
    Migration {
        label: "droprec",
        schema: "public",
        before: "INSERT INTO \"Session\" VALUES ('a', 1);",
        sql: "DROP TABLE \"Session\";\nCREATE TABLE \"Session\" (\"id\" TEXT NOT NULL, \"expiresAt\" TIMESTAMP(3) NOT NULL, CONSTRAINT \"Session_pkey\" PRIMARY KEY (\"id\"));\nALTER TABLE \"User\" ADD COLUMN \"lastLoginAt\" TIMESTAMP(3);\n",
    },
    Migration {
        label: "swap",
        schema: "public",
        before: "INSERT INTO \"Session\" VALUES ('a', 1), ('b', 2);",
        sql: "CREATE TABLE \"Session_new\" (\"id\" TEXT NOT NULL, \"userId\" INTEGER NOT NULL, \"note\" TEXT, CONSTRAINT \"Session_new_pkey\" PRIMARY KEY (\"id\"));\nINSERT INTO \"Session_new\" (\"id\", \"userId\") SELECT \"id\", \"userId\" FROM \"Session\";\nDROP TABLE \"Session\";\nALTER TABLE \"Session_new\" RENAME TO \"Session\";\nALTER TABLE \"User\" ADD COLUMN \"x\" INTEGER;\n",
    },
    Migration {
        label: "concurrent",
        schema: "public",
        before: "",
        sql: "ALTER TABLE \"User\" ADD COLUMN \"email\" TEXT;\nCREATE UNIQUE INDEX CONCURRENTLY \"User_email_key\" ON \"User\"(\"email\");\nALTER TABLE \"Session\" ADD COLUMN \"ip\" TEXT;\n",
    },
    Migration {
        label: "tenant",
        schema: "tenant",
        before: "CREATE TABLE public.\"Note\" (\"id\" INTEGER);",
        sql: "CREATE TABLE \"Note\" (\"id\" INTEGER NOT NULL, CONSTRAINT \"Note_pkey\" PRIMARY KEY (\"id\"));\nALTER TABLE \"Note\" ADD COLUMN \"body\" TEXT;\nINSERT INTO \"Note\" (\"id\") VALUES (1);\nALTER TABLE \"User\" ADD COLUMN \"z\" INTEGER;\n",
    },
    Migration {
        label: "matview",
        schema: "public",
        before: "",
        sql: "CREATE MATERIALIZED VIEW \"user_count\" AS SELECT count(*) AS n FROM \"User\";\nCREATE UNIQUE INDEX \"user_count_n\" ON \"user_count\"(\"n\");\nALTER TABLE \"User\" ADD COLUMN \"y\" INTEGER;\n",
    },
];

fn statements(m: &Migration) -> Vec<&'static str> {
    m.sql.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn opts(m: &Migration) -> String {
    format!("-c search_path={}", m.schema)
}

/// A database at INIT and `before`, with the migration files in `dir`.
fn at_baseline(m: &Migration, dir: &std::path::Path) -> TestDb {
    let db = TestDb::new(m.label);
    db.sql(&format!("CREATE SCHEMA IF NOT EXISTS {}", m.schema));
    migrate::deploy(&db, dir, INIT, &opts(m)).unwrap();
    if !m.before.is_empty() {
        db.sql(&format!("SET search_path = {}; {}", m.schema, m.before));
    }
    db
}

/// The migration's row, its first `k` statements, then a lock timeout on the next one.
fn fail_after(m: &Migration, db: &TestDb, k: usize) {
    let s = m.schema;
    db.sql(&format!("INSERT INTO {s}._prisma_migrations (id, checksum, migration_name, started_at) VALUES ('{k}', 'c', '{NEXT}', clock_timestamp())"));
    for stmt in &statements(m)[..k] {
        // One statement per query, as Prisma sends them (CONCURRENTLY refuses a multi-statement one).
        migrate::sql_with(db, stmt, &opts(m));
    }
    let log = "Migration name: x\n\nDatabase error code: 55P03\n\nDatabase error:\nERROR: canceling statement due to lock timeout\n";
    db.sql(&format!("UPDATE {s}._prisma_migrations SET logs = $l${log}$l$ WHERE id = '{k}'"));
}

fn rows(db: &TestDb) -> String {
    db.sql("SELECT string_agg(format('%s.%s=%s', schemaname, relname, n_live_tup), ',' ORDER BY 1) FROM (SELECT schemaname, relname, (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', schemaname, relname), false, true, '')))[1]::text::int AS n_live_tup FROM pg_stat_user_tables WHERE relname <> '_prisma_migrations') t")
}

fn repair(pgm: &Pgmedic, url: &str, playbook: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(&pgm.config).unwrap();
    let head = text.split("\n[[playbooks]]").next().unwrap().to_string();
    let head = head
        .lines()
        .map(|l| if l.starts_with("url = ") { format!("url = \"{url}\"") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    pgm.write_config(&format!("{head}\n{playbook}"));
    pgm.run(&["repair", "--db", "app", "--json"]).json()
}

fn every_stopping_point(m: &Migration) {
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), INIT, USER);
    migrate::write_migration(dir.path(), NEXT, m.sql);
    let n = statements(m).len();
    let baseline = at_baseline(m, dir.path());
    let baseline_schema = schema_dump(&baseline.name);
    let whole = at_baseline(m, dir.path());
    migrate::deploy(&whole, dir.path(), NEXT, &opts(m)).unwrap();
    let whole_schema = schema_dump(&whole.name);
    for k in 0..n {
        let db = at_baseline(m, dir.path());
        let scratch = format!("postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres");
        let pgm = migrate::config(&db, dir.path(), &format!("schema = \"{}\"\n", m.schema));
        // The harness's [scratch] names a folder for ephemeral clusters; this file names a server.
        let text = std::fs::read_to_string(&pgm.config).unwrap();
        let ours = format!("[scratch]\ndir = \"{}\"\n", pgm.scratch_dir().display());
        assert!(text.contains(&ours));
        pgm.write_config(&text.replacen(&ours, &format!("[scratch]\nserver = \"{scratch}\"\n"), 1));
        pgm.snapshot("app");
        fail_after(m, &db, k);
        let copy = TestDb::reserved(&format!("{}_u", m.label));
        psql("postgres", &format!("CREATE DATABASE {} TEMPLATE {}", copy.name, db.name));
        let at = format!("{} at k = {k}", m.label);

        let run = pgm.run(&["diagnose", "--json"]);
        assert_eq!(run.code, 0, "{at}: {run:?}");
        let r = &run.json()[0];
        assert_eq!(r["proof"], "replay", "{at}: {r:#}");
        assert_eq!(r["scratch_server"], scratch.as_str(), "{at}");
        if let Some(range) = r["stopped_range"].as_array() {
            // The documented range: statements with no visible effect between its ends, k
            // among them, and nothing drafted.
            let (lo, hi) = (range[0].as_u64().unwrap() as usize, range[1].as_u64().unwrap() as usize);
            assert!(lo <= k && k <= hi && lo < hi, "{at}: {r:#}");
            assert!(
                statements(m)[lo..hi].iter().all(|s| s.starts_with("INSERT")),
                "{at}: only data statements may be in a range: {r:#}"
            );
            for kind in ["finish", "undo"] {
                assert!(
                    r["playbooks"][kind]["why"].as_str().unwrap().contains("cannot tell where it stopped"),
                    "{at}: {r:#}"
                );
            }
            continue;
        }
        assert_eq!(r["stopped_after"].as_u64(), Some(k as u64), "{at}: {r:#}");

        let rec = repair(
            &pgm,
            &db.url(),
            r["playbooks"]["finish"]["toml"].as_str().unwrap_or_else(|| panic!("{at}: {r:#}")),
        );
        assert_eq!(rec["outcome"], "succeeded", "{at}: {rec:#}");
        assert_eq!(
            schema_dump(&db.name).replace(&db.name, "X"),
            whole_schema.replace(&whole.name, "X"),
            "{at}: finish = the whole migration"
        );

        let before_undo = rows(&copy);
        match r["playbooks"]["undo"]["toml"].as_str() {
            Some(undo) => {
                let rec = repair(&pgm, &copy.url(), undo);
                if rec["outcome"] == "succeeded" {
                    assert_eq!(
                        schema_dump(&copy.name),
                        baseline_schema.replace(&baseline.name, &copy.name),
                        "{at}: undo = the baseline"
                    );
                } else {
                    let error = rec["error"].as_str().unwrap();
                    assert!(error.contains("allow_data_loss"), "{at}: only rows stop a proven undo: {rec:#}");
                    assert_eq!(rows(&copy), before_undo, "{at}: a refused undo changes nothing");
                }
            }
            None => {
                let why = r["playbooks"]["undo"]["why"].as_str().unwrap();
                assert!(why.contains("cannot be undone"), "{at}: {why}");
            }
        }
        // Never a dropped row without allow_data_loss: every table the undo kept holds its rows.
        for pair in before_undo.split(',').filter(|p| !p.is_empty()) {
            let (table, _) = pair.rsplit_once('=').unwrap();
            if rows(&copy).contains(&format!("{table}=")) {
                assert!(rows(&copy).contains(pair), "{at}: {pair} lost rows: {}", rows(&copy));
            }
        }
    }
}

#[test]
fn prisma_generated_with_enums_foreign_keys_and_renames() {
    every_stopping_point(&CORPUS[0]);
}

#[test]
fn drop_and_recreate() {
    every_stopping_point(&CORPUS[1]);
}

#[test]
fn rename_and_swap() {
    every_stopping_point(&CORPUS[2]);
}

#[test]
fn concurrently_built_indexes() {
    every_stopping_point(&CORPUS[3]);
}

#[test]
fn a_tenant_schema_beside_a_same_named_public_table() {
    every_stopping_point(&CORPUS[4]);
}

#[test]
fn materialised_views() {
    every_stopping_point(&CORPUS[5]);
}
