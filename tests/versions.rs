//! Two majors side by side: the system's PostgreSQL 15 and a throw-away PostgreSQL 18 cluster.
//! Each database gets the client tools of its server's major (the lowest installed ≥ it);
//! snapshot, verify and restore on both; a 15 snapshot restored into the 18 server (an upgrade
//! by snapshot); watch and repair on 18; and without 18's tools the error names what it needs.

mod common;

use common::cluster::Cluster;
use common::prisma::{self, FAILED};
use common::*;

fn system_bin() -> String {
    let debian = std::path::Path::new("/usr/lib/postgresql/15/bin");
    if debian.join("pg_dump").exists() {
        return debian.display().to_string();
    }
    which("pg_dump").parent().unwrap().display().to_string()
}

/// pgmedic with `app15` (the system server) and `app18` (the cluster), both tool folders listed.
fn both(pg18: &Cluster, db15: &TestDb, tail: &str) -> Pgmedic {
    let dirs = format!("pg_bin_dir = [\"{}\", \"{}\"]\n", system_bin(), pg18.bin.display());
    let dbs = format!(
        "\n[[databases]]\nname = \"app15\"\nurl = \"{}\"\n\n[[databases]]\nname = \"app18\"\nurl = \"{}\"\n{tail}",
        db15.url(),
        pg18.url("app")
    );
    Pgmedic::custom(Backend::Local, "", "", &dirs, &dbs)
}

fn major(m: &serde_json::Value) -> u32 {
    let v = m["pg_dump_version"].as_str().unwrap();
    v.split(") ").nth(1).unwrap().split('.').next().unwrap().parse().unwrap()
}

#[test]
fn each_server_gets_its_majors_tools_and_both_round_trip() {
    let pg18 = Cluster::pg18();
    pg18.sql("postgres", "CREATE DATABASE app");
    pg18.sql("app", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g");
    let db15 = TestDb::new("v15");
    db15.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 300) g");
    let pgm = both(&pg18, &db15, "");
    let (m15, m18) = (pgm.snapshot("app15"), pgm.snapshot("app18"));
    assert_eq!((major(&m15), major(&m18)), (15, 18), "{m15:#}\n{m18:#}");
    assert_eq!(m18["pg_bin_dir"].as_str(), Some(pg18.bin.display().to_string().as_str()));
    assert!(m18["server_version"].as_str().unwrap().starts_with("18."), "{m18:#}");
    for m in [&m15, &m18] {
        let run = pgm.run(&["verify", m["id"].as_str().unwrap(), "--json"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let restored = pgm.run(&[
        "restore",
        m18["id"].as_str().unwrap(),
        "--target",
        &pg18.url("copy"),
        "--create",
        "--yes",
    ]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(
        pg18.sql("copy", "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t"),
        pg18.sql("app", "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t")
    );
}

#[test]
fn a_15_snapshot_restores_into_the_18_server() {
    let pg18 = Cluster::pg18();
    pg18.sql("postgres", "CREATE DATABASE app");
    let db15 = TestDb::new("v15up");
    db15.sql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE INDEX t_v ON t (v); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 400) g");
    let pgm = both(&pg18, &db15, "");
    let m = pgm.snapshot("app15");
    let run = pgm.run(&[
        "restore",
        m["id"].as_str().unwrap(),
        "--target",
        &pg18.url("upgraded"),
        "--create",
        "--yes",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        pg18.sql("upgraded", "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t"),
        db15.sql("SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t")
    );
    assert_eq!(pg18.sql("upgraded", "SELECT current_setting('server_version_num')::int / 10000"), "18");
    assert_eq!(pg18.sql("upgraded", "SELECT count(*) FROM pg_indexes WHERE indexname = 't_v'"), "1");
}

#[test]
fn without_18s_tools_the_snapshot_names_the_version_it_needs_and_where_it_looked() {
    let pg18 = Cluster::pg18();
    pg18.sql("postgres", "CREATE DATABASE app");
    let tail = format!("\n[[databases]]\nname = \"app18\"\nurl = \"{}\"\n", pg18.url("app"));
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let run = pgm.run(&["snapshot", "--db", "app18"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("no PostgreSQL client tools of version 18 or newer"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("{} (15)", system_bin())),
        "where it looked, with versions: {}",
        run.stderr
    );
    assert!(pgm.snapshot_ids().is_empty());
}

#[test]
fn watch_and_repair_work_on_18() {
    let pg18 = Cluster::pg18();
    pg18.sql("postgres", "CREATE DATABASE app");
    pg18.sql_file("app", &prisma::fixture("database.sql"));
    let db15 = TestDb::new("v15idle");
    let hotfix = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(hotfix.path(), prisma::HOTFIX).unwrap();
    let tail = format!(
        "[databases.migrations]\ndir = \"{}\"\n[[playbooks]]\nname = \"finish\"\ndatabase = \"app18\"\nsteps = [{{ sql_file = \"{}\" }}, {{ resolve = \"applied\" }}]\n",
        prisma::fixture("migrations").display(),
        hotfix.path().display()
    );
    let pgm = both(&pg18, &db15, &tail);
    let state = pgm.run(&["migrations", "--db", "app18", "--json"]).json();
    let failed: Vec<&str> = state["app18"]["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "failed")
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, [FAILED], "{state:#}");
    let rec = pgm.run(&["repair", "--db", "app18", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    let snapshot = rec["snapshot_id"].as_str().unwrap();
    let list = pgm.run(&["snapshots", "--db", "app18", "--json"]).json();
    let pre = list.as_array().unwrap().iter().find(|m| m["id"] == snapshot).unwrap();
    assert_eq!(major(pre), 18, "the pre-repair snapshot used 18's pg_dump: {pre:#}");
    assert_eq!(
        pg18.sql("app", "SELECT count(*) FROM pg_constraint WHERE conname = 'PluginCredential_userId_fkey'"),
        "1"
    );
}

/// The database's own `pg_bin_dir` (the only place PostgreSQL 18's tools are named) serves
/// restore and verify as it served the snapshot.
#[test]
fn restore_and_verify_use_the_databases_own_pg_bin_dir() {
    let pg18 = Cluster::pg18();
    pg18.sql("postgres", "CREATE DATABASE app");
    pg18.sql("app", "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 42)");
    let tail = format!(
        "\n[[databases]]\nname = \"app18\"\nurl = \"{}\"\npg_bin_dir = \"{}\"\n",
        pg18.url("app"),
        pg18.bin.display()
    );
    let pgm = Pgmedic::custom(Backend::Local, "", "", "", &tail);
    let id = pgm.snapshot("app18")["id"].as_str().unwrap().to_string();
    let run = pgm.run(&["verify", &id, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = pgm.run(&["restore", &id, "--target", "copy", "--create", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(pg18.sql("copy", "SELECT count(*) FROM t"), "42");
}
