//! sqlx, driven with the real sqlx-cli (installed by scripts/test with `cargo install` into
//! .tools/cargo): an applied migration edited afterwards makes `sqlx migrate run` refuse; pgmedic
//! reports it drifted, and the playbook stores the file's checksum (accept_checksums) and runs
//! `sqlx migrate run`, which goes on to the next migration.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::migrate;
use common::*;

fn sqlx() -> PathBuf {
    let root = std::env::var("PGMEDIC_TEST_SQLX")
        .expect("PGMEDIC_TEST_SQLX: run the suite with scripts/test, which installs sqlx-cli");
    Path::new(&root).join("bin/sqlx")
}

fn run_argv(db: &TestDb, dir: &Path) -> Vec<String> {
    let (bin, source) = (sqlx().display().to_string(), dir.display().to_string());
    vec![bin, "migrate".into(), "run".into(), "--source".into(), source, "--database-url".into(), db.url()]
}

fn status_of(pgm: &Pgmedic, name: &str) -> String {
    let s = pgm.run(&["migrations", "--json"]).json()["app"].clone();
    let m = s["migrations"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned();
    m.map(|m| m["status"].as_str().unwrap().to_string()).unwrap_or_else(|| "absent".into())
}

#[test]
fn an_edited_migration_is_drifted_and_the_playbook_accepts_it_and_sqlx_goes_on() {
    let db = TestDb::new("sqlxreal");
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("20250101000000_create_users.sql");
    std::fs::write(&first, "CREATE TABLE users (id int);\n").unwrap();
    let argv = run_argv(&db, dir.path());
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let playbook = format!("[[playbooks]]\nname = \"accept\"\nsteps = [{{ accept_checksums = true }}, {{ command = {}, timeout = \"2m\" }}]\n", serde_json::to_string(&argv).unwrap());
    let pgm = migrate::config(&db, dir.path(), &format!("tool = \"sqlx\"\n{playbook}"));
    assert_eq!(status_of(&pgm, "20250101000000_create_users"), "applied");

    std::fs::write(&first, "-- the users\nCREATE TABLE users (id int);\n").unwrap();
    std::fs::write(
        dir.path().join("20250102000000_add_email.sql"),
        "ALTER TABLE users ADD COLUMN email text;\n",
    )
    .unwrap();
    let stuck = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    assert!(!stuck.status.success(), "sqlx itself refuses");
    // sqlx-cli prints its error on stdout.
    let said =
        format!("{}{}", String::from_utf8_lossy(&stuck.stdout), String::from_utf8_lossy(&stuck.stderr));
    assert!(said.contains("migration 20250101000000 was previously applied but has been modified"), "{said}");
    assert_eq!(status_of(&pgm, "20250101000000_create_users"), "drifted");

    let rec = pgm.run(&["repair", "--db", "app", "--json"]).json();
    assert_eq!(rec["outcome"], "succeeded", "{rec:#}");
    assert!(rec["steps"][0]["output"].as_str().unwrap().contains("20250101000000"), "{rec:#}");
    assert_eq!(status_of(&pgm, "20250101000000_create_users"), "applied");
    assert_eq!(status_of(&pgm, "20250102000000_add_email"), "applied", "sqlx migrate run went on");
    assert_eq!(db.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'email'"), "1");
}
