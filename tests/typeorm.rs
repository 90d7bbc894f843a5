//! TypeORM, driven with the real TypeORM 0.3 CLI (installed by scripts/test into .tools/typeorm)
//! with a JavaScript data source in `migrationsTransactionMode: "each"`. A class with
//! `transaction = false` that fails half way commits what ran and records nothing, and every
//! later `migration:run` fails "already exists". pgmedic finds it `half_applied` from the schema,
//! undoes it (proven on the baseline), and TypeORM's own next run succeeds once the data is fixed.
//! `resolve = "applied"` writes exactly what `migration:run --fake` writes.

mod common;

use common::js::{half_applied_is_undone_and_deployed, statuses, Project};
use common::migrate;
use common::*;

const SOURCE: &str = "require('reflect-metadata');
const { DataSource } = require('typeorm');
module.exports = new DataSource({ type: 'postgres', url: process.env.DATABASE_URL, migrations: [__dirname + '/migrations/*.js'], migrationsTransactionMode: 'each' });
";
const ACCOUNTS: &str = "module.exports = class Accounts1767225600000 {
  async up(q) {
    await q.query('CREATE TABLE accounts (id bigint PRIMARY KEY, email text)');
    await q.query(\"INSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com'), (3, 'c@example.com')\");
  }
  async down(q) { await q.query('DROP TABLE accounts'); }
};
";
const AUDIT: &str = "Audit1767312000000";
const AUDIT_JS: &str = "module.exports = class Audit1767312000000 {
  transaction = false;
  async up(q) {
    await q.query('CREATE TABLE audit (id serial PRIMARY KEY, note text)');
    await q.query('ALTER TABLE accounts ADD COLUMN verified_at timestamptz');
    await q.query('CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email)');
  }
  async down(q) {
    await q.query('DROP INDEX IF EXISTS accounts_email_key');
    await q.query('ALTER TABLE accounts DROP COLUMN verified_at');
    await q.query('DROP TABLE audit');
  }
};
";

#[test]
fn a_half_applied_migration_is_found_undone_and_deployed_again() {
    let db = TestDb::new("typeorm");
    let p = Project::new(
        "PGMEDIC_TEST_TYPEORM",
        &[("data-source.js", SOURCE), ("migrations/1767225600000-accounts.js", ACCOUNTS)],
    );
    let cli = "node_modules/typeorm/cli.js";
    let deploy = || p.node(&db, cli, &["migration:run", "-d", "./data-source.js"]);
    let (ok, out) = deploy();
    assert!(ok, "{out}");
    let playbook =
        "[[playbooks]]\nname = \"back\"\nsteps = [{ undo = true }, { resolve = \"rolled-back\" }]\n";
    let pgm = migrate::config(&db, &p.root.join("migrations"), &format!("tool = \"typeorm\"\n{playbook}"));
    assert_eq!(statuses(&pgm), ["Accounts1767225600000:applied"]);
    pgm.snapshot("app");

    p.write("migrations/1767312000000-audit.js", AUDIT_JS);
    let (ok, out) = deploy();
    assert!(!ok && out.contains("23505"), "the unique index fails over the duplicates: {out}");
    assert_eq!(db.sql("SELECT string_agg(name, ',') FROM migrations"), "Accounts1767225600000");
    half_applied_is_undone_and_deployed(&db, &pgm, AUDIT, &deploy);
    let fake_like = db.sql("SELECT \"timestamp\" || ' ' || name FROM migrations ORDER BY id DESC LIMIT 1");
    assert_eq!(fake_like, format!("1767312000000 {AUDIT}"));
}

/// resolve applied writes the row `migration:run --fake` writes: TypeORM then has nothing to run.
#[test]
fn resolve_applied_writes_what_fake_writes() {
    let db = TestDb::new("typeormfake");
    let p = Project::new(
        "PGMEDIC_TEST_TYPEORM",
        &[("data-source.js", SOURCE), ("migrations/1767225600000-accounts.js", ACCOUNTS)],
    );
    let (ok, out) = p.node(&db, "node_modules/typeorm/cli.js", &["migration:run", "-d", "./data-source.js"]);
    assert!(ok, "{out}");
    let playbook = "[[playbooks]]\nname = \"done\"\nsteps = [{ resolve = \"applied\" }]\n";
    let pgm = migrate::config(&db, &p.root.join("migrations"), &format!("tool = \"typeorm\"\n{playbook}"));
    pgm.snapshot("app");
    // The migration's work done by hand, whole: its objects are there, its row is not.
    p.write("migrations/1767312000000-audit.js", AUDIT_JS);
    db.sql("DELETE FROM accounts WHERE id = 2; CREATE TABLE audit (id serial PRIMARY KEY, note text); ALTER TABLE accounts ADD COLUMN verified_at timestamptz; CREATE UNIQUE INDEX accounts_email_key ON accounts (email)");
    assert_eq!(statuses(&pgm), ["Accounts1767225600000:applied", "Audit1767312000000:half_applied"]);
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    let (ok, out) = p.node(&db, "node_modules/typeorm/cli.js", &["migration:run", "-d", "./data-source.js"]);
    assert!(ok && out.contains("No migrations are pending"), "{out}");
    assert_eq!(
        db.sql("SELECT \"timestamp\" || ' ' || name FROM migrations ORDER BY id DESC LIMIT 1"),
        "1767312000000 Audit1767312000000"
    );
}
