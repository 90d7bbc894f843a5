//! pgmedic's ephemeral scratch server, with the real initdb and postgres: one cluster per use,
//! a unix socket in a 0700 folder and no TCP listener, nothing left after it closes or after
//! its pgmedic is killed with SIGKILL (the next start removes the leftovers), as root (the
//! server then runs as `postgres`) and as an ordinary user, PostgreSQL 15 and 18, and a clear
//! error when the host has no server binaries of the major needed.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_for;
use pgmedic::scratch::Server;

fn traversable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(e) => e.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

async fn one_value(server: &Server, sql: &str) -> String {
    let session = pgmedic::pg::connect(server.admin()).await.unwrap();
    session.client().query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_cluster_listens_on_a_private_socket_only_and_leaves_nothing_when_closed() {
    let dir = traversable_tempdir();
    let scratch = dir.path().join("scratch");
    let server = Server::ephemeral(&scratch, dir.path(), &[], 15).await.unwrap();
    assert_eq!(server.label(), "ephemeral");
    assert_eq!(one_value(&server, "SHOW listen_addresses").await, "", "no TCP listener");
    assert_eq!(one_value(&server, "SELECT current_setting('server_version_num')").await[..2], *"15");
    assert_eq!(one_value(&server, "SHOW fsync").await, "off");
    let clusters = entries(&scratch);
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    let socket = scratch.join(&clusters[0]).join("socket");
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o700);
    server.close().await;
    assert_eq!(entries(&scratch), Vec::<String>::new(), "removed when done");
}

#[tokio::test]
async fn postgresql_18_from_its_own_binaries() {
    let bin = PathBuf::from(std::env::var("PGMEDIC_TEST_PG18_BIN").expect("run with scripts/test"));
    let dir = traversable_tempdir();
    let server = Server::ephemeral(&dir.path().join("s"), dir.path(), &[bin], 18).await.unwrap();
    assert_eq!(one_value(&server, "SELECT current_setting('server_version_num')").await[..2], *"18");
    server.close().await;
}

#[tokio::test]
async fn no_server_binaries_of_the_major_is_a_clear_error() {
    let dir = traversable_tempdir();
    let err = Server::ephemeral(&dir.path().join("s"), dir.path(), &[], 11).await.err().unwrap().to_string();
    for part in [
        "no PostgreSQL 11 server binaries",
        "/usr/lib/postgresql/11/bin (absent)",
        "scratch.server = \"source\"",
        "the URL of another PostgreSQL 11 server",
    ] {
        assert!(err.contains(part), "{part:?} in: {err}");
    }
    assert!(entries(&dir.path().join("s")).is_empty(), "nothing made");
}

/// The child of the next test: holds a cluster under `PGMEDIC_TEST_HOLD` until killed.
#[tokio::test]
#[ignore = "run by a_killed_pgmedic_leaves_no_server_and_its_leftovers_go_at_the_next_start"]
async fn holds_a_cluster_until_killed() {
    let Ok(dir) = std::env::var("PGMEDIC_TEST_HOLD") else { return };
    let dir = PathBuf::from(dir);
    let server = Server::ephemeral(&dir.join("scratch"), &dir, &[], 15).await.unwrap();
    let pid = one_value(&server, "SELECT pg_postmaster_start_time()::text").await;
    println!("READY {pid}");
    tokio::time::sleep(Duration::from_secs(600)).await;
    server.close().await;
}

fn postmaster_of(scratch: &Path) -> i32 {
    let cluster = entries(scratch).pop().expect("a cluster folder");
    let text = std::fs::read_to_string(scratch.join(cluster).join("data/postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

fn killed_child_leaves_nothing(dir: &Path, as_user: Option<(u32, u32)>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "holds_a_cluster_until_killed", "--ignored", "--nocapture"])
        .env("PGMEDIC_TEST_HOLD", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some((uid, gid)) = as_user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().starts_with("READY")), "the child started its cluster");
    let scratch = dir.join("scratch");
    let postmaster = postmaster_of(&scratch);
    assert!(alive(postmaster));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    wait_for("the server to die with its pgmedic", Duration::from_secs(30), || !alive(postmaster));
    assert_eq!(entries(&scratch).len(), 1, "the dead pgmedic's folder is still there");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let server = Server::ephemeral(&scratch, dir, &[], 15).await.unwrap();
        assert_eq!(entries(&scratch).len(), 1, "the leftover was removed at this start");
        server.close().await;
    });
    assert!(entries(&scratch).is_empty());
}

#[test]
fn a_killed_pgmedic_leaves_no_server_and_its_leftovers_go_at_the_next_start() {
    let dir = traversable_tempdir();
    killed_child_leaves_nothing(dir.path(), None);
}

/// The same as an ordinary user (`postgres`, the only other user here), in its own folder.
#[test]
fn as_an_ordinary_user_too() {
    if unsafe { libc::geteuid() } != 0 {
        let dir = traversable_tempdir();
        return killed_child_leaves_nothing(dir.path(), None);
    }
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(!pw.is_null(), "a postgres user");
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    let dir = traversable_tempdir();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    killed_child_leaves_nothing(dir.path(), Some((uid, gid)));
}

/// A start that fails before the server runs (initdb refuses here) leaves no cluster folder
/// behind: the running pgmedic would never sweep its own.
#[tokio::test]
async fn a_failed_initdb_leaves_no_folder() {
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = |body: &str| format!("#!/bin/sh\n{body}\n");
    std::fs::write(bin.path().join("postgres"), script("echo 'postgres (PostgreSQL) 15.99'")).unwrap();
    std::fs::write(bin.path().join("initdb"), script("echo 'initdb: error: the disk is full' >&2; exit 1"))
        .unwrap();
    for tool in ["postgres", "initdb"] {
        std::fs::set_permissions(bin.path().join(tool), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dir = traversable_tempdir();
    let scratch = dir.path().join("scratch");
    let err = Server::ephemeral(&scratch, dir.path(), &[bin.path().to_path_buf()], 15)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("the disk is full"), "{err}");
    assert_eq!(entries(&scratch), Vec::<String>::new(), "nothing left in scratch.dir");
}
