//! Rails' migrations, driven with the real ActiveRecord 6.1 (Debian's ruby-activerecord,
//! installed by scripts/test) through its own MigrationContext. A migration with
//! `disable_ddl_transaction!` that fails half way commits what ran and records nothing; every
//! later migrate fails "already exists". pgmedic finds it `half_applied` from the schema, undoes
//! it on proof, and ActiveRecord's own next migrate succeeds once the data is fixed. While
//! ActiveRecord's advisory lock is held, a repair refuses.

mod common;

use std::path::Path;
use std::process::Command;

use common::js::{half_applied_is_undone_and_deployed, statuses};
use common::migrate;
use common::*;

const MIGRATE: &str = "require 'active_record'
ActiveRecord::Base.establish_connection(ENV.fetch('DATABASE_URL'))
ActiveRecord::MigrationContext.new(File.join(__dir__, 'db/migrate'), ActiveRecord::SchemaMigration).migrate
";
const ACCOUNTS: &str = "class CreateAccounts < ActiveRecord::Migration[6.1]
  def up
    execute 'CREATE TABLE accounts (id bigint PRIMARY KEY, email text)'
    execute \"INSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com'), (3, 'c@example.com')\"
  end
end
";
const AUDIT: &str = "class AddAudit < ActiveRecord::Migration[6.1]
  disable_ddl_transaction!
  def up
    execute 'CREATE TABLE audit (id serial PRIMARY KEY, note text)'
    execute 'ALTER TABLE accounts ADD COLUMN verified_at timestamptz'
    execute 'CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email)'
  end
end
";

fn migrate(db: &TestDb, root: &Path) -> (bool, String) {
    let out =
        Command::new("ruby").arg(root.join("migrate.rb")).env("DATABASE_URL", db.url()).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_half_applied_migration_is_found_undone_and_migrated_again() {
    let db = TestDb::new("rails");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("db/migrate")).unwrap();
    std::fs::write(root.join("migrate.rb"), MIGRATE).unwrap();
    std::fs::write(root.join("db/migrate/20260101000000_create_accounts.rb"), ACCOUNTS).unwrap();
    let (ok, out) = migrate(&db, root);
    assert!(ok, "{out}");
    let playbook =
        "[[playbooks]]\nname = \"back\"\nsteps = [{ undo = true }, { resolve = \"rolled-back\" }]\n";
    let pgm = migrate::config(&db, &root.join("db/migrate"), &format!("tool = \"auto\"\n{playbook}"));
    assert_eq!(statuses(&pgm), ["20260101000000_create_accounts:applied"]);
    pgm.snapshot("app");

    std::fs::write(root.join("db/migrate/20260102000000_add_audit.rb"), AUDIT).unwrap();
    let (ok, out) = migrate(&db, root);
    assert!(!ok && out.contains("accounts_email_key"), "{out}");
    {
        let key = 2_053_462_845_i64 * i64::from(crc32fast::hash(db.name.as_bytes()));
        let _lock = common::js::Holder::advisory(&db, key);
        assert_eq!(statuses(&pgm).last().map(String::as_str), Some("schema_migrations_lock:in_progress"));
        assert_eq!(
            pgm.run(&["repair", "--db", "app", "--json"]).code,
            3,
            "a migrate holds ActiveRecord's lock"
        );
    }
    let deploy = || migrate(&db, root);
    half_applied_is_undone_and_deployed(&db, &pgm, "20260102000000_add_audit", &deploy);
    assert_eq!(
        db.sql("SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations"),
        "20260101000000,20260102000000"
    );
}
