//! `pgmedic rehearse` with the real Prisma CLI: the fixture's failing migration rehearsed on a
//! scratch copy on pgmedic's own ephemeral server (exit 1, diagnosed, the source untouched,
//! nothing left behind), then fixed and rehearsed again (exit 0, its duration); a rehearsal
//! killed mid-deploy cleaned up by the next one; snapshot freshness; the daemon's socket
//! command; a deploy that reaches the source caught; `{url}` and the config's folder; the room
//! check; the sweep; Prisma against a password-authenticated scratch server.

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
    assert_eq!(
        (r["scratch_server"].as_str(), r["source_changed"].as_bool()),
        (Some("ephemeral"), Some(false)),
        "{r:#}"
    );
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
    let pgm = migrate::config_scratch(&db, dir.path(), "server = \"source\"\n", "");
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
    let pgm = migrate::config(
        &db,
        dir.path(),
        "rehearse_command = [\"sh\", \"-c\", \"psql -Xq -f schema.sql && echo deployed to $PGDATABASE\"]\n",
    );
    // The deploy's own files beside the configuration; the daemon runs in `/`, as under systemd.
    std::fs::write(pgm.config.parent().unwrap().join("schema.sql"), "CREATE TABLE made_by_deploy ();\n")
        .unwrap();
    pgm.snapshot("app");
    let daemon = Daemon::start_in(&pgm, &[], Some(std::path::Path::new("/")));
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

/// Prisma's migrations table as `migrate deploy` creates it (an existing schema needs one).
const PRISMA_TABLE: &str = "CREATE TABLE _prisma_migrations (id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL, finished_at timestamptz, migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz, started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count int NOT NULL DEFAULT 0)";

/// A leftover scratch database on the source server labelled as pgmedic labels them.
fn leftover(label: &str) -> String {
    let name = unique("pgmedic_rehearse");
    psql("postgres", &format!("CREATE DATABASE {name}"));
    psql("postgres", &format!("COMMENT ON DATABASE {name} IS '{label}'"));
    name
}

