"""The report: the tables per part, the many-databases summary, the targets with PASS/FAIL, the
note on how it was measured, and the JSON copy of every figure."""
import json
import os
import statistics

from .settings import JSON_OUT, MANY_MAX_CONCURRENT, MIB, ROUNDS, ROWS, SAMPLE_EVERY


def mib(kib):
    return f"{kib / MIB:.0f} MiB"


def rss_text(r):
    return f"<{mib(r['rss_floor_kib'])}" if r["peak_rss_below_floor"] else mib(r["peak_rss_kib"])


def paired(r, base, what="wall_s"):
    """The median of the per-round ratios to `base`: each round's command against the same round's
    base, run moments apart, so a slow spell of the machine (seen here: the same command 5.3 s in
    one round and 7.2 s in another) cancels out instead of landing in one median but not the other."""
    return statistics.median(a[what] / b[what] for a, b in zip(r["samples"], base["samples"]))


def print_table(title, results, bases):
    """One line per command: median wall, its ratio to each base, the median of its per-round
    ratios to the first base (paired), median CPU and its paired ratio to the first base, the CPU
    of the PostgreSQL backends and of the S3 server, how busy the machine was, peak RSS. `bases`
    maps a command's key to its column heading."""
    first = next(iter(bases))
    heads = "".join(f"{h:>8}" for h in bases.values()) + f"{'paired':>8}"
    print(f"\n{title}\n{'command':50} {'wall s':>7}{heads} {'CPU s':>7}{'paired':>8} {'PG CPU':>7} {'S3 CPU':>7}"
          f" {'busy':>5}  peak RSS")
    for r in results.values():
        ratios = "".join(f"{r['wall_s'] / results[b]['wall_s']:7.2f}x" for b in bases)
        ratios += f"{paired(r, results[first]):7.2f}x"
        cpu_ratio = paired(r, results[first], "cpu_s")
        print(f"{r['label']:50} {r['wall_s']:7.2f}{ratios} {r['cpu_s']:7.2f}{cpu_ratio:7.2f}x"
              f" {cpu_text(r['pg_backend_cpu_s'])} {cpu_text(r['s3_server_cpu_s'])} {r['machine_busy']:5.0%}"
              f"  {rss_text(r)}")


def cpu_text(seconds):
    return f"{'?' if seconds is None else '-' if seconds < 0.005 else f'{seconds:.2f}':>7}"


def target(name, value, limit, unit="x"):
    return {"target": name, "value": value, "limit": limit, "unit": unit, "pass": value is not None and value <= limit}


def snapshot_targets(s):
    z, out = s["zstd"], []
    for key, limit, where in (("pgmedic_local", 1.0, "local"), ("pgmedic_s3", 1.1, "S3")):
        for what in ("wall", "cpu"):
            out.append(target(f"snapshot → {where}: {what.replace('cpu', 'CPU')} ≤ {limit:.2f}× the zstd pipeline (paired)",
                              paired(s[key], z, f"{what}_s"), limit))
        out.append(target(f"snapshot → {where}: peak RSS ≤ 64 MiB", s[key]["peak_rss_kib"] / MIB, 64, " MiB"))
    if "pgmedic_local_age" in s:
        out.append(target("snapshot → local, age-encrypted: wall ≤ 1.05× unencrypted (paired)",
                          paired(s["pgmedic_local_age"], s["pgmedic_local"]), 1.05))
    return out


def restore_targets(r):
    out = []
    for key, where in (("pgmedic_restore_local", "local"), ("pgmedic_restore_s3", "S3")):
        out.append(target(f"restore ← {where}: wall ≤ 1.00× pg_restore (paired)", paired(r[key], r["pg_restore"]), 1.0))
        out.append(target(f"restore ← {where}: peak RSS ≤ 64 MiB", r[key]["peak_rss_kib"] / MIB, 64, " MiB"))
    return out


def many_targets(m):
    limit = m["max_concurrent_configured"] or MANY_MAX_CONCURRENT
    return [
        target(f"many: pg_dump at once ≤ max_concurrent ({limit})", m["max_pg_dump_at_once"], limit, ""),
        target("many: daemon peak RSS (VmHWM) ≤ 128 MiB", (m["daemon_vmhwm_kib"] or 0) / MIB, 128, " MiB"),
        target(f"many: every database snapshotted exactly once (of {m['databases']})",
               m["databases"] - m["snapshotted_exactly_once"], 0, " missed or repeated"),
    ]


def print_many(m):
    gate = (f"max_concurrent = {m['max_concurrent_configured']}" if m["max_concurrent_key_accepted"]
            else "max_concurrent NOT accepted by this binary: omitted from the config")
    secs = lambda v: "?" if v is None else f"{v:.1f} s"
    lines = [
        f"many databases: {m['databases']} tiny databases on a nightly schedule, caught up at daemon start ({gate})",
        f"stopped: {m['stopped_because']}",
        f"snapshots: {m['snapshotted']} databases, {m['snapshotted_exactly_once']} exactly once, "
        f"{m['snapshotted_more_than_once']} more than once; {m['failed_snapshots_logged']} failures logged",
        f"time from daemon start: first snapshot {secs(m['seconds_to_first_snapshot'])}, "
        f"last {secs(m['seconds_to_last_snapshot'])}",
        f"pg_dump at once, max (sampled every {SAMPLE_EVERY * 1000:.0f} ms, {m['samples']} samples): "
        f"{m['max_pg_dump_at_once']}; dumping pg_dump processes seen: {m['pg_dump_processes_seen']}",
        f"pg_dump and pg_dumpall processes at once, version checks included: {m['max_pg_client_tools_at_once']}",
        f"daemon RSS: VmHWM {mib(m['daemon_vmhwm_kib'] or 0)}, "
        f"max sampled VmRSS {mib(m['daemon_max_sampled_vmrss_kib'])}; "
        f"CPU of the daemon's tree {m['daemon_tree_cpu_s']:.1f} s",
    ]
    if m["first_failure"]:
        lines.append(f"first failure: {m['first_failure']}")
    print("\n" + "\n  ".join(lines))


