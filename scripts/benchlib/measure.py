"""Measuring one command: run it with os.wait4's rusage of its whole process tree, this script as
a child subreaper so escaped descendants are reaped and counted, the CPU of the PostgreSQL
backends and of the S3 server sampled from /proc, rounds interleaved, medians."""
import ctypes
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .database import psql
from .settings import ENV, ROUNDS, TICK

# ---------------------------------------------------------------------------------------------
# /proc


def proc_stat(pid):
    """(comm, fields after comm) of /proc/<pid>/stat; None when the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)  # raw reads: the sampler scans /proc every 20 ms
        try:
            text = os.read(fd, 4096).decode(errors="replace")
        finally:
            os.close(fd)
    except OSError:
        return None
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()


def processes():
    """pid → (ppid, comm, state) of every process on the machine."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_stat(name)):
            table[int(name)] = (int(stat[1][1]), stat[0], stat[1][0])
    return table


def read_cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def descendants(pid, table):
    kids = {}
    for p, (ppid, *_) in table.items():
        kids.setdefault(ppid, []).append(p)
    found, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid):
    """utime+stime of a process, all its threads; None when it is gone."""
    stat = proc_stat(pid)
    if stat is None:
        return None
    return (int(stat[1][11]) + int(stat[1][12])) / TICK  # fields 14 and 15, counted from after comm


def status_kib(pid, key):
    """VmRSS, VmHWM, ... of /proc/<pid>/status, in KiB; None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def become_subreaper():
    """Orphaned descendants are re-parented to us rather than to init, so their CPU is not lost."""
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Measuring one command


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    rss_kib: int
    rss_floor_kib: int
    pg_backend_cpu_s: float | None
    s3_server_cpu_s: float | None
    orphans: int


@dataclass
class Command:
    key: str
    label: str
    cmd: list | str  # a string runs through sh -c
    databases: tuple  # whose PostgreSQL backends count as this command's
    before: Callable | None = None  # untimed, before each run
    after: Callable | None = None  # untimed, after each run
    samples: list = field(default_factory=list)


class Backends(threading.Thread):
    """The CPU of the PostgreSQL backends that serve `databases` and start while it runs, sampled
    from /proc every 50 ms (a backend's last < 50 ms are missed). Only backends: the other
    processes of the cluster, autovacuum workers and anyone else's sessions are left out."""

    def __init__(self, server, databases):
        super().__init__(daemon=True)
        self.server, self.databases = server, set(databases)
        self.seen = set(os.listdir("/proc"))
        self.cpu = {}  # pid → utime+stime at the last sample
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.05):
            self.sample()

    def stop(self):
        self.done.set()
        self.join()
        self.sample()
        return sum(self.cpu.values())

    def sample(self):
        for pid in os.listdir("/proc"):
            if pid.isdigit() and pid not in self.seen and (ours := self.serves_us(pid)) is not None:
                self.seen.add(pid)
                if ours:
                    self.cpu[pid] = 0.0
        for pid in self.cpu:
            self.cpu[pid] = cpu_seconds(pid) or self.cpu[pid]

    def serves_us(self, pid):
        """True or False once the process has its backend title, None while it cannot tell."""
        stat = proc_stat(pid)
        if stat is None or int(stat[1][1]) != self.server.postmaster:
            return False
        title = read_cmdline(pid).decode(errors="replace").replace("\0", " ")
        if not title.startswith(self.server.title_prefix):
            return None  # just forked: still the postmaster's command line
        words = title[len(self.server.title_prefix):].split()
        if len(words) < 2:  # user, database, client, activity
            return False
        return any(words[1] == d or (d.endswith("*") and words[1].startswith(d[:-1])) for d in self.databases)


class Server:
    """Where the PostgreSQL server's processes are, if they are visible from here."""

    def __init__(self):
        checkpointer = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        stat = proc_stat(checkpointer) if checkpointer else None
        self.postmaster = int(stat[1][1]) if stat else None
        cluster = psql("SHOW cluster_name")
        self.title_prefix = f"postgres: {cluster}: " if cluster else "postgres: "


