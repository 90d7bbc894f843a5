//! Client-side encryption with age: a snapshot is written to the configured recipients, its
//! manifest names them by fingerprint only, the real `age` and `zstd` commands open it for
//! `pg_restore --list` (an operator can recover without pgmedic), pgmedic restores and verifies
//! it with the identity; without the identity, verify checks the hash and says it could not look
//! inside, and restore fails before touching the target, naming the recipients it needs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::migrate;
use common::*;
use sha2::Digest;

/// `age-keygen`: the identity file and its recipient.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen: scripts/test installs Debian's age");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let recipient = said.split("Public key: ").nth(1).unwrap().trim().to_string();
    (key, recipient)
}

fn fingerprint(recipient: &str) -> String {
    format!("sha256:{}", &hex::encode(sha2::Sha256::digest(recipient.as_bytes()))[..16])
}

fn config(db: &TestDb, recipients: &[&str], identity: Option<&Path>) -> Pgmedic {
    let list: Vec<String> = recipients.iter().map(|r| format!("\"{r}\"")).collect();
    let mut enc = format!("\n[storage.encryption]\nrecipients = [{}]\n", list.join(", "));
    if let Some(id) = identity {
        enc += &format!("identity_file = \"{}\"\n", id.display());
    }
    let tail = format!("\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n", db.url());
    Pgmedic::custom(Backend::Local, "", &enc, "", &tail)
}

/// `age -d -i KEY FILE | zstd -d`, as an operator would run it.
fn open_with_age(key: &Path, file: &Path) -> Vec<u8> {
    let mut age =
        Command::new("age").arg("-d").arg("-i").arg(key).arg(file).stdout(Stdio::piped()).spawn().unwrap();
    let out = Command::new("zstd").args(["-d", "-c"]).stdin(age.stdout.take().unwrap()).output().unwrap();
    assert!(age.wait().unwrap().success(), "age -d failed");
    assert!(out.status.success(), "zstd: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn an_encrypted_snapshot_opens_with_the_real_age_and_round_trips_with_the_identity() {
    let db = TestDb::new("crypt");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, secret text); INSERT INTO t SELECT g, 'card-' || g FROM generate_series(1, 200) g");
    let keys = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(keys.path(), "host.key");
    let (_, breakglass) = keygen(keys.path(), "breakglass.key");
    let pgm = config(&db, &[&recipient, &breakglass], Some(&key));
    let m = pgm.snapshot("app");
    assert_eq!(m["encryption"]["format"], "age");
    assert_eq!(
        m["encryption"]["recipients"],
        serde_json::json!([fingerprint(&recipient), fingerprint(&breakglass)])
    );
    let manifest_text = m.to_string();
    assert!(
        !manifest_text.contains(&recipient) && !manifest_text.contains("AGE-SECRET-KEY"),
        "{manifest_text}"
    );

    let folder = pgm.snapshots_dir().join("app").join(m["id"].as_str().unwrap());
    let dump = std::fs::read(folder.join("dump.zst")).unwrap();
    assert!(dump.starts_with(b"age-encryption.org/v1\n"), "the stored dump is an age file");
    assert!(!String::from_utf8_lossy(&dump).contains("card-1"), "no plaintext stored");
    let plain = open_with_age(&key, &folder.join("dump.zst"));
    let list = Command::new("pg_restore")
        .arg("--list")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut list.stdin.as_ref().unwrap(), &plain).unwrap();
    let listed = list.wait_with_output().unwrap();
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("TABLE public t "),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let schema = String::from_utf8(open_with_age(&key, &folder.join("schema.sql.zst"))).unwrap();
    assert!(schema.contains("CREATE TABLE public.t"), "{schema}");

    let verified = pgm.run(&["verify", m["id"].as_str().unwrap(), "--json"]);
    assert_eq!(verified.code, 0, "{}", verified.stderr);
    assert!(verified.json()["toc_entries"].as_u64().unwrap() > 0, "{}", verified.stdout);
    assert!(!verified.stderr.contains("chmod 0600"), "age-keygen's 0600 is fine: {}", verified.stderr);
    // A key others can read is named, by check-config and where it is used, but still used.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let check = pgm.run(&["check-config"]);
    assert!(
        check.stdout.contains("has mode 0644") && check.stdout.contains("chmod 0600"),
        "{}",
        check.stdout
    );
    let verified = pgm.run(&["verify", m["id"].as_str().unwrap(), "--json"]);
    assert_eq!(verified.code, 0, "{}", verified.stderr);
    assert!(verified.stderr.contains("has mode 0644"), "{}", verified.stderr);
    let copy = TestDb::reserved("cryptcopy");
    let restored =
        pgm.run(&["restore", m["id"].as_str().unwrap(), "--target", &copy.name, "--create", "--yes"]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(
        copy.sql("SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM t"),
        db.sql("SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM t")
    );
}

#[test]
fn without_the_identity_verify_checks_the_hash_and_restore_refuses_before_the_target() {
    let db = TestDb::new("cryptnokey");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    let keys = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(keys.path(), "host.key");
    let pgm = config(&db, &[&recipient], None);
    let m = pgm.snapshot("app");
    let id = m["id"].as_str().unwrap();
    let verified = pgm.run(&["verify", id, "--json"]);
    assert_eq!(verified.code, 0, "{}", verified.stderr);
    let report = verified.json();
    assert_eq!(report["sha256"], m["sha256"]);
    assert!(report["note"].as_str().unwrap().contains("could not be read"), "{report:#}");

    let target = TestDb::reserved("cryptnever");
    let run = pgm.run(&["restore", id, "--target", &target.name, "--create", "--yes"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&fingerprint(&recipient)) && run.stderr.contains("identity_file is not set"),
        "{}",
        run.stderr
    );
    assert!(!target.exists(), "the target was never created");

    // The stored bytes themselves are intact: tampering is still caught without the key.
    let dump = pgm.snapshots_dir().join("app").join(id).join("dump.zst");
    let mut bytes = std::fs::read(&dump).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&dump, bytes).unwrap();
    let tampered = pgm.run(&["verify", id]);
    assert_eq!(tampered.code, 1, "{}", tampered.stderr);
}