def diagnose_targets(results):
    d = results["diagnose"]
    starts = sorted(results.get("diagnose_cluster_start_ms") or [])
    start = starts[len(starts) // 2] / 1000 if starts else None
    return [
        target("diagnose (300 tables, 40 statements, cluster start included): wall ≤ 5 s",
               d["pgmedic_diagnose"]["wall_s"], 5.0, " s"),
        target("diagnose: pgmedic's scratch cluster start ≤ 2 s", start, 2.0, " s"),
    ]


def rehearse_targets(results):
    r = results["rehearse"]
    ratio = paired(r["rehearse_ephemeral"], r["rehearse_source"])
    return [target("rehearse on the ephemeral server: wall ≤ 1.2x the source server's (paired)", ratio, 1.2, "x")]


def print_targets(targets):
    print("\ntargets")
    for t in targets:
        digits = 2 if t["unit"] in ("x", " s") else 0
        value = "n/a" if t["value"] is None else f"{t['value']:.{digits}f}{t['unit']}"
        print(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:62} {value}")


def print_method():
    print(f"""
how: every command ran {ROUNDS}x, interleaved (each round every command once, each round starting one further on), all in this run;
  wall and CPU are the medians; 'paired' is the median of each round's ratio to the first base (the
  targets use it: the machine's speed drifts between rounds, and a round's commands run moments apart). CPU = user+sys of the command's whole process tree (wait4's rusage of the
  child and every descendant it reaped). PostgreSQL backends and the S3 server are outside that tree:
  'PG CPU' is the CPU of the backends serving the command's database (sampled from /proc every 50 ms),
  'S3 CPU' that of moto. busy = (CPU + PG CPU + S3 CPU) / ({os.cpu_count()} cores x wall): near 100% the command is
  bound by this machine's cores, and only doing less work makes it faster; well below, something waits.
  Peak RSS = ru_maxrss, the largest single process of the tree, max over rounds.""")


def report(results):
    targets = []
    d = results.get("dump")
    if d:
        line = (f"\ndatabase: {ROWS:,} events; raw dump {d['raw_bytes'] / 2**20:.0f} MiB, pgmedic stored "
                f"{d['pgmedic_stored_bytes'] / 2**20:.1f} MiB (zstd {d['raw_bytes'] / d['pgmedic_stored_bytes']:.2f}x)")
        if "zstd_cli_bytes" in d:
            line += f", zstd -3 -T0 CLI {d['zstd_cli_bytes'] / 2**20:.1f} MiB"
        print(f"{line}; {os.cpu_count()} cores")
    if "snapshot" in results:
        print_table(f"snapshot ({ROUNDS} rounds interleaved, medians)", results["snapshot"],
                    {"zstd": "×zstd", "limit": "×limit"})
        targets += snapshot_targets(results["snapshot"])
    if "restore" in results:
        print_table(f"restore ({ROUNDS} rounds interleaved, medians)", results["restore"], {"pg_restore": "×base"})
        targets += restore_targets(results["restore"])
    if "many" in results:
        print_many(results["many"])
        targets += many_targets(results["many"])
    if "diagnose" in results:
        print_table(f"diagnose ({ROUNDS} rounds interleaved, medians)", results["diagnose"], {"shell_cluster": "×base"})
        starts = results.get("diagnose_cluster_start_ms") or []
        print(f"pgmedic's scratch cluster start, each round: {', '.join(f'{m / 1000:.2f} s' for m in starts)}")
        targets += diagnose_targets(results)
    if "rehearse" in results:
        print_table(f"rehearse ({ROUNDS} rounds interleaved, medians)", results["rehearse"], {"rehearse_source": "×source"})
        targets += rehearse_targets(results)
    if "repair" in results:
        from .repair import SIZES, repair_targets
        for size in SIZES:
            part = {k: v for k, v in results["repair"].items() if k.endswith(f"_{size}")}
            print_table(f"repair, {size} ({ROUNDS} rounds interleaved, medians)", part, {f"sql_{size}": "×SQL"})
        targets += repair_targets(results["repair"])
    if any(p in results for p in ("snapshot", "restore", "diagnose", "rehearse", "repair")):
        print_method()
        orphans = sum(r["orphans_reaped"] for part in ("snapshot", "restore") for r in results.get(part, {}).values())
        print(f"orphaned descendants reaped by the bench (their CPU added): {orphans}")
    print_targets(targets)
    results["targets"] = targets
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults: {JSON_OUT}")