class Meter:
    """Runs commands and measures them, with the server-side CPU the tree's rusage cannot see."""

    def __init__(self):
        self.server = Server()
        self.s3_pid = None
        self.keep = set()  # our long-lived children (the S3 server), never reaped as orphans

    def run(self, c: Command) -> Sample:
        backends = Backends(self.server, c.databases) if self.server.postmaster else None
        s30 = self.s3_cpu()
        floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with tempfile.TemporaryFile() as err:
            if backends:
                backends.start()
            start = time.monotonic()
            proc = subprocess.Popen(c.cmd, shell=isinstance(c.cmd, str), env=ENV, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - start
            pg_cpu = backends.stop() if backends else None
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                err.seek(0)
                sys.exit(f"bench: {c.label} failed (exit {proc.returncode}): {err.read().decode()[-2000:]}")
        orphans = self.reap_orphans()
        cpu = usage.ru_utime + usage.ru_stime + sum(u.ru_utime + u.ru_stime for u in orphans)
        rss = max([usage.ru_maxrss] + [u.ru_maxrss for u in orphans])
        s3_cpu = None if s30 is None else self.s3_cpu() - s30
        return Sample(wall, cpu, rss, floor, pg_cpu, s3_cpu, len(orphans))

    def s3_cpu(self):
        return cpu_seconds(self.s3_pid) if self.s3_pid else None

    def reap_orphans(self, timeout=5.0):
        """Descendants that outlived their parent were re-parented to us: wait for them."""
        usages, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [p for p, (ppid, *_) in processes().items() if ppid == os.getpid() and p not in self.keep]
            if not mine:
                break
            for pid in mine:
                try:
                    done, _, usage = os.wait4(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if done:
                    usages.append(usage)
            time.sleep(0.01)
        return usages


def run_rounds(meter, commands, title):
    """Runs every command ROUNDS times, interleaved, each round starting one command further on
    (A B C, B C A, C A B, ...): no command always runs right after the same neighbour (a cleanup,
    a burst of writeback), and each takes every place in the round alike."""
    for r in range(ROUNDS):
        shift = r % len(commands)
        for c in commands[shift:] + commands[:shift]:
            print(f"  {title} round {r + 1}/{ROUNDS}: {c.label} ...", end="", flush=True)
            if c.before:
                c.before()
            sample = meter.run(c)
            if c.after:
                c.after()
            c.samples.append(sample)
            print(f" {sample.wall_s:.2f} s, CPU {sample.cpu_s:.2f} s", flush=True)


def summary(c: Command):
    s = c.samples
    pg = [x.pg_backend_cpu_s for x in s if x.pg_backend_cpu_s is not None]
    s3 = [x.s3_server_cpu_s for x in s if x.s3_server_cpu_s is not None]
    rss = max(x.rss_kib for x in s)
    floor = max(x.rss_floor_kib for x in s)
    busy = [(x.cpu_s + (x.pg_backend_cpu_s or 0) + (x.s3_server_cpu_s or 0)) / (os.cpu_count() * x.wall_s) for x in s]
    return {
        "label": c.label,
        "command": c.cmd if isinstance(c.cmd, str) else " ".join(c.cmd),
        "wall_s": statistics.median(x.wall_s for x in s),
        "cpu_s": statistics.median(x.cpu_s for x in s),
        "peak_rss_kib": rss,
        "peak_rss_below_floor": rss <= floor,
        "rss_floor_kib": floor,
        "pg_backend_cpu_s": statistics.median(pg) if pg else None,
        "s3_server_cpu_s": statistics.median(s3) if s3 else None,
        "machine_busy": statistics.median(busy),
        "orphans_reaped": sum(x.orphans for x in s),
        "samples": [asdict(x) for x in s],
    }
