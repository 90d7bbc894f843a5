//! Failures leave nothing that looks complete: no snapshot listed, no multipart upload left
//! behind, no damaged data restored, no non-empty database overwritten.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// A login role that cannot read one table, so pg_dump itself fails.
struct LimitedRole {
    name: String,
}

impl LimitedRole {
    fn new(db: &TestDb) -> LimitedRole {
        let name = unique("pgm_limited");
        psql("postgres", &format!("CREATE ROLE {name} LOGIN"));
        db.sql("CREATE TABLE secret(x int); INSERT INTO secret VALUES (1); REVOKE ALL ON secret FROM PUBLIC");
        LimitedRole { name }
    }
}

impl Drop for LimitedRole {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-h", PG_HOST, "-U", "postgres", "-d", "postgres", "-Xqc"])
            .arg(format!("DROP ROLE IF EXISTS {}", self.name))
            .output();
    }
}

fn pg_dump_failure(backend: Backend) {
    let db = TestDb::new("denied");
    let role = LimitedRole::new(&db);
    let url = format!("postgresql://{}@{PG_HOST}:{PG_PORT}/{}", role.name, db.name);
    let pgm = Pgmedic::new(backend, &[("app", &url)], "", "");
    let run = pgm.run(&["snapshot", "--db", "app"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("pg_dump failed"), "{run:?}");
    assert!(run.stderr.contains("permission denied for table secret"), "pg_dump's stderr is kept: {run:?}");
    assert!(pgm.snapshot_ids().is_empty(), "a failed snapshot must not be listed");
    drop(db);
}

#[test]
fn pg_dump_failure_leaves_nothing_local() {
    pg_dump_failure(Backend::Local);
}

#[test]
fn pg_dump_failure_leaves_nothing_s3() {
    let s3 = S3Server::start();
    pg_dump_failure(Backend::S3(&s3));
    assert_eq!(s3.uploads(), 0, "the multipart upload was aborted");
    assert!(
        !s3.keys().iter().any(|k| k.ends_with("dump.zst") || k.ends_with("manifest.json")),
        "{:?}",
        s3.keys()
    );
}

#[test]
fn s3_server_stopped_mid_upload() {
    let s3 = S3Server::start();
    let db = TestDb::new("stop");
    fill_random(&db, 4); // compresses below one part: pg_dump can finish while S3 is frozen
    let gated = GatedTools::new();
    let pgm =
        Pgmedic::new(Backend::S3(&s3), &[("app", &db.url())], "timeout = \"1s\"\n", &gated.snapshot_extra());
    let child = pgm
        .command(&["snapshot", "--db", "app"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the multipart upload to start", Duration::from_secs(60), || s3.uploads() == 1);
    unsafe { libc::kill(s3.pid(), libc::SIGSTOP) };
    gated.open(); // pg_dump ends now: the last part and the completion meet a frozen server
    let out = child.wait_with_output().unwrap();
    unsafe { libc::kill(s3.pid(), libc::SIGCONT) };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("storage s3://"), "the error names the storage: {stderr}");
    assert!(pgm.snapshot_ids().is_empty(), "nothing listed after a failed upload");

    // The next snapshot of the database clears whatever upload the failure could not abort.
    assert_next_snapshot_cleans(&pgm);
    assert_eq!(s3.uploads(), 0);
}

/// A snapshot with the real tools succeeds and is the only one listed.
fn assert_next_snapshot_cleans(pgm: &Pgmedic) {
    let (key, dir) = real_bin_dir();
    let run = pgm.run_env(&["snapshot", "--db", "app"], &[(key, &dir)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(pgm.snapshot_ids().len(), 1);
}

/// Starts a snapshot in its own process group, waits for `in_flight`, and SIGKILLs the group.
fn kill_mid_upload(pgm: &Pgmedic, in_flight: impl FnMut() -> bool) {
    let mut child = pgm
        .command(&["snapshot", "--db", "app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_for("the upload to be in flight", Duration::from_secs(60), in_flight);
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    child.wait().unwrap();
}

#[test]
fn killed_mid_upload_s3() {
    let s3 = S3Server::start();
    let db = TestDb::new("kill");
    fill_random(&db, 40); // zstd hands over whole jobs (~8 MiB in): enough for parts before the gate
    let gated = GatedTools::new();
    let pgm =
        Pgmedic::new(Backend::S3(&s3), &[("app", &db.url())], "part_size_mib = 5\n", &gated.snapshot_extra());
    kill_mid_upload(&pgm, || s3.parts() >= 1);
    assert!(pgm.snapshot_ids().is_empty());
    assert_eq!(s3.uploads(), 1, "the killed process left its upload open");

    assert_next_snapshot_cleans(&pgm);
    assert_eq!(s3.uploads(), 0, "the next snapshot aborted the orphaned upload");
}

fn temp_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in files_under(dir) {
        if entry.file_name().unwrap().to_string_lossy().contains(".pgmedic-tmp-") {
            found.push(entry);
        }
    }
    found
}

#[test]
fn killed_mid_upload_local() {
    let db = TestDb::new("kill_local");
    fill_random(&db, 24);
    let gated = GatedTools::new();
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", &gated.snapshot_extra());
    let dir = pgm.snapshots_dir();
    kill_mid_upload(&pgm, || {
        temp_files(&dir).iter().any(|f| f.metadata().map(|m| m.len() > 0).unwrap_or(false))
    });
    assert!(pgm.snapshot_ids().is_empty());
    assert_eq!(temp_files(&dir).len(), 1, "the killed process left its partial file");

    assert_next_snapshot_cleans(&pgm);
    assert!(temp_files(&dir).is_empty(), "the next snapshot removed the partial file");
    // The killed pgmedic's pg_dump wrappers (their own process group) do not wait for ever.
    wait_for("the killed run's pg_dump wrappers to end", std::time::Duration::from_secs(10), || {
        gated.waiting() == 0
    });
}

#[test]
fn flipped_byte_fails_verify_and_restore() {
    let src = TestDb::new("flip");
    fill_random(&src, 2);
    let pgm = Pgmedic::new(Backend::Local, &[("app", &src.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    assert_eq!(pgm.run(&["verify", &id]).code, 0, "intact before the flip");

    let object = pgm.snapshots_dir().join("app").join(&id).join("dump.zst");
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&object, bytes).unwrap();

    let run = pgm.run(&["verify", &id]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(&id) && run.stderr.contains("does not match its manifest"), "{run:?}");

    // A new target is dropped again; an existing one keeps every row, even with --clean.
    let fresh = TestDb::reserved("flip_new");
    let run = pgm.run(&["restore", &id, "--target", &fresh.name, "--create"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!fresh.exists(), "the database this restore created was dropped");

    let existing = TestDb::new("flip_old");
    existing.sql("CREATE TABLE keep(x int); INSERT INTO keep SELECT generate_series(1, 10)");
    let run = pgm.run(&["restore", &id, "--target", &existing.name, "--clean", "--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("does not match its manifest"), "{run:?}");
    assert_eq!(
        existing.sql("SELECT count(*) FROM keep"),
        "10",
        "nothing of the damaged snapshot was committed"
    );
    assert_eq!(existing.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'filler'"), "0");
}

#[test]
fn non_empty_target_is_refused_without_clean() {
    let src = TestDb::new("full");
    src.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1), (2)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &src.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    src.sql("INSERT INTO t VALUES (3)");

    let run = pgm.run(&["restore", &id, "--target", &src.name]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("not empty") && run.stderr.contains("public.t") && run.stderr.contains("--clean"),
        "{run:?}"
    );
    assert_eq!(src.sql("SELECT count(*) FROM t"), "3", "a refused restore changes nothing");

    let run = pgm.run(&["restore", &id, "--target", &src.name, "--clean"]);
    assert_eq!(run.code, 3, "--clean without --yes from a script is refused: {run:?}");
    assert_eq!(src.sql("SELECT count(*) FROM t"), "3");

    let run = pgm.run(&["restore", &id, "--target", &src.name, "--clean", "--yes"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(src.sql("SELECT count(*) FROM t"), "2", "--clean put back the snapshot's rows");

    let missing = TestDb::reserved("missing");
    let run = pgm.run(&["restore", &id, "--target", &missing.name]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("does not exist") && run.stderr.contains("--create"), "{run:?}");
}

#[test]
fn a_dump_that_never_got_its_manifest_is_removed_by_the_next_snapshot() {
    let db = TestDb::new("orphan");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let complete = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    // What a process killed between storing the dump and writing the manifest leaves behind.
    let orphan = pgm.snapshots_dir().join("app/20200101T000000Z-manual-0rphan");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("dump.zst"), b"half a snapshot").unwrap();
    assert_eq!(pgm.snapshot_ids(), vec![complete.clone()], "an orphan is never listed");
    pgm.snapshot("app");
    assert!(!orphan.exists(), "the next snapshot of the database removed it");
    assert!(pgm.snapshot_ids().contains(&complete), "complete snapshots stay");
}

#[test]
fn a_missing_owner_role_fails_cleanly_and_no_owner_restores() {
    let db = TestDb::new("owner");
    let role = unique("pgm_owner");
    psql("postgres", &format!("CREATE ROLE {role}"));
    db.sql(&format!("CREATE TABLE t(x int); INSERT INTO t VALUES (1), (2); ALTER TABLE t OWNER TO {role}"));
    let pgm = Pgmedic::new(Backend::Local, &[("app", &db.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    // The snapshot's owner does not exist where we restore (as on a new cluster).
    db.sql(&format!("DROP TABLE t; DROP ROLE {role}"));

    let target = TestDb::reserved("owner_dst");
    let run = pgm.run(&["restore", &id, "--target", &target.name, "--create"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!("role \"{role}\" does not exist")),
        "pg_restore's reason is shown: {run:?}"
    );
    assert!(!target.exists(), "the database this restore created was dropped");

    let run = pgm.run(&["restore", &id, "--target", &target.name, "--create", "--no-owner"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(target.sql("SELECT count(*) FROM t"), "2");
    assert_eq!(target.sql("SELECT tableowner FROM pg_tables WHERE tablename = 't'"), "postgres");
}

/// A database holding no table but a view, a function or a type is not empty: the restore is
/// refused without --clean (with --jobs too, which would otherwise commit beside them).
#[test]
fn a_target_with_only_views_or_functions_is_not_empty() {
    let src = TestDb::new("objsrc");
    src.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &src.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    for (what, sql, named) in [
        ("a view", "CREATE VIEW report AS SELECT 1 AS one", "view public.report"),
        ("a function", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "function public.f"),
        ("a type", "CREATE TYPE mood AS ENUM ('ok')", "type public.mood"),
    ] {
        let target = TestDb::new("objdst");
        target.sql(sql);
        for jobs in ["1", "2"] {
            let run = pgm.run(&["restore", &id, "--target", &target.name, "--jobs", jobs]);
            assert_eq!(run.code, 3, "{what}, --jobs {jobs}: {run:?}");
            assert!(run.stderr.contains("not empty") && run.stderr.contains(named), "{what}: {}", run.stderr);
            assert_eq!(target.sql("SELECT to_regclass('public.t') IS NULL"), "t", "{what}: nothing restored");
        }
    }
}

/// `restore --jobs` decompresses into the state directory; a restore killed outright cannot
/// remove its file, so the next one does: a dead pid's file goes, a live one's stays.
#[test]
fn a_killed_parallel_restores_temporary_dump_is_removed_by_the_next() {
    let src = TestDb::new("jobsrc");
    src.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let pgm = Pgmedic::new(Backend::Local, &[("app", &src.url())], "", "");
    let id = pgm.snapshot("app")["id"].as_str().unwrap().to_string();
    let state = pgm.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let killed = state.join(format!("restore-{dead}-{id}-x1.dump"));
    let running = state.join(format!("restore-{}-{id}-x2.dump", std::process::id()));
    for f in [&killed, &running] {
        std::fs::write(f, b"the whole database, decrypted").unwrap();
    }
    let target = TestDb::reserved("jobdst");
    let run = pgm.run(&["restore", &id, "--target", &target.name, "--create", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!killed.exists(), "the killed restore's dump was removed");
    assert!(running.exists(), "a live restore's is not touched");
    let dumps: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("restore-") && n.ends_with(".dump"))
        .collect();
    assert_eq!(
        dumps,
        [running.file_name().unwrap().to_string_lossy().into_owned()],
        "its own file went with it"
    );
}
