//! A rehearsal on pgmedic's ephemeral scratch server leaves the production server alone: the
//! real Prisma rehearses the P3009 fixture while this test watches the source server's
//! databases (none appears) and its WAL position (it moves by a fraction of what the same
//! rehearsal with `scratch.server = "source"` writes there). Its own file: the WAL figures
//! must not count another test's writes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::migrate;
use common::prisma::{self, FAILED};
use common::prisma_cli::Project;
use common::*;

fn databases() -> BTreeSet<String> {
    psql("postgres", "SELECT datname FROM pg_database").lines().map(str::to_string).collect()
}

fn wal_lsn() -> String {
    psql("postgres", "SELECT pg_current_wal_insert_lsn()")
}

fn wal_since(lsn: &str) -> i64 {
    psql("postgres", &format!("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{lsn}')::bigint"))
        .parse()
        .unwrap()
}

/// Rehearses and watches the source server until it ends: (exit code, databases that appeared, WAL bytes).
fn rehearse_watched(pgm: &Pgmedic, project: &Project) -> (i32, BTreeSet<String>, i64, String) {
    let before = databases();
    let lsn = wal_lsn();
    let argv = project.deploy_argv();
    let mut args = vec!["rehearse", "--db", "app", "--json", "--"];
    args.extend(argv.iter().map(String::as_str));
    let mut child = pgm.command(&args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut appeared = BTreeSet::new();
    let status = loop {
        appeared.extend(databases().difference(&before).cloned());
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50)); // sampling, not synchronisation
    };
    let wal = wal_since(&lsn);
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    (status.code().unwrap_or(-1), appeared, wal, out)
}

#[test]
fn the_p3009_fixture_rehearses_on_the_ephemeral_server_without_a_database_or_wal_on_the_source() {
    let db = prisma::p3009();
    db.sql(&format!(
        r#"DROP TABLE "PluginCredential"; DELETE FROM _prisma_migrations WHERE migration_name = '{FAILED}'"#
    ));
    let project = Project::new(&prisma::fixture("migrations"));
    let pgm = migrate::config(&db, &project.migrations(), "");
    pgm.snapshot("app");
    psql("postgres", "CHECKPOINT");
    let (code, appeared, ephemeral_wal, out) = rehearse_watched(&pgm, &project);
    assert_eq!(code, 1, "the fixture's migration fails on the copy: {out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["scratch_server"].as_str(), r["failed"][0].as_str()),
        (Some("ephemeral"), Some(FAILED)),
        "{r:#}"
    );
    assert!(appeared.is_empty(), "no database appeared on the source server during the run: {appeared:?}");

    let on_source = migrate::config_scratch(&db, &project.migrations(), "server = \"source\"\n", "");
    on_source.snapshot("app");
    psql("postgres", "CHECKPOINT");
    let (code, appeared, source_wal, out) = rehearse_watched(&on_source, &project);
    assert_eq!(code, 1, "{out}");
    assert!(
        appeared.iter().any(|d| d.starts_with("pgmedic_rehearse_")),
        "the opt-in puts the copy there: {appeared:?}"
    );
    eprintln!("source server WAL during the rehearsal: ephemeral {ephemeral_wal} bytes, scratch.server = \"source\" {source_wal} bytes");
    assert!(ephemeral_wal * 10 < source_wal, "ephemeral {ephemeral_wal} B vs on the source {source_wal} B");
}
