"""pgmedic's benchmark: pgmedic against the shell commands it replaces, every figure measured in
this one run on this machine, so the ratios hold where absolute times do not. Run it through
scripts/bench, which builds the release binary and the Python environment first:

    scripts/bench                    # snapshot, restore, many, diagnose and rehearse (the default)
    scripts/bench many               # one part alone (also PGMEDIC_BENCH_ONLY=many); parts combine

What it measures
  snapshot  pg_dump -Fc -Z0 > /dev/null             the limit: pg_dump (and its backend) alone
            pg_dump -Fc -Z0 | zstd -3 -T0 > file    the yardstick: the same compression as pgmedic,
                                                    as fast as this machine allows
            pg_dump -Fc | aws s3 cp -               the usual shell pipeline to S3 (PGMEDIC_BENCH_AWS=0 skips it)
            pgmedic snapshot → local, → S3 (moto)
  restore   createdb && pg_restore of a local -Fc -Z0 dump      the baseline
            the same with --single-transaction, which is how pgmedic restores
            pgmedic restore --create ← local, ← S3    (every restore into a fresh database, dropped after)
  many      pgmedic daemon with 100 tiny databases on a nightly schedule: at start it catches up on
            every one of them. Sampled every 20 ms from /proc: the pg_dump processes under the
            daemon and its VmRSS; at the end its VmHWM and how many snapshots each database got.
  diagnose  initdb + pg_ctl start + stop of a throw-away cluster   the baseline: a cluster's start alone
            pgmedic diagnose --json of a failed 40-statement migration on a 300-table schema: its
            ephemeral cluster started, the baseline loaded, the replay, finish and undo proven;
            pgmedic's own cluster start read from its debug log (median of every round)
  rehearse  pgmedic rehearse of the bench database with scratch.server = "source"   the baseline
            the same on pgmedic's ephemeral scratch server (its start, the restore, the deploy)
  repair    for databases of about 100 MB, 700 MB and 2 GB (built once, kept): the resolve's own
            UPDATE by psql (the floor), pgmedic repair { resolve = "rolled-back" } with its scoped
            pre-repair snapshot, the same with repair.snapshot = "full", and a full pgmedic snapshot

How
  Every command runs PGMEDIC_BENCH_ROUNDS times (default 3), interleaved, each round starting one
  command further on (round 1: A B C D, round 2: B C D A, ...), so a slow spell of the machine hits
  every command alike and none always follows the same neighbour. Reported per command: the median
  wall time; the median of its per-round ratios to the part's base ("paired": each round's command
  against the same round's base, which the targets use); the median CPU seconds, user + sys of the whole process tree (os.wait4's
  rusage covers the child and every descendant it reaped: sh reaps both sides of a pipe, pgmedic
  the pg_dump it spawns; this script is a child subreaper, so a descendant that escaped reaping
  would come back here, be added, and be counted as an orphan); and the max peak RSS, ru_maxrss,
  which is the largest single process of the tree, not their sum. The PostgreSQL backends'
  CPU is in neither figure (they are the postmaster's children): it is reported apart as "PG CPU",
  the utime+stime of the backends serving the command's database, sampled from /proc every 50 ms
  while it runs (other sessions and autovacuum are left out; a backend's last < 50 ms are
  missed). The S3 server's (moto's) CPU is outside the tree too: "S3 CPU", from its /proc/<pid>/stat.

  A child's ru_maxrss starts at its parent's peak (Linux carries the high-water mark of the
  forking process over exec), so nothing below this script's own peak (~15-18 MiB) can be seen:
  such values print as "<N MiB".

Settings (environment): PGMEDIC_BENCH_ROWS (3,000,000 events in `pgmedic_bench`; another size
gets its own `pgmedic_bench_<rows>`), PGMEDIC_BENCH_ROUNDS (3),
PGMEDIC_BENCH_REBUILD=1 (rebuild the database), PGMEDIC_BENCH_AWS=0, PGMEDIC_BENCH_OTHER=<path to
another pgmedic binary> (its snapshots to local and S3 join the snapshot part's rounds: an A/B), PGMEDIC_BENCH_MANY (100
databases), PGMEDIC_BENCH_MANY_TIMEOUT (600 s), PGMEDIC_BENCH_JSON (target/bench-results.json).
"""
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

from benchlib.database import build_database
from benchlib.diagnose import diagnose_commands
from benchlib.rehearse import rehearse_commands
from benchlib.repair import repair_commands
from benchlib.many import many
from benchlib.measure import Meter, become_subreaper, run_rounds, summary
from benchlib.report import report
from benchlib.restore import restore_commands
from benchlib.settings import BIN, PARTS, ROOT, ROUNDS, ROWS
from benchlib.snapshot import snapshot_commands
from benchlib.storage import config, latest_snapshot, start_s3


def parts_wanted(argv):
    wanted = argv or [p for p in os.environ.get("PGMEDIC_BENCH_ONLY", "").replace(",", " ").split()] or list(PARTS)
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        sys.exit(f"bench: unknown part {' '.join(unknown)}; choose from {' '.join(PARTS)}")
    return wanted


def machine():
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    version = lambda *c: subprocess.run(c, capture_output=True, text=True).stdout.strip().splitlines()[0]
    return {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "git": rev.stdout.strip() + ("+dirty" if dirty else ""),
        "binary_built_at": datetime.fromtimestamp(os.path.getmtime(BIN), timezone.utc).isoformat(timespec="seconds"),
        "pg_dump": version("pg_dump", "--version"),
        "zstd": version("zstd", "--version"),
        "rows": ROWS,
        "rounds": ROUNDS,
    }


def bench_snapshot_restore(parts, meter, tmp, results):
    build_database()
    s3, endpoint = start_s3(meter)
    try:
        cfgs = {b: config(tmp, b, endpoint) for b in ("local", "s3", "local_age")}
        sizes = {}
        if "snapshot" in parts:
            cmds = snapshot_commands(tmp, cfgs, endpoint, sizes)
            run_rounds(meter, cmds, "snapshot")
            results["snapshot"] = {c.key: summary(c) for c in cmds}
        m = latest_snapshot(cfgs["local"])
        results["dump"] = {"raw_bytes": m["raw_bytes"], "pgmedic_stored_bytes": m["stored_bytes"], **sizes}
        if "restore" in parts:
            cmds = restore_commands(tmp, cfgs)
            run_rounds(meter, cmds, "restore")
            results["restore"] = {c.key: summary(c) for c in cmds}
    finally:
        s3.stdin.close()
        s3.kill()
        s3.wait()


def main():
    parts = parts_wanted(sys.argv[1:])
    become_subreaper()
    results = {"machine": machine()}
    meter = Meter()
    with tempfile.TemporaryDirectory(prefix="pgmedic-bench-") as tmp:
        if "snapshot" in parts or "restore" in parts:
            bench_snapshot_restore(parts, meter, tmp, results)
        if "many" in parts:
            results["many"] = many(tmp)
        if "diagnose" in parts:
            cmds, starts = diagnose_commands(tmp)
            run_rounds(meter, cmds, "diagnose")
            results["diagnose"] = {c.key: summary(c) for c in cmds}
            results["diagnose_cluster_start_ms"] = starts.ms
        if "rehearse" in parts:
            cmds = rehearse_commands(tmp)
            run_rounds(meter, cmds, "rehearse")
            results["rehearse"] = {c.key: summary(c) for c in cmds}
        if "repair" in parts:
            cmds = repair_commands(tmp)
            run_rounds(meter, cmds, "repair")
            results["repair"] = {c.key: summary(c) for c in cmds}
    report(results)


if __name__ == "__main__":
    main()
