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

const ACCOUNTS: &str = "exports.up = async (knex) => {
  await knex.schema.createTable('accounts', (t) => { t.bigInteger('id').primary(); t.text('email'); });
  await knex('accounts').insert([{ id: 1, email: 'a@example.com' }, { id: 2, email: 'a@example.com' }, { id: 3, email: 'c@example.com' }]);
};
exports.down = async (knex) => knex.schema.dropTable('accounts');
";
const AUDIT: &str = "20260102000000_audit.js";
const AUDIT_JS: &str = "exports.config = { transaction: false };
exports.up = async (knex) => {
  await knex.schema.createTable('audit', (t) => { t.increments('id'); t.text('note'); });
  await knex.schema.alterTable('accounts', (t) => { t.timestamp('verified_at'); });
  await knex.raw('CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email)');
};
exports.down = async (knex) => {
  await knex.raw('DROP INDEX IF EXISTS accounts_email_key');
  await knex.schema.alterTable('accounts', (t) => { t.dropColumn('verified_at'); });
  await knex.schema.dropTable('audit');
};
";

/// `knex migrate:latest`: its success and everything it printed.
fn latest(db: &TestDb, dir: &Path) -> (bool, String) {
    let argv = knex_argv(dir);
    let out = Command::new(&argv[0]).args(&argv[1..]).env("DATABASE_URL", db.url()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The real knex, a `transaction: false` migration that fails on its third statement (a unique
/// index over duplicate emails): a table, a column and an invalid index committed, no row, and
/// every later `migrate:latest` fails "already exists". pgmedic finds it `half_applied` from the
/// schema against the snapshot whose rows are today's (its SQL is JavaScript), names every object
/// it rests on and says the attribution is by position; the undo written from those objects is
/// proven on the baseline, refuses nothing that holds no rows, and leaves the schema so that the
/// fixed data lets knex's own next deploy succeed.
#[test]
fn a_half_applied_javascript_migration_is_found_undone_and_deployed_again() {
    let db = TestDb::new("knexhalf");
    let dir = project();
    let migrations = dir.path().join("migrations");
    std::fs::remove_file(migrations.join("20250101000000_slow.js")).unwrap();
    std::fs::write(migrations.join("20260101000000_accounts.js"), ACCOUNTS).unwrap();
    let (ok, out) = latest(&db, dir.path());
    assert!(ok, "{out}");
    let playbook =
        "[[playbooks]]\nname = \"back\"\nsteps = [{ undo = true }, { resolve = \"rolled-back\" }]\n";
    let (hook, received) = webhook_event("/knex", "migration_failed");
    let notify = format!("watch_interval = \"1s\"\n\n[[notify]]\nwebhook = \"{hook}\"\n");
    let pgm = migrate::config(&db, &migrations, &format!("tool = \"knex\"\n{notify}{playbook}"));
    pgm.snapshot("app");

    std::fs::write(migrations.join(AUDIT), AUDIT_JS).unwrap();
    let (ok, out) = latest(&db, dir.path());
    assert!(!ok && out.contains("accounts_email_key"), "the index fails over the duplicates: {out}");
    assert_eq!(db.sql("SELECT string_agg(name, ',') FROM knex_migrations"), "20260101000000_accounts.js");
    assert_eq!(db.sql("SELECT to_regclass('audit') IS NOT NULL"), "t", "the table was committed");
    assert_eq!(db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "1");
    let (ok, out) = latest(&db, dir.path());
    assert!(!ok && out.contains("already exists"), "knex itself is stuck: {out}");

    let run = pgm.run(&["migrations", "--json"]);
    let app = &run.json()["app"];
    let half = app["migrations"].as_array().unwrap().iter().find(|m| m["name"] == AUDIT).cloned();
    let half = half.unwrap_or_else(|| panic!("the failed file is listed: {app:#}"));
    assert_eq!(half["status"], "half_applied", "{half:#}");
    let logs = half["logs"].as_str().unwrap();
    for object in [
        "table public.audit",
        "column public.accounts.verified_at",
        "invalid index public.accounts_email_key",
        "by position",
    ] {
        assert!(logs.contains(object), "{object}: {logs}");
    }
    // The daemon sees it within one watch interval and says so.
    {
        let _daemon = Daemon::start(&pgm);
        let event = received.join().unwrap();
        assert!(event.contains(AUDIT) && event.contains("half_applied"), "{event}");
    }

    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    assert_eq!(
        (r["migration"].as_str(), r["attribution"].as_str()),
        (Some(AUDIT), Some("position")),
        "{r:#}"
    );
    assert_eq!(r["proof"], "replay", "{r:#}");
    let n = r["statements"].as_array().unwrap().len() as u64;
    assert_eq!(r["stopped_after"].as_u64(), Some(n - 1), "all but the failed index: {r:#}");
    assert!(r["statements"][n as usize - 1]["sql"].as_str().unwrap().contains("CONCURRENTLY"), "{r:#}");
    assert!(r["playbooks"]["finish"]["why"].as_str().unwrap().contains("code"), "{r:#}");
    assert!(r["playbooks"]["undo"]["sql"].as_str().unwrap().contains("audit"), "{r:#}");

    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(db.sql("SELECT to_regclass('audit') IS NULL AND to_regclass('audit_id_seq') IS NULL"), "t");
    assert_eq!(
        db.sql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'verified_at'"),
        "0"
    );
    assert_eq!(db.sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid"), "0");
    assert_eq!(db.sql("SELECT count(*) FROM accounts"), "3", "no row of the old table was lost");

    // The data fixed: knex's own next deploy runs the whole migration and records it.
    db.sql("DELETE FROM accounts WHERE id = 2");
    let (ok, out) = latest(&db, dir.path());
    assert!(ok, "{out}");
    assert_eq!(
        db.sql("SELECT string_agg(name, ',' ORDER BY id) FROM knex_migrations"),
        format!("20260101000000_accounts.js,{AUDIT}")
    );
    let state = pgm.run(&["migrations", "--json"]).json();
    let statuses: Vec<&str> = state["app"]["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["applied", "applied"], "{state:#}");
}

const CRASH: &str = "20260103000000_audit_slow.js";
const CRASH_JS: &str = "exports.config = { transaction: false };
exports.up = async (knex) => {
  await knex.schema.createTable('audit', (t) => { t.increments('id'); t.text('note'); });
  await knex.raw('SELECT pg_sleep(3)');
};
exports.down = async (knex) => knex.schema.dropTable('audit');
";

/// A psql session kept open on `db` after running `sql` (its stdin held), killed on drop.
struct Psql(Child);

impl Psql {
    fn start(db: &TestDb, sql: &str) -> Psql {
        let mut child = Command::new("psql")
            .args(["-h", PG_HOST, "-U", "postgres", "-d", &db.name, "-Xq"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.as_mut().unwrap(), "{sql}").unwrap();
        Psql(child)
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// knex killed while its `transaction: false` migration ran: the lock row stays taken and the
/// orphaned backend commits the migration, with no row. While that statement runs the lock is in
/// progress; an application busy meanwhile (an unrelated query running, an idle pooled
/// connection whose last query read knex_migrations) is not taken for the migrator. Once it ends,
/// the migration is half_applied ahead of the lock, and one run releases the lock and resolves
/// the migration applied as knex's own success records it: knex's next deploy has nothing to do.
#[test]
fn a_killed_batch_is_unlocked_and_resolved_in_one_run_while_the_application_is_busy() {
    let db = TestDb::new("knexcrash");
    let dir = project();
    let migrations = dir.path().join("migrations");
    std::fs::remove_file(migrations.join("20250101000000_slow.js")).unwrap();
    std::fs::write(migrations.join("20260101000000_accounts.js"), ACCOUNTS).unwrap();
    let (ok, out) = latest(&db, dir.path());
    assert!(ok, "{out}");
    let playbook =
        "[[playbooks]]\nname = \"crashed\"\nsteps = [{ release_lock = true }, { resolve = \"applied\" }]\n";
    let pgm = migrate::config(&db, &migrations, &format!("tool = \"knex\"\n{playbook}"));
    pgm.snapshot("app");

    std::fs::write(migrations.join(CRASH), CRASH_JS).unwrap();
    let argv = knex_argv(dir.path());
    let mut knex = Command::new(&argv[0])
        .args(&argv[1..])
        .env("DATABASE_URL", db.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sleeping =
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)' AND state = 'active'";
    wait_for("knex's slow statement", Duration::from_secs(60), || db.sql(sleeping) == "1");
    knex.kill().unwrap();
    knex.wait().unwrap();
    let _app = Psql::start(&db, "SELECT pg_sleep(60);");
    let _pool = Psql::start(&db, "SELECT count(*) FROM knex_migrations;");
    wait_for("the application's sessions", Duration::from_secs(10), || {
        db.sql("SELECT count(*) FROM pg_stat_activity WHERE query IN ('SELECT pg_sleep(60);', 'SELECT count(*) FROM knex_migrations;')") == "2"
    });
    assert_eq!(lock_status(&pgm), "in_progress", "the orphaned statement still runs");
    wait_for("the orphaned statement to end", Duration::from_secs(30), || db.sql(sleeping) == "0");

    let state = pgm.run(&["migrations", "--json"]).json();
    let rows: Vec<(String, String)> = state["app"]["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().into(), m["status"].as_str().unwrap().into()))
        .collect();
    let want = [
        ("20260101000000_accounts.js", "applied"),
        (CRASH, "half_applied"),
        ("knex_migrations_lock", "locked"),
    ];
    assert_eq!(rows, want.map(|(a, b)| (a.to_string(), b.to_string())), "{state:#}");

    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(
        (rec["outcome"].as_str(), rec["migration"].as_str()),
        (Some("succeeded"), Some(CRASH)),
        "{rec:#}"
    );
    assert_eq!(db.sql("SELECT is_locked FROM knex_migrations_lock"), "0");
    assert_eq!(
        db.sql(
            "SELECT string_agg(name, ',' ORDER BY id) || ' ' || count(DISTINCT batch) FROM knex_migrations"
        ),
        format!("20260101000000_accounts.js,{CRASH} 2")
    );
    let (ok, out) = latest(&db, dir.path());
    assert!(ok && out.contains("Already up to date"), "{out}");
}

/// `sql_command` runs against an empty database on pgmedic's scratch server, never the
/// production one: a command that does more than print (here it also creates a table through
/// the connection variables it is given) changes nothing on the source.
#[test]
fn sql_command_never_reaches_the_production_database() {
    let db = TestDb::new("knexsqlcmd");
    let dir = project();
    let migrations = dir.path().join("migrations");
    std::fs::remove_file(migrations.join("20250101000000_slow.js")).unwrap();
    std::fs::write(migrations.join("20260101000000_accounts.js"), ACCOUNTS).unwrap();
    let (ok, out) = latest(&db, dir.path());
    assert!(ok, "{out}");
    std::fs::write(migrations.join(AUDIT), AUDIT_JS).unwrap();
    let command = "psql -qAtc 'CREATE TABLE sql_command_was_here (id int)' >/dev/null; echo 'CREATE TABLE audit (id int);'";
    let tail = format!("tool = \"knex\"\nsql_command = [\"sh\", \"-c\", {command:?}]\n");
    let pgm = migrate::config(&db, &migrations, &tail);
    let run = pgm.run(&["lint", "--db", "app", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let found = run.json()["findings"].as_array().unwrap().clone();
    assert!(
        found.iter().any(|f| f["file"].as_str().unwrap().ends_with("(its SQL from sql_command)")),
        "the command ran and its SQL was linted: {found:#?}"
    );
    assert_eq!(
        db.sql("SELECT to_regclass('sql_command_was_here') IS NULL"),
        "t",
        "the source was not touched"
    );
}
