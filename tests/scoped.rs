//! Scoped pre-repair snapshots (`repair.snapshot = "auto"`), on real PostgreSQL and the real
//! binary: each kind of step gets a snapshot of exactly the tables it may write (and the whole
//! schema), what cannot be bounded gets a full one, a scoped snapshot that fails still refuses
//! the repair, and restoring one puts back those tables' rows and touches nothing else.

mod common;

use common::prisma::*;
use common::*;
use serde_json::{json, Value};

fn scope_of(pgm: &Pgmedic, id: &str) -> Value {
    let listed = pgm.run(&["snapshots", "--json"]).json();
    let m = listed.as_array().unwrap().iter().find(|m| m["id"] == id).unwrap_or_else(|| panic!("{listed}"));
    m["scope"].clone()
}

fn tables(list: &[(&str, &str)]) -> Value {
    json!({ "tables": list.iter().map(|(s, t)| json!({"schema": s, "table": t})).collect::<Vec<_>>() })
}

fn repair(pgm: &Pgmedic) -> Value {
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.json()
}

#[test]
fn a_resolve_takes_a_scoped_snapshot_that_restores_the_tool_table_and_nothing_else() {
    let db = p3009();
    db.sql("CREATE TABLE notes (x int); INSERT INTO notes VALUES (1)");
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        "\n[[playbooks]]\nname = \"back\"\nsteps = [ { resolve = \"rolled-back\" } ]\n".into()
    });
    let rec = repair(&pgm);
    let id = rec["snapshot_id"].as_str().unwrap().to_string();
    let want = tables(&[("public", "_prisma_migrations")]);
    assert_eq!(rec["snapshot_scope"], want, "{rec:#}");
    assert!(rec["snapshot_scope_reason"].as_str().unwrap().starts_with("scoped:"), "{rec:#}");
    assert_eq!(scope_of(&pgm, &id), want);
    assert_eq!(pgm.run(&["verify", &id]).code, 0, "a scoped snapshot verifies");
    let deep = pgm.run(&["verify", &id, "--deep", "--json"]);
    assert_eq!(deep.code, 0, "and restores on the scratch server with its row counts: {deep:?}");
    let failed =
        "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL";
    assert_eq!(db.sql(failed), "0");

    // After the repair the application went on writing; restoring the scoped snapshot onto the
    // source puts back the migrations table as it was, and leaves every other table alone.
    db.sql("INSERT INTO notes VALUES (2)");
    let run = pgm.run(&["restore", &id, "--target", &db.name, "--clean", "--yes"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.sql(failed), "1", "the failed row is back");
    assert_eq!(
        db.sql("SELECT string_agg(x::text, ',' ORDER BY x) FROM notes"),
        "1,2",
        "other rows untouched"
    );

    // Into a new database: the whole schema, and only the scoped table's rows.
    let copy = TestDb::reserved("scoped_copy");
    let run = pgm.run(&["restore", &id, "--target", &copy.name, "--create"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(copy.sql("SELECT count(*) FROM notes"), "0", "the table is there, without rows");
    assert_eq!(copy.sql("SELECT count(*) FROM \"User\""), "0");
    assert_eq!(copy.sql(failed), "1");
}

#[test]
fn a_release_lock_snapshots_the_tool_table_and_its_lock_table() {
    let db = TestDb::new("scoped_knex");
    db.sql(
        "CREATE TABLE knex_migrations (id serial PRIMARY KEY, name varchar(255), batch int, migration_time timestamptz); \
         CREATE TABLE knex_migrations_lock (index serial PRIMARY KEY, is_locked int); \
         INSERT INTO knex_migrations_lock (is_locked) VALUES (1); CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 1000)",
    );
    let dir = tempfile::tempdir().unwrap();
    let pgm = migrate::config(
        &db,
        dir.path(),
        "tool = \"knex\"\n[[playbooks]]\nname = \"unlock\"\nsteps = [ { release_lock = true } ]\n",
    );
    let rec = repair(&pgm);
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    let want = tables(&[("public", "knex_migrations"), ("public", "knex_migrations_lock")]);
    assert_eq!(rec["snapshot_scope"], want, "{rec:#}");
    assert_eq!(scope_of(&pgm, rec["snapshot_id"].as_str().unwrap()), want);
}

/// A Prisma-style deploy (statement at a time): migration 1 applied, a snapshot, then migration 2
/// created a table and added a column before its third statement failed; `fixed` rewrites
/// that statement afterwards, as an operator fixing the file would.
fn half_done(label: &str, playbook: &str, fixed: bool) -> (TestDb, tempfile::TempDir, Pgmedic) {
    let db = TestDb::new(label);
    let dir = tempfile::tempdir().unwrap();
    migrate::write_migration(dir.path(), "1_users", "CREATE TABLE users (id int PRIMARY KEY);\n");
    migrate::deploy(&db, dir.path(), "1_users", "").unwrap();
    db.sql(
        "INSERT INTO users VALUES (1), (2); CREATE TABLE unrelated (x int); INSERT INTO unrelated VALUES (7)",
    );
    let second = "CREATE TABLE extra (id int);\nALTER TABLE users ADD COLUMN nick text;\nCREATE INDEX users_nick ON nowhere (nick);\n";
    migrate::write_migration(dir.path(), "2_more", second);
    let pgm = migrate::config(&db, dir.path(), playbook);
    pgm.snapshot("app");
    assert!(migrate::deploy(&db, dir.path(), "2_more", "").is_err());
    if fixed {
        migrate::write_migration(dir.path(), "2_more", &second.replace("nowhere", "users"));
    }
    (db, dir, pgm)
}

#[test]
fn an_undo_snapshots_the_tables_the_migration_names() {
    let (db, _dir, pgm) = half_done(
        "scoped_undo",
        "[[playbooks]]\nname = \"undo\"\nsteps = [ { undo = true, allow_data_loss = true }, { resolve = \"rolled-back\" } ]\n",
        false,
    );
    let rec = repair(&pgm);
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    let want = tables(&[("public", "_prisma_migrations"), ("public", "extra"), ("public", "users")]);
    assert_eq!(rec["snapshot_scope"], want, "the tool's table, the created one, the altered one: {rec:#}");
    assert_eq!(db.sql("SELECT to_regclass('extra') IS NULL"), "t");
}

#[test]
fn a_finish_snapshots_the_tables_the_migration_names() {
    let (db, _dir, pgm) = half_done(
        "scoped_finish",
        "[[playbooks]]\nname = \"finish\"\nsteps = [ { finish = true }, { resolve = \"applied\" } ]\n",
        true,
    );
    let rec = repair(&pgm);
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    let want = tables(&[("public", "_prisma_migrations"), ("public", "extra"), ("public", "users")]);
    assert_eq!(rec["snapshot_scope"], want, "{rec:#}");
    assert_eq!(db.sql("SELECT to_regclass('users_nick') IS NOT NULL"), "t", "finished");
}

#[test]
fn a_command_step_or_sql_that_does_not_parse_takes_a_full_snapshot() {
    for (label, step, why) in [
        ("scoped_cmd", "{ command = [\"true\"] }", "a command step's effects are unknown"),
        ("scoped_bad", "{ sql = \"UPDATE notes SET x = = 1\" }", "does not parse"),
        ("scoped_do", "{ sql = \"DO $$ BEGIN END $$\" }", "DO block"),
    ] {
        let db = p3009();
        db.sql("CREATE TABLE notes (x int)");
        let pgm = with_playbook(Backend::Local, &db, "", |_| {
            format!("\n[[playbooks]]\nname = \"p\"\nsteps = [ {step}, {{ resolve = \"rolled-back\" }} ]\n")
        });
        let rec = pgm.run(&["repair", "--json"]).json();
        assert_eq!(rec["snapshot_scope"], "full", "{label}: {rec:#}");
        assert!(rec["snapshot_scope_reason"].as_str().unwrap().contains(why), "{label}: {rec:#}");
        assert_eq!(scope_of(&pgm, rec["snapshot_id"].as_str().unwrap()), "full", "{label}");
    }
}

#[test]
fn a_sql_step_snapshots_the_tables_it_writes() {
    let db = p3009();
    db.sql("CREATE TABLE notes (x int); CREATE TABLE other (y int)");
    let pgm = with_playbook(Backend::Local, &db, "", |_| {
        "\n[[playbooks]]\nname = \"p\"\nsteps = [ { sql = \"UPDATE notes SET x = 1; CREATE INDEX ON other (y)\" }, { resolve = \"rolled-back\" } ]\n".into()
    });
    let rec = repair(&pgm);
    assert_eq!(
        rec["snapshot_scope"],
        tables(&[("public", "_prisma_migrations"), ("public", "notes")]),
        "{rec:#}"
    );
}

#[test]
fn a_scoped_snapshot_that_fails_refuses_the_repair() {
    let db = p3009();
    // pg_dump fails whenever it is asked for only some tables' rows.
    let tools = tempfile::tempdir().unwrap();
    let script = "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = --data-only ] && { echo 'pg_dump: error: scoped dump refused' >&2; exit 1; }; done\nexec pg_dump \"$@\"\n";
    let path = tools.path().join("pg_dump");
    std::fs::write(&path, script).unwrap();
    std::process::Command::new("chmod").arg("755").arg(&path).status().unwrap();
    for tool in ["pg_dumpall", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(which(tool), tools.path().join(tool)).unwrap();
    }
    let text = format!(
        "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ndir = \"{}\"\n\n[[playbooks]]\nname = \"back\"\nsteps = [ {{ resolve = \"rolled-back\" }} ]\n",
        db.url(),
        fixture("migrations").display()
    );
    let pgm = Pgmedic::custom(
        Backend::Local,
        "",
        "",
        &format!("pg_bin_dir = \"{}\"\n", tools.path().display()),
        &text,
    );
    let run = pgm.run(&["repair", "--json"]);
    assert_eq!(run.code, 3, "{run:?}");
    let rec = run.json();
    assert_eq!(rec["outcome"], "snapshot_failed", "{rec:#}");
    assert!(rec["error"].as_str().unwrap().contains("scoped dump refused"), "{rec:#}");
    let failed =
        "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NULL AND rolled_back_at IS NULL";
    assert_eq!(db.sql(failed), "1", "no step ran");
}
