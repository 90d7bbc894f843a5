//! What a dead pgmedic left in `scratch.dir`: a `cluster-<pid>-<hex>` folder whose pid is gone.
//! Its server died with it (the parent-death signal); anything still running from that data
//! folder is killed, its System V shared memory segment removed, and the folder deleted.

use std::path::Path;

/// The pid of the pgmedic that made `name` (`cluster-<pid>-<hex>`).
fn maker(name: &str) -> Option<i32> {
    name.strip_prefix("cluster-")?.split('-').next()?.parse().ok()
}

/// Removes every cluster folder under `dir` whose maker is dead; returns how many.
pub fn leftovers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = maker(&name) else { continue };
        if crate::process::alive(pid) && pid != 0 {
            continue;
        }
        let root = e.path();
        stop_postmaster(&root.join("data"));
        super::cluster::remove(&root);
        tracing::info!(path = %root.display(), "removed a scratch cluster left by a pgmedic that died");
        removed += 1;
    }
    removed
}

/// postmaster.pid: line 1 the postmaster's pid, line 7 `<shm key> <shm id>`.
fn stop_postmaster(data: &Path) {
    let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else { return };
    let lines: Vec<&str> = text.lines().collect();
    if let Some(pid) = lines.first().and_then(|l| l.trim().parse::<i32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy());
        if crate::process::alive(pid) && ours {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let mut shm = lines.get(6).map(|l| l.split_whitespace()).into_iter().flatten();
    let (Some(key), Some(id)) = (shm.next(), shm.next()) else { return };
    let (Ok(key), Ok(id)) = (key.parse::<i32>(), id.parse::<i32>()) else { return };
    // Only the very segment the file names (same key: ids are reused after a reboot), and only
    // once nothing is attached to it.
    let mut stat: libc::shmid_ds = unsafe { std::mem::zeroed() };
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut stat) } == 0
        && stat.shm_perm.__key == key
        && stat.shm_nattch == 0
    {
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}
