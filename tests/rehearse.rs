//! `pgmedic rehearse` with the real Prisma CLI: the fixture's failing migration rehearsed on a
//! scratch copy (exit 1, diagnosed, the source untouched, nothing left behind), then fixed and
//! rehearsed again (exit 0, its duration); a rehearsal killed mid-deploy cleaned up by the next
//! one; snapshot freshness; and the daemon's socket command.

mod common;

use std::time::Duration;

use common::migrate::{self, schema_dump};
use common::prisma::{self, FAILED};
use common::prisma_cli::Project;
use common::*;

fn scratch_exists(name: &str) -> bool {
    psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")) == "1"
}

fn rehearse(pgm: &Pgmedic, project: &Project) -> Run {
    let argv = project.deploy_argv();
    let mut args = vec!["rehearse", "--db", "app", "--json", "--"];
    args.extend(argv.iter().map(String::as_str));
    pgm.run(&args)
}

#[test]
fn the_fixtures_failing_deploy_is_rehearsed_and_diagnosed_then_the_fixed_one_passes() {
    let db = prisma::p3009();
    db.sql(&format!(
        r#"DROP TABLE "PluginCredential"; DELETE FROM _prisma_migrations WHERE migration_name = '{FAILED}'"#
    ));
    let project = Project::new(&prisma::fixture("migrations"));
    let pgm = migrate::config(&db, &project.migrations(), "");
    let snap = pgm.snapshot("app");
    let (rows, schema) = (prisma::prisma_rows(&db), schema_dump(&db.name));

    let run = rehearse(&pgm, &project);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = run.json();
    assert_eq!((r["ok"].as_bool(), r["exit_code"].as_i64()), (Some(false), Some(1)), "{r:#}");
    assert_eq!(r["snapshot_id"], snap["id"]);
    assert_eq!(r["pending"], serde_json::json!([FAILED]));
    assert_eq!(r["failed"], serde_json::json!([FAILED]));
    assert!(r["output"].as_str().unwrap().contains("No such table: Users"), "the tool's own output: {r:#}");
    let d = &r["diagnosis"][0];
    let verdicts: Vec<&str> =
        d["statements"].as_array().unwrap().iter().map(|s| s["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["applied", "not_applied"], "{d:#}");
    assert_eq!(d["baseline_snapshot"], snap["id"], "{d:#}");
    assert_eq!(r["dropped"], true);
    assert!(!scratch_exists(r["scratch_database"].as_str().unwrap()), "{r:#}");
    assert_eq!(prisma::prisma_rows(&db), rows, "not one row of the source's migrations table changed");
    assert_eq!(schema_dump(&db.name), schema, "nor its schema");

    let file = project.migrations().join(FAILED).join("migration.sql");
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace("REFERENCES \"Users\"", "REFERENCES \"User\""),
    )
    .unwrap();
    let run = rehearse(&pgm, &project);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["applied"][0]["name"], FAILED, "{r:#}");
    assert!(r["applied"][0]["duration_s"].as_f64().unwrap() >= 0.0, "{r:#}");
    assert_eq!(r["failed"], serde_json::json!([]));
    assert!(!scratch_exists(r["scratch_database"].as_str().unwrap()));
    assert_eq!(prisma::prisma_rows(&db), rows);
    assert_eq!(schema_dump(&db.name), schema);
}

#[test]
fn a_rehearsal_killed_mid_deploy_leaves_no_scratch_database_after_the_next_run() {
    let db = TestDb::new("rkill");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    let dir = tempfile::tempdir().unwrap();
    let pgm = migrate::config(&db, dir.path(), "");
    pgm.snapshot("app");
    let started = dir.path().join("started");
    let script = format!("touch '{}'; exec sleep 60", started.display());
    let mut child = pgm.command(&["rehearse", "--db", "app", "--", "sh", "-c", &script]).spawn().unwrap();
    wait_for("the deploy to start", Duration::from_secs(60), || started.exists());
    let mine = format!(
        "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE '% pid={} %'",
        child.id()
    );
    let scratch = psql("postgres", &mine);
    assert!(scratch.starts_with("pgmedic_rehearse_"), "{scratch:?}");
    assert_eq!(psql(&scratch, "SELECT count(*) FROM t"), "1", "the copy was restored");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(scratch_exists(&scratch), "a killed rehearsal cannot clean up after itself");
    let run = pgm.run(&["rehearse", "--db", "app", "--", "true"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!scratch_exists(&scratch), "the next rehearsal dropped it");
}

#[test]
fn an_old_snapshot_is_refused_unless_named_or_a_fresh_one_is_taken() {
    let db = TestDb::new("rfresh");
    let dir = tempfile::tempdir().unwrap();
    let pgm = migrate::config(&db, dir.path(), "\n[rehearse]\nmax_age = \"0s\"\n");
    let old = pgm.snapshot("app");
    let run = pgm.run(&["rehearse", "--db", "app", "--", "true"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("over rehearse.max_age") && run.stderr.contains("--fresh"), "{}", run.stderr);
    let id = old["id"].as_str().unwrap();
    let named = pgm.run(&["rehearse", "--db", "app", "--snapshot", id, "--json", "--", "true"]);
    assert_eq!((named.code, named.json()["snapshot_id"].as_str()), (0, Some(id)), "{}", named.stderr);
    let fresh = pgm.run(&["rehearse", "--db", "app", "--fresh", "--json", "--", "true"]);
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    let new_id = fresh.json()["snapshot_id"].as_str().unwrap().to_string();
    assert!(new_id != id && new_id.contains("-rehearse-"), "{new_id}");
    assert!(pgm.snapshot_ids().contains(&new_id));
}

#[test]
fn the_daemon_rehearses_the_configured_command_over_its_socket() {
    let db = TestDb::new("rsock");
    let dir = tempfile::tempdir().unwrap();
    let pgm = migrate::config(&db, dir.path(), "rehearse_command = [\"sh\", \"-c\", \"psql -Xqc 'CREATE TABLE made_by_deploy ()' && echo deployed to $PGDATABASE\"]\n");
    pgm.snapshot("app");
    let daemon = Daemon::start(&pgm);
    let reply = daemon.request(r#"{"cmd":"rehearse","db":"app"}"#);
    assert_eq!(reply["ok"], true, "{reply:#}");
    let r = &reply["rehearsal"];
    assert_eq!((r["ok"].as_bool(), r["exit_code"].as_i64()), (Some(true), Some(0)), "{r:#}");
    let scratch = r["scratch_database"].as_str().unwrap();
    assert!(
        r["output"].as_str().unwrap().contains(&format!("deployed to {scratch}")),
        "the deploy saw the scratch database: {r:#}"
    );
    assert!(!scratch_exists(scratch));
    assert_eq!(db.sql("SELECT to_regclass('made_by_deploy') IS NULL"), "t", "the source was not touched");
    let refused = daemon.request(r#"{"cmd":"rehearse","db":"app","command":["rm","-rf","/"]}"#);
    assert_eq!(refused["ok"], false, "a socket peer cannot name a command: {refused:#}");

    // "fresh": the snapshot is the worker's (under snapshot.max_concurrent), seen in status.
    let reply = daemon.request(r#"{"cmd":"rehearse","db":"app","fresh":true}"#);
    assert_eq!(reply["rehearsal"]["ok"], true, "{reply:#}");
    let last = &daemon.status()["databases"]["app"]["last_snapshot"];
    assert_eq!(last["reason"], "rehearse", "{last:#}");
    assert_eq!(last["id"], reply["rehearsal"]["snapshot_id"], "the rehearsal used the worker's snapshot");
}
