//! Sequelize, driven with the real sequelize-cli 6 (installed by scripts/test into
//! .tools/sequelize). No transaction wraps its migrations: one that fails after its first
//! statement commits what ran and records nothing, and every later `db:migrate` fails "already
//! exists". pgmedic finds it `half_applied` from the schema, undoes it (proven on the baseline),
//! and sequelize-cli's own next `db:migrate` succeeds once the data is fixed.

mod common;

use common::js::{half_applied_is_undone_and_deployed, statuses, Project};
use common::migrate;
use common::*;

const ACCOUNTS: &str = "module.exports = {
  up: async (q, S) => {
    await q.createTable('accounts', { id: { type: S.BIGINT, primaryKey: true }, email: { type: S.TEXT } });
    await q.bulkInsert('accounts', [{ id: 1, email: 'a@example.com' }, { id: 2, email: 'a@example.com' }, { id: 3, email: 'c@example.com' }]);
  },
  down: async (q) => q.dropTable('accounts'),
};
";
const AUDIT: &str = "20260102000000-audit.js";
const AUDIT_JS: &str = "module.exports = {
  up: async (q, S) => {
    await q.createTable('audit', { id: { type: S.INTEGER, autoIncrement: true, primaryKey: true }, note: { type: S.TEXT } });
    await q.addColumn('accounts', 'verified_at', S.DATE);
    await q.sequelize.query('CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email)');
  },
  down: async (q) => {
    await q.sequelize.query('DROP INDEX IF EXISTS accounts_email_key');
    await q.removeColumn('accounts', 'verified_at');
    await q.dropTable('audit');
  },
};
";

#[test]
fn a_half_applied_migration_is_found_undone_and_deployed_again() {
    let db = TestDb::new("sequelize");
    let p = Project::new("PGMEDIC_TEST_SEQUELIZE", &[("migrations/20260101000000-accounts.js", ACCOUNTS)]);
    let url = db.url();
    let deploy = || p.node(&db, "node_modules/sequelize-cli/lib/sequelize", &["db:migrate", "--url", &url]);
    let (ok, out) = deploy();
    assert!(ok, "{out}");
    let playbook =
        "[[playbooks]]\nname = \"back\"\nsteps = [{ undo = true }, { resolve = \"rolled-back\" }]\n";
    let pgm = migrate::config(&db, &p.root.join("migrations"), &format!("tool = \"auto\"\n{playbook}"));
    assert_eq!(statuses(&pgm), ["20260101000000-accounts.js:applied"]);
    pgm.snapshot("app");

    p.write(&format!("migrations/{AUDIT}"), AUDIT_JS);
    let (ok, out) = deploy();
    assert!(!ok && out.contains("duplicated"), "the unique index fails over the duplicates: {out}");
    assert_eq!(db.sql("SELECT string_agg(name, ',') FROM \"SequelizeMeta\""), "20260101000000-accounts.js");
    half_applied_is_undone_and_deployed(&db, &pgm, AUDIT, &deploy);
    assert_eq!(
        db.sql("SELECT string_agg(name, ',' ORDER BY name) FROM \"SequelizeMeta\""),
        format!("20260101000000-accounts.js,{AUDIT}")
    );
}