#[test]
fn s3_server_side_encryption_is_sent_on_every_upload() {
    let db = TestDb::new("sse");
    db.sql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)");
    for (sse, key) in
        [("AES256", None), ("aws:kms", Some("arn:aws:kms:us-east-1:123456789012:key/pgmedic-test"))]
    {
        let s3 = S3Server::start();
        let mut extra = format!("sse = \"{sse}\"\n");
        if let Some(k) = key {
            extra += &format!("kms_key_id = \"{k}\"\n");
        }
        let tail = format!("\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n", db.url());
        let pgm = Pgmedic::custom(Backend::S3(&s3), "", &extra, "", &tail);
        let m = pgm.snapshot("app");
        let id = m["id"].as_str().unwrap();
        // The dump goes up as a multipart upload, the manifest and the small objects with one PUT.
        for object in ["dump.zst", "schema.sql.zst", "manifest.json"] {
            let (algorithm, kms) = s3.encryption(&format!("test/prod/app/{id}/{object}"));
            assert_eq!(algorithm.as_deref(), Some(sse), "{object}");
            assert_eq!(kms.as_deref(), key, "{object}");
        }
    }
}

/// A reload that names a new `identity_file` is the one the daemon's undo reads its encrypted
/// baseline with: started with a key that cannot open the snapshots, reloaded with the right
/// one, the daemon's undo checks its result against the baseline and succeeds.
#[test]
fn a_reloaded_identity_file_opens_the_baseline_of_the_daemons_undo() {
    let db = TestDb::new("cryptreload");
    let keys = tempfile::tempdir().unwrap();
    let (right, recipient) = keygen(keys.path(), "right.key");
    let (wrong, _) = keygen(keys.path(), "wrong.key");
    let dir = tempfile::tempdir().unwrap();
    let init = "CREATE TABLE \"User\" (\"id\" SERIAL PRIMARY KEY);\n";
    let broken = "CREATE TABLE \"Extra\" (\"id\" INTEGER);\nALTER TABLE \"Nope\" ADD COLUMN \"x\" INTEGER;\n";
    migrate::write_migration(dir.path(), "20250101000000_init", init);
    migrate::write_migration(dir.path(), "20250601000000_broken", broken);
    migrate::deploy(&db, dir.path(), "20250101000000_init", "").unwrap();
    let render = |identity: &Path| {
        let enc = format!(
            "\n[storage.encryption]\nrecipients = [\"{recipient}\"]\nidentity_file = \"{}\"\n",
            identity.display()
        );
        let tail = format!(
            "\n[[databases]]\nname = \"app\"\nurl = \"{}\"\n[databases.migrations]\ndir = \"{}\"\n\n[[playbooks]]\nname = \"undo\"\nsteps = [{{ undo = true }}, {{ resolve = \"rolled-back\" }}]\n",
            db.url(),
            dir.path().display()
        );
        (enc, tail)
    };
    let (enc, tail) = render(&wrong);
    let pgm = Pgmedic::custom(Backend::Local, "", &enc, "", &tail);
    pgm.snapshot("app");
    migrate::deploy(&db, dir.path(), "20250601000000_broken", "").unwrap_err();
    let report = pgm.run(&["diagnose", "--json"]).json();
    let why = report[0]["baseline_why"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("it is encrypted and cannot decrypt"), "the wrong key is said: {report:#}");
    let daemon = Daemon::start(&pgm);

    let (enc, tail) = render(&right);
    pgm.write_config(&pgm.render(Backend::Local, "", &enc, "", &tail));
    let reload = daemon.request(r#"{"cmd":"reload"}"#);
    assert_eq!(reload["ok"], true, "{reload:#}");
    let report = pgm.run(&["diagnose", "--json"]).json();
    assert!(report[0]["baseline_snapshot"].is_string(), "diagnose reads the encrypted baseline: {report:#}");
    let reply = daemon.request(r#"{"cmd":"repair","db":"app"}"#);
    let rec = &reply["runs"][0];
    assert_eq!(rec["outcome"], "succeeded", "{reply:#}");
    assert_eq!(db.sql("SELECT to_regclass('\"Extra\"') IS NULL"), "t", "undone");
}

/// An encrypted snapshot's manifest is plaintext: the migrations table's logs (which quote
/// what the server said and the statement that failed) are left out of it, and it says so.
#[test]
fn an_encrypted_snapshots_manifest_leaves_the_migration_logs_out() {
    let db = common::prisma::p3009();
    let keys = tempfile::tempdir().unwrap();
    let (_, recipient) = keygen(keys.path(), "host.key");
    let pgm = config(&db, &[&recipient], None);
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let text =
        std::fs::read_to_string(pgm.snapshots_dir().join("app").join(&id).join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["migrations"]["logs_omitted"], true, "{m:#}");
    assert!(!text.contains("No such table"), "no log text in the plaintext manifest: {text}");
    assert!(m["migrations"]["rows"].as_array().unwrap().iter().all(|r| r["logs"].is_null()), "{m:#}");

    let plain = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let id = plain.snapshot("app")["id"].as_str().unwrap().to_string();
    let text =
        std::fs::read_to_string(plain.snapshots_dir().join("app").join(&id).join("manifest.json")).unwrap();
    assert!(text.contains("No such table"), "an unencrypted one keeps them");
}
