//! Django, driven with the real Django 5.2 (installed by scripts/test into .tools/py). A
//! migration with `atomic = False` that fails on its third operation commits the first two and
//! records nothing; every later `migrate` fails "already exists". pgmedic finds it `half_applied`,
//! reads its real SQL through `sql_command` (`manage.py sqlmigrate`), replays it on the baseline
//! (attribution by replay, not by position), and once the data is fixed the drafted finish builds
//! the index and `resolve = "applied"` writes what `migrate --fake` writes: Django's next
//! `migrate` has nothing to apply.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::js::statuses;
use common::migrate;
use common::*;

const SETTINGS: &str = "import os
SECRET_KEY = 'test'
USE_TZ = True
INSTALLED_APPS = ['shop']
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'
DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': os.environ['PGDATABASE'],
    'HOST': os.environ.get('PGHOST', '127.0.0.1'), 'PORT': os.environ.get('PGPORT', '5432'), 'USER': os.environ.get('PGUSER', 'postgres')}}
";
const MANAGE: &str = "import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'settings')
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
";
const INITIAL: &str = "from django.db import migrations
class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.RunSQL(\"CREATE TABLE accounts (id bigint PRIMARY KEY, email text)\"),
        migrations.RunSQL(\"INSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com'), (3, 'c@example.com')\"),
    ]
";
const AUDIT: &str = "from django.db import migrations
class Migration(migrations.Migration):
    atomic = False
    dependencies = [('shop', '0001_initial')]
    operations = [
        migrations.RunSQL('CREATE TABLE audit (id serial PRIMARY KEY, note text)'),
        migrations.RunSQL('ALTER TABLE accounts ADD COLUMN verified_at timestamptz'),
        migrations.RunSQL('CREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email)'),
    ]
";

fn python() -> PathBuf {
    let py =
        std::env::var("PGMEDIC_TEST_PYTOOLS").expect("PGMEDIC_TEST_PYTOOLS: run the suite with scripts/test");
    Path::new(&py).join("bin/python")
}

/// `manage.py migrate shop`: its success and what it printed.
fn migrate_shop(db: &TestDb, root: &Path) -> (bool, String) {
    let out = Command::new(python())
        .args(["manage.py", "migrate", "shop"])
        .current_dir(root)
        .env("PGDATABASE", &db.name)
        .env("PGHOST", PG_HOST)
        .env("PGUSER", "postgres")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_half_applied_non_atomic_migration_is_replayed_from_sqlmigrate_and_finished() {
    let db = TestDb::new("django");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (path, text) in [
        ("settings.py", SETTINGS),
        ("manage.py", MANAGE),
        ("shop/__init__.py", ""),
        ("shop/migrations/__init__.py", ""),
        ("shop/migrations/0001_initial.py", INITIAL),
    ] {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), text).unwrap();
    }
    let (ok, out) = migrate_shop(&db, root);
    assert!(ok, "{out}");
    let tail = format!(
        "tool = \"auto\"\nrehearse_cwd = \"{}\"\nsql_command = [\"{}\", \"manage.py\", \"sqlmigrate\", \"shop\", \"{{name}}\"]\n\n[[playbooks]]\nname = \"on\"\nsteps = [{{ finish = true }}, {{ resolve = \"applied\" }}]\n",
        root.display(),
        python().display()
    );
    let pgm = migrate::config(&db, &root.join("shop/migrations"), &tail);
    assert_eq!(statuses(&pgm), ["shop.0001_initial:applied"]);
    pgm.snapshot("app");

    std::fs::write(root.join("shop/migrations/0002_audit.py"), AUDIT).unwrap();
    // Linted before it runs, from the SQL sqlmigrate prints: the index would fail.
    let lint = pgm.run(&["lint", "--db", "app", "--json"]);
    assert_eq!(lint.code, 1, "{lint:?}");
    let found = lint.json()["findings"].as_array().unwrap().clone();
    let fail = found.iter().find(|f| f["rule"] == "might-fail").unwrap_or_else(|| panic!("{found:#?}"));
    assert!(fail["file"].as_str().unwrap().ends_with("0002_audit.py (its SQL from sql_command)"), "{fail:#}");
    assert!(fail["message"].as_str().unwrap().contains("1 values are duplicated"), "{fail:#}");
    let (ok, out) = migrate_shop(&db, root);
    assert!(!ok && out.contains("accounts_email_key"), "{out}");
    let (ok, out) = migrate_shop(&db, root);
    assert!(!ok && out.contains("already exists"), "Django itself is stuck: {out}");
    assert_eq!(statuses(&pgm), ["shop.0001_initial:applied", "shop.0002_audit:half_applied"]);

    let r = &pgm.run(&["diagnose", "--json"]).json()[0];
    assert_eq!((r["attribution"].as_str(), r["proof"].as_str()), (Some("replay"), Some("replay")), "{r:#}");
    assert_eq!((r["stopped_after"].as_u64(), r["failed_statement"].as_u64()), (Some(2), Some(3)), "{r:#}");
    assert!(r["statements"][2]["sql"].as_str().unwrap().contains("CONCURRENTLY accounts_email_key"), "{r:#}");

    db.sql("DELETE FROM accounts WHERE id = 2");
    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert_eq!(
        db.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email_key'::regclass"),
        "t"
    );
    let (ok, out) = migrate_shop(&db, root);
    assert!(ok && out.contains("No migrations to apply"), "{out}");
    assert_eq!(statuses(&pgm), ["shop.0001_initial:applied", "shop.0002_audit:applied"]);
}