fn hostname() -> String {
    String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_deploy_that_changes_the_source_fails_the_rehearsal_naming_the_change() {
    let db = TestDb::new("rtouch");
    db.sql(PRISMA_TABLE);
    let dir = tempfile::tempdir().unwrap();
    let (hook, received) = webhook("/hook");
    let pgm = migrate::config(&db, dir.path(), &format!("\n[[notify]]\nwebhook = \"{hook}\"\n"));
    pgm.snapshot("app");
    // The operator's shell expanded the source's URL into the command: the deploy goes there.
    let url = db.url();
    let run = pgm.run(&[
        "rehearse", "--db", "app", "--json", "--", "psql", &url, "-Xq", "-v", "ON_ERROR_STOP=1",
        "-c", "CREATE TABLE touched (id int)",
        "-c", "INSERT INTO _prisma_migrations (id, checksum, migration_name, finished_at, applied_steps_count) VALUES ('x', 'c', '20260101_touch', now(), 1)",
    ]);
    assert_eq!(run.code, 1, "the psql deploy exited 0, yet the rehearsal must fail: {}", run.stderr);
    let r = run.json();
    assert_eq!(
        (r["exit_code"].as_i64(), r["ok"].as_bool(), r["source_changed"].as_bool()),
        (Some(0), Some(false), Some(true)),
        "{r:#}"
    );
    let changes = r["source_changes"].to_string();
    assert!(
        changes.contains("relation public.touched (table)") && changes.contains("20260101_touch"),
        "{changes}"
    );
    assert!(run.stderr.contains("the deploy changed the source database app"), "{}", run.stderr);
    assert!(run.stderr.contains("public.touched"), "the change named: {}", run.stderr);
    let event = received.join().unwrap();
    assert!(
        event.contains("\"event\":\"rehearse_touched_source\"") && event.contains("public.touched"),
        "{event}"
    );
}

#[test]
fn a_deploy_that_applies_nothing_while_migrations_are_pending_fails() {
    let db = TestDb::new("rnothing");
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), "20260101000000_init", "CREATE TABLE a (id int);");
    let pgm = migrate::config(&db, dir.path(), "");
    pgm.snapshot("app");
    let run = pgm.run(&["rehearse", "--db", "app", "--json", "--", "true"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = run.json();
    assert_eq!(r["pending"], serde_json::json!(["20260101000000_init"]), "{r:#}");
    assert!(
        run.stderr.contains("the deploy applied nothing on the copy")
            && run.stderr.contains("did it connect elsewhere?"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_url_placeholder_and_the_config_folder_reach_the_deploy() {
    let db = TestDb::new("rurl");
    let dir = tempfile::tempdir().unwrap();
    let pgm = migrate::config(&db, dir.path(), "");
    std::fs::write(
        pgm.config.parent().unwrap().join("deploy.sql"),
        "CREATE TABLE from_the_config_folder (id int);\n",
    )
    .unwrap();
    pgm.snapshot("app");
    // Run from `/`, as the daemon is under systemd: the deploy still finds deploy.sql beside the config.
    let out = pgm
        .command(&[
            "rehearse",
            "--db",
            "app",
            "--json",
            "--",
            "psql",
            "{url}",
            "-Xq",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "deploy.sql",
            "-c",
            "SELECT 'on ' || current_database()",
        ])
        .current_dir("/")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let scratch = r["scratch_database"].as_str().unwrap();
    assert!(
        r["output"].as_str().unwrap().contains(&format!("on {scratch}")),
        "{{url}} named the copy: {r:#}"
    );
    assert_eq!(r["command"][1], "{url}", "argv is reported as given: {r:#}");
    assert_eq!(db.sql("SELECT to_regclass('from_the_config_folder') IS NULL"), "t");

    // rehearse_cwd, relative to the config's folder, wins.
    std::fs::create_dir(pgm.config.parent().unwrap().join("app")).unwrap();
    std::fs::write(pgm.config.parent().unwrap().join("app/marker"), "in the app folder\n").unwrap();
    let text = std::fs::read_to_string(&pgm.config).unwrap() + "rehearse_cwd = \"app\"\n";
    pgm.write_config(&text);
    let run = pgm.run(&["rehearse", "--db", "app", "--json", "--", "cat", "marker"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.json()["output"].as_str().unwrap().contains("in the app folder"));
}

#[test]
fn a_snapshot_too_large_for_scratch_dir_is_refused_with_both_figures() {
    let db = TestDb::new("rroom");
    let dir = tempfile::tempdir().unwrap();
    let pgm = migrate::config(&db, dir.path(), "");
    let snap = pgm.snapshot("app");
    let id = snap["id"].as_str().unwrap();
    // The manifest as a 4 PiB database's would read.
    let manifest =
        files_under(&pgm.snapshots_dir()).into_iter().find(|p| p.ends_with("manifest.json")).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["raw_bytes"] = serde_json::json!(4u64 << 50);
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let run = pgm.run(&["rehearse", "--db", "app", "--snapshot", id, "--", "true"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("4.0 PiB") || run.stderr.contains("4096.0 TiB"),
        "the snapshot's size: {}",
        run.stderr
    );
    assert!(run.stderr.contains(" free") && run.stderr.contains("scratch.dir"), "{}", run.stderr);
    assert!(
        !pgm.scratch_dir().exists() || std::fs::read_dir(pgm.scratch_dir()).unwrap().next().is_none(),
        "no cluster was started"
    );
}

#[test]
fn the_sweep_spares_a_live_makers_scratch_and_passes_over_one_it_cannot_drop() {
    let db = TestDb::new("rsweep");
    // A subscription (never connected): pg_dump dumps it, and a database holding one cannot be dropped.
    db.sql("CREATE SUBSCRIPTION rsweep_sub CONNECTION 'host=127.0.0.1 port=1 dbname=none' PUBLICATION p WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE)");
    let dir = tempfile::tempdir().unwrap();
    let pgm = migrate::config_scratch(&db, dir.path(), "server = \"source\"\n", "");
    pgm.snapshot("app");
    let host = hostname();
    // A long rehearsal of a maker alive on this host (this test), started a year ago.
    let live = leftover(&format!(
        "pgmedic rehearse host={host} pid={} started=2025-01-01T00:00:00+00:00",
        std::process::id()
    ));
    // A killed one's, which cannot be dropped: it holds a subscription.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stuck =
        leftover(&format!("pgmedic rehearse host={host} pid={dead_pid} started=2025-01-01T00:00:00+00:00"));
    psql(&stuck, "CREATE SUBSCRIPTION stuck_sub CONNECTION 'host=127.0.0.1 port=1 dbname=none' PUBLICATION p WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE)");

    let run = pgm.run(&["rehearse", "--db", "app", "--json", "--", "true"]);
    let cleanup = || {
        psql(&stuck, "DROP SUBSCRIPTION stuck_sub");
        psql("postgres", &format!("DROP DATABASE {stuck}"));
        psql("postgres", &format!("DROP DATABASE IF EXISTS {live}"));
        db.sql("DROP SUBSCRIPTION rsweep_sub");
    };
    let r = if run.code == 0 { Some(run.json()) } else { None };
    let (live_kept, stuck_kept) = (scratch_exists(&live), scratch_exists(&stuck));
    cleanup();
    assert_eq!(
        run.code, 0,
        "one leftover that cannot be dropped must not stop the rehearsal: {}",
        run.stderr
    );
    assert!(live_kept, "the scratch of a live maker is never dropped, however old");
    assert!(stuck_kept && run.stderr.contains(&stuck), "passed over, and said so: {}", run.stderr);
    let r = r.unwrap();
    assert_eq!(r["dropped"], true, "the copy held no subscription, so it was dropped: {r:#}");
    assert!(!scratch_exists(r["scratch_database"].as_str().unwrap()));
}

#[test]
fn prisma_rehearses_against_a_password_authenticated_scratch_server() {
    let password = "s3cret-Rehearsal-pw";
    let server = common::cluster::Cluster::pg15_with_password(password);
    let db = TestDb::new("rpass");
    let migrations = tempfile::tempdir().unwrap();
    migrate::write_migration(
        migrations.path(),
        "20260101000000_init",
        "CREATE TABLE \"Thing\" (id int PRIMARY KEY);",
    );
    let project = Project::new(migrations.path());
    let url = format!("postgresql://postgres:{password}@127.0.0.1:{}/postgres", server.port);
    let pgm = migrate::config_scratch(&db, &project.migrations(), &format!("server = \"{url}\"\n"), "");
    pgm.snapshot("app");
    let run = rehearse(&pgm, &project);
    assert!(!run.stdout.contains(password) && !run.stderr.contains(password), "the password never printed");
    let r = run.json();
    assert_eq!(
        r["scratch_server"].as_str(),
        Some(format!("postgresql://postgres:***@127.0.0.1:{}/postgres", server.port).as_str()),
        "{r:#}"
    );
    assert_eq!(run.code, 0, "Prisma authenticated (no P1000) and deployed: {r:#}");
    assert_eq!(r["applied"][0]["name"], "20260101000000_init", "{r:#}");
    assert_eq!(
        server.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgmedic\\_%'"),
        "0",
        "dropped"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0",
        "the source untouched"
    );
}

#[test]
fn each_migrations_locks_and_rewrites_are_reported_at_real_size() {
    let db = TestDb::new("rlocks");
    db.sql(r#"CREATE TABLE "Big" (id int PRIMARY KEY, v int); INSERT INTO "Big" SELECT g, g FROM generate_series(1, 300000) g"#);
    db.sql(PRISMA_TABLE);
    let migrations = tempfile::tempdir().unwrap();
    migrate::write_migration(
        migrations.path(),
        "20260101000000_widen",
        r#"ALTER TABLE "Big" ALTER COLUMN v TYPE bigint;"#,
    );
    migrate::write_migration(
        migrations.path(),
        "20260102000000_index",
        r#"CREATE INDEX "Big_v_idx" ON "Big" (v);"#,
    );
    let project = Project::new(migrations.path());
    let pgm = migrate::config(&db, &project.migrations(), "");
    pgm.snapshot("app");
    let run = rehearse(&pgm, &project);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    let locks = r["locks"].as_array().unwrap();
    let on = |m: &str| {
        locks.iter().filter(|l| l["migration"] == m && l["table"] == "public.Big").collect::<Vec<_>>()
    };
    let widen = on("20260101000000_widen");
    assert_eq!(widen.len(), 1, "{r:#}");
    assert_eq!(
        (widen[0]["rewritten"].as_bool(), widen[0]["mode"].as_str()),
        (Some(true), Some("AccessExclusiveLock")),
        "{r:#}"
    );
    assert!(widen[0]["table_bytes"].as_i64().unwrap() > 5_000_000, "the copy's real size: {r:#}");
    assert!(
        on("20260102000000_index").iter().all(|l| l["rewritten"] == false),
        "an index build rewrites no table: {r:#}"
    );
    let text = pgm.run(&[
        "rehearse",
        "--db",
        "app",
        "--",
        &project.deploy_argv()[0],
        &project.deploy_argv()[1],
        &project.deploy_argv()[2],
    ]);
    assert!(
        text.stdout.contains("locks during 20260101000000_widen:") && text.stdout.contains("REWRITTEN"),
        "{}",
        text.stdout
    );
}
