//! knex, driven with the real knex CLI (installed by scripts/test into .tools/knex): a
//! `transaction: false` migration killed mid-run leaves knex's lock row taken; while the dead
//! migrator's statement still runs it is in progress, then locked; the playbook releases the
//! lock exactly as `knex migrate:unlock` does and runs `knex migrate:latest`, which succeeds.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::migrate;
use common::*;

const KNEXFILE: &str = "module.exports = { client: 'pg', connection: process.env.DATABASE_URL, migrations: { directory: __dirname + '/migrations' } };\n";
const MIGRATION: &str = "exports.config = { transaction: false };
exports.up = async (knex) => {
  await knex.raw('CREATE TABLE IF NOT EXISTS made_by_knex (id int)');
  if (process.env.SLOW) await knex.raw('SELECT pg_sleep(4)');
};
exports.down = async () => {};
";

fn project() -> tempfile::TempDir {
    let tools = std::env::var("PGMEDIC_TEST_KNEX")
        .expect("PGMEDIC_TEST_KNEX: run the suite with scripts/test, which installs knex");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(Path::new(&tools).join("node_modules"), dir.path().join("node_modules"))
        .unwrap();
    std::fs::write(dir.path().join("knexfile.js"), KNEXFILE).unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    std::fs::write(dir.path().join("migrations/20250101000000_slow.js"), MIGRATION).unwrap();
    dir
}

fn knex_argv(dir: &Path) -> Vec<String> {
    let bin = dir.join("node_modules/knex/bin/cli.js").display().to_string();
    let knexfile = dir.join("knexfile.js").display().to_string();
    vec!["node".into(), bin, "migrate:latest".into(), "--knexfile".into(), knexfile]
}

fn start_slow_deploy(db: &TestDb, dir: &Path) -> Child {
    let argv = knex_argv(dir);
    Command::new(&argv[0])
        .args(&argv[1..])
        .env("DATABASE_URL", db.url())
        .env("SLOW", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn lock_status(pgm: &Pgmedic) -> String {
    let run = pgm.run(&["migrations", "--json"]);
    let s = run.json()["app"].clone();
    let lock =
        s["migrations"].as_array().unwrap().iter().find(|m| m["name"] == "knex_migrations_lock").cloned();
    lock.map(|m| m["status"].as_str().unwrap().to_string()).unwrap_or_else(|| "free".into())
}

#[test]
fn a_killed_knex_batch_is_locked_and_the_playbook_unlocks_and_migrates() {
    let db = TestDb::new("knex");
    let dir = project();
    let argv = serde_json::to_string(&knex_argv(dir.path())).unwrap();
    let playbook = format!(
        "[[playbooks]]\nname = \"unlock\"\nmatch = {{ migration = \"knex_migrations_lock\" }}\nsteps = [{{ release_lock = true }}, {{ command = {argv}, env = {{ DATABASE_URL = \"{}\" }}, timeout = \"2m\" }}]\n",
        db.url()
    );
    let pgm = migrate::config(&db, &dir.path().join("migrations"), &format!("tool = \"knex\"\n{playbook}"));
    let mut knex = start_slow_deploy(&db, dir.path());
    wait_for("knex's slow statement", Duration::from_secs(60), || {
        db.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(4)%' AND state = 'active' AND pid <> pg_backend_pid()") == "1"
    });
    knex.kill().unwrap();
    knex.wait().unwrap();
    assert_eq!(
        db.sql("SELECT is_locked FROM knex_migrations_lock"),
        "1",
        "the killed batch left the lock taken"
    );
    assert_eq!(lock_status(&pgm), "in_progress", "its statement still runs on the server");
    wait_for("the orphaned statement to end", Duration::from_secs(30), || {
        db.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(4)%' AND state = 'active' AND pid <> pg_backend_pid()") == "0"
    });
    assert_eq!(lock_status(&pgm), "locked");
    let plain = Command::new("node")
        .args(&knex_argv(dir.path())[1..])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        !plain.status.success()
            && String::from_utf8_lossy(&plain.stderr).contains("Migration table is already locked"),
        "knex itself is stuck"
    );

    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(
        rec["steps"][0]["output"].as_str().unwrap().contains("\"is_locked\":1"),
        "the lock row before: {rec:#}"
    );
    assert_eq!(
        db.sql("SELECT string_agg(name, ',') FROM knex_migrations"),
        "20250101000000_slow.js",
        "knex migrate:latest went on"
    );
    assert_eq!(db.sql("SELECT is_locked FROM knex_migrations_lock"), "0");
    assert_eq!(lock_status(&pgm), "free");
}
