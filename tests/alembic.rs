//! Alembic, driven with the real Alembic 1.20 (installed by scripts/test into .tools/py) and the
//! stock `env.py` shape. A revision whose `CREATE UNIQUE INDEX CONCURRENTLY` runs in an
//! `autocommit_block()` commits the statements before it and, when the index fails, leaves the
//! version where it was: every later `upgrade` fails "already exists". pgmedic finds it
//! `half_applied`, reads its SQL through `sql_command` (`alembic upgrade {prev}:{name} --sql`),
//! proves the undo on the baseline, and Alembic's own next upgrade succeeds once the data is fixed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::js::statuses;
use common::migrate;
use common::*;

const INI: &str = "[alembic]\nscript_location = %(here)s/migrations\n";
const ENV: &str = "import os
from alembic import context
from sqlalchemy import create_engine
url = os.environ['DATABASE_URL']
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, dialect_opts={'paramstyle': 'named'})
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(url).connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
";
const A1: &str = "from alembic import op
revision = 'a1'
down_revision = None
def upgrade():
    op.execute('CREATE TABLE accounts (id bigint PRIMARY KEY, email text)')
    op.execute(\"INSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com'), (3, 'c@example.com')\")
";
const B2: &str = "from alembic import op
revision = 'b2'
down_revision = 'a1'
def upgrade():
    op.execute('CREATE TABLE audit (id serial PRIMARY KEY, note text)')
    op.execute('ALTER TABLE accounts ADD COLUMN verified_at timestamptz')
    with op.get_context().autocommit_block():
        op.execute('CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email)')
";

fn alembic() -> PathBuf {
    let py =
        std::env::var("PGMEDIC_TEST_PYTOOLS").expect("PGMEDIC_TEST_PYTOOLS: run the suite with scripts/test");
    Path::new(&py).join("bin/alembic")
}

fn upgrade(db: &TestDb, root: &Path) -> (bool, String) {
    let out = Command::new(alembic())
        .args(["upgrade", "head"])
        .current_dir(root)
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_revision_that_failed_in_its_autocommit_block_is_undone_and_upgraded_again() {
    let db = TestDb::new("alembic");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (path, text) in
        [("alembic.ini", INI), ("migrations/env.py", ENV), ("migrations/versions/a1_accounts.py", A1)]
    {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), text).unwrap();
    }
    let (ok, out) = upgrade(&db, root);
    assert!(ok, "{out}");
    let tail = format!(
        "tool = \"auto\"\nrehearse_cwd = \"{}\"\nsql_command = [\"{}\", \"upgrade\", \"{{prev}}:{{name}}\", \"--sql\"]\n\n[[playbooks]]\nname = \"back\"\nsteps = [{{ undo = true }}, {{ resolve = \"rolled-back\" }}]\n",
        root.display(),
        alembic().display()
    );
    let pgm = migrate::config(&db, &root.join("migrations/versions"), &tail);
    assert_eq!(statuses(&pgm), ["a1:applied"]);
    pgm.snapshot("app");

    std::fs::write(root.join("migrations/versions/b2_audit.py"), B2).unwrap();
    let (ok, out) = upgrade(&db, root);
    assert!(!ok && out.contains("accounts_email_key"), "{out}");
    let (ok, out) = upgrade(&db, root);
    assert!(!ok && out.contains("already exists"), "Alembic itself is stuck: {out}");
    assert_eq!(statuses(&pgm), ["a1:applied", "b2:half_applied"]);

    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    assert_eq!((r["attribution"].as_str(), r["stopped_after"].as_u64()), (Some("replay"), Some(2)), "{r:#}");
    assert_eq!(
        r["statements"].as_array().unwrap().len(),
        3,
        "the version UPDATE and BEGIN/COMMIT left out: {r:#}"
    );

    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(
        db.sql("SELECT to_regclass('audit') IS NULL AND to_regclass('accounts_email_key') IS NULL"),
        "t"
    );
    db.sql("DELETE FROM accounts WHERE id = 2");
    let (ok, out) = upgrade(&db, root);
    assert!(ok, "{out}");
    assert_eq!(db.sql("SELECT version_num FROM alembic_version"), "b2");
    assert_eq!(statuses(&pgm), ["a1:applied", "b2:applied"]);
}
