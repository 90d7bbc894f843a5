"""Part 3, many databases under the daemon: pgmedic's daemon with many tiny databases on a
nightly schedule catches up on all of them at start; a sampler watches its pg_dump children and
its RSS, and the snapshots each database got are counted at the end."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .database import ensure_many_databases, many_names
from .measure import descendants, processes, read_cmdline, status_kib
from .settings import BIN, ENV, MANY_MAX_CONCURRENT, MANY_TIMEOUT, PG_URL, SAMPLE_EVERY


def many_config(tmp, names):
    """The daemon's configuration, and whether the binary accepted snapshot.max_concurrent."""
    head = (f'[daemon]\nsocket = "{tmp}/many.sock"\nstate_dir = "{tmp}/many-state"\n'
            f'[storage]\nbackend = "local"\npath = "{tmp}/many-snapshots"\n')
    dbs = "".join(f'[[databases]]\nname = "{n}"\nurl = "{PG_URL}/{n}"\nschedule = "0 0 3 * * *"\n' for n in names)
    path = Path(tmp) / "many.toml"
    path.write_text(f"{head}[snapshot]\nmax_concurrent = {MANY_MAX_CONCURRENT}\n{dbs}")
    check = subprocess.run([BIN, "--config", str(path), "check-config"], env=ENV, capture_output=True, text=True)
    if check.returncode == 0:
        return path, True
    if "unknown field `max_concurrent`" not in check.stderr:
        sys.exit(f"bench: the many-databases configuration is refused: {check.stderr.strip()}")
    path.write_text(head + dbs)
    return path, False


class DaemonWatch:
    """What a sampler sees of a running daemon: its pg_dump children and its RSS."""

    def __init__(self, pid):
        self.pid = pid
        self.max_dumps = self.max_clients = self.max_rss_kib = self.samples = 0
        self.dump_pids = set()
        self.cmdlines = {}

    def sample(self):
        table = processes()
        tree = descendants(self.pid, table)
        # Zombies have ended. A dump is a pg_dump given --format=custom: not the version checks
        # (pgmedic's `pg_dump --version`, pg_dumpall's `pg_dump -V`), nor an exiting process
        # whose command line is already gone.
        clients = [p for p in tree if table[p][1] in ("pg_dump", "pg_dumpall") and table[p][2] != "Z"]
        dumps = [p for p in clients if table[p][1] == "pg_dump" and b"--format=custom" in self.cmdline(p)]
        self.dump_pids.update(dumps)
        self.max_dumps = max(self.max_dumps, len(dumps))
        self.max_clients = max(self.max_clients, len(clients))
        self.max_rss_kib = max(self.max_rss_kib, status_kib(self.pid, "VmRSS") or 0)
        self.samples += 1
        return len(dumps)

    def cmdline(self, pid):
        if not self.cmdlines.get(pid):
            self.cmdlines[pid] = read_cmdline(pid)
        return self.cmdlines[pid]


def manifests(snapdir):
    """database → number of complete snapshots (a manifest.json each)."""
    counts = {}
    for m in Path(snapdir).glob("*/*/manifest.json"):
        counts[m.parent.parent.name] = counts.get(m.parent.parent.name, 0) + 1
    return counts


def watch_daemon(pid, snapdir, n, started):
    """Samples until every database has a snapshot, the daemon stops making progress for 15 s,
    it exits, or the time limit passes. Returns the watch and why it stopped."""
    watch, last_progress, done = DaemonWatch(pid), time.monotonic(), 0
    while True:
        tick = time.monotonic()
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):  # left a zombie for stop_daemon
            return watch, "the daemon exited by itself"
        if watch.sample():
            last_progress = tick
        if watch.samples % 10 == 0:
            now_done = len(manifests(snapdir))
            if now_done > done:
                done, last_progress = now_done, tick
            if done >= n:
                return watch, "every database has a snapshot"
        if tick - last_progress > 15:
            return watch, f"stalled: {done} of {n} databases have a snapshot, no pg_dump for 15 s"
        if tick - started > MANY_TIMEOUT:
            return watch, f"time limit ({MANY_TIMEOUT:.0f} s) reached"
        time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - tick)))


def stop_daemon(proc, timeout=90):
    """SIGTERM, then the daemon's rusage (its whole tree) once it has exited."""
    os.kill(proc.pid, signal.SIGTERM)  # a zombie takes the signal harmlessly
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        time.sleep(0.05)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def run_daemon(cfg, snapdir, n, log):
    """Starts the daemon, watches it until done, stops it. Returns (watch, why it stopped, VmHWM
    in KiB, the tree's rusage, the start's wall-clock time, exit code)."""
    with open(log, "w") as logf:
        wall0, started = time.time(), time.monotonic()
        proc = subprocess.Popen([BIN, "--config", str(cfg), "daemon"], env=dict(ENV, PGMEDIC_LOG="info"),
                                stdout=subprocess.DEVNULL, stderr=logf)
        try:
            watch, why = watch_daemon(proc.pid, snapdir, n, started)
            hwm = status_kib(proc.pid, "VmHWM")
        finally:
            usage = stop_daemon(proc)
    return watch, why, hwm, usage, wall0, proc.returncode


def many(tmp):
    names = many_names()
    ensure_many_databases(names)
    cfg, gated = many_config(tmp, names)
    snapdir, log = f"{tmp}/many-snapshots", Path(tmp) / "many-daemon.log"
    print(f"  many: pgmedic daemon with {len(names)} databases ...", flush=True)
    watch, why, hwm, usage, wall0, code = run_daemon(cfg, snapdir, len(names), log)
    counts = manifests(snapdir)
    mtimes = [m.stat().st_mtime for m in Path(snapdir).glob("*/*/manifest.json")]
    failures = [line for line in log.read_text(errors="replace").splitlines() if "snapshot failed" in line]
    return {
        "databases": len(names),
        "max_concurrent_configured": MANY_MAX_CONCURRENT if gated else None,
        "max_concurrent_key_accepted": gated,
        "stopped_because": why,
        "seconds_to_last_snapshot": (max(mtimes) - wall0) if mtimes else None,
        "seconds_to_first_snapshot": (min(mtimes) - wall0) if mtimes else None,
        "snapshotted": len(counts),
        "snapshotted_exactly_once": sum(1 for c in counts.values() if c == 1),
        "snapshotted_more_than_once": sum(1 for c in counts.values() if c > 1),
        "failed_snapshots_logged": len(failures),
        "first_failure": failures[0][-400:] if failures else None,
        "max_pg_dump_at_once": watch.max_dumps,
        "max_pg_client_tools_at_once": watch.max_clients,
        "pg_dump_processes_seen": len(watch.dump_pids),
        "samples": watch.samples,
        "daemon_vmhwm_kib": hwm,
        "daemon_max_sampled_vmrss_kib": watch.max_rss_kib,
        "daemon_tree_ru_maxrss_kib": usage.ru_maxrss,
        "daemon_tree_cpu_s": usage.ru_utime + usage.ru_stime,
        "daemon_exit_code": code,
    }
