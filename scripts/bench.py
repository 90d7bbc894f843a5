"""pgmedic's benchmark: every figure is measured in this one run, so the ratios hold on a noisy
machine where absolute times do not. Run through scripts/bench."""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/pgmedic"
DB = "pgmedic_bench"
ROWS = int(os.environ.get("PGMEDIC_BENCH_ROWS", "3000000"))
PG = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
           AWS_EC2_METADATA_DISABLED="true", PGMEDIC_LOG="warn")


def psql(sql, db="postgres"):
    # On stdin, not -c: -c would run every statement in one transaction, which VACUUM refuses.
    out = subprocess.run(["psql", *PG, "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1"],
                         input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench: psql on {db} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def timed(label, cmd, shell=False):
    """Runs cmd; returns (seconds, peak RSS in KiB of the process tree's largest process)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, shell=shell, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    err = proc.stderr.read().decode()
    if status != 0:
        sys.exit(f"bench: {label} failed (status {status}): {err}")
    return elapsed, usage.ru_maxrss


def build_database():
    exists = psql(f"SELECT count(*) FROM pg_database WHERE datname = '{DB}'") == "1"
    if exists and os.environ.get("PGMEDIC_BENCH_REBUILD") != "1":
        complete = psql("SELECT to_regclass('public.bench_meta') IS NOT NULL", DB) == "t"
        if complete and psql("SELECT n FROM bench_meta", DB) == str(ROWS):
            return
    print(f"building {DB} with {ROWS:,} events (once; kept for later runs) ...", flush=True)
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB}")
    users = max(ROWS // 20, 1000)
    psql(f"""
        CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, name text NOT NULL,
                            created_at timestamptz NOT NULL, settings jsonb NOT NULL);
        INSERT INTO users
        SELECT i, 'user' || i || '@example.' || (ARRAY['com','org','net','io'])[1 + i % 4],
               initcap((ARRAY['anna','bert','chen','dana','emil','fatima','gus','hana'])[1 + i % 8]) || ' ' ||
               initcap(substr(md5(i::text), 1, 3 + i % 7)),
               TIMESTAMPTZ '2020-01-01' + i * INTERVAL '17 minutes',
               jsonb_build_object('theme', (ARRAY['dark','light'])[1 + i % 2], 'lang', (ARRAY['en','de','fr','ja','pt'])[1 + i % 5],
                                  'beta', i % 11 = 0, 'quota', i % 1000)
        FROM generate_series(1, {users}) i;
        CREATE TABLE events (id bigserial PRIMARY KEY, user_id int NOT NULL REFERENCES users(id),
                             kind text NOT NULL, happened_at timestamptz NOT NULL, payload jsonb NOT NULL, note text);
        INSERT INTO events (user_id, kind, happened_at, payload, note)
        SELECT 1 + (i::bigint * 7919) % {users},
               (ARRAY['login','logout','purchase','refund','view','search','share','upload'])[1 + (i * 31) % 8],
               TIMESTAMPTZ '2024-01-01' + i * INTERVAL '3 seconds' + (i % 997) * INTERVAL '1 millisecond',
               jsonb_build_object('ip', '10.' || (i % 255) || '.' || ((i / 255) % 255) || '.' || (i % 7),
                                  'amount', round((random() * 500)::numeric, 2), 'sku', 'SKU-' || (i % 50000),
                                  'ua', (ARRAY['Mozilla/5.0 (X11; Linux x86_64)','Mozilla/5.0 (Macintosh)','curl/8.4.0'])[1 + i % 3],
                                  'trace', md5(random()::text)),
               CASE WHEN i % 3 = 0 THEN NULL
                    ELSE (ARRAY['first visit','returning customer asked about shipping','bulk order, invoice requested',
                                'flagged by fraud check, cleared','coupon SPRING applied'])[1 + i % 5] || ' #' || i END
        FROM generate_series(1, {ROWS}) i;
        CREATE INDEX events_user_time ON events (user_id, happened_at);
        CREATE TABLE bench_meta (n bigint); INSERT INTO bench_meta VALUES ({ROWS});
        VACUUM ANALYZE;""", DB)


def start_s3():
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/s3_server.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = proc.stdout.readline().strip().split("=")[1]
    endpoint = f"http://127.0.0.1:{port}"
    subprocess.run([sys.executable, "-m", "awscli", "--endpoint-url", endpoint, "s3", "mb", "s3://bench"],
                   check=True, env=ENV, capture_output=True)
    return proc, endpoint


def config(tmp, backend, endpoint):
    storage = (f'backend = "s3"\nbucket = "bench"\nendpoint = "{endpoint}"\nforce_path_style = true\n'
               if backend == "s3" else f'backend = "local"\npath = "{tmp}/snapshots"\n')
    path = Path(tmp) / f"{backend}.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp}/state"\n[storage]\n{storage}\n'
                    f'[[databases]]\nname = "bench"\nurl = "postgresql://postgres@127.0.0.1:5432/{DB}"\n')
    return path


def snapshot_id(cfg):
    out = subprocess.run([str(BIN), "--config", str(cfg), "snapshots", "--json"], env=ENV, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)[-1]


def main():
    build_database()
    s3, endpoint = start_s3()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pgmedic-bench-") as tmp:
        s3cfg, localcfg = config(tmp, "s3", endpoint), config(tmp, "local", endpoint)
        dump = f"{tmp}/plain.dump"
        limit, _ = timed("pg_dump limit", ["pg_dump", *PG, "-d", DB, "-Fc", "-Z0"])
        pipeline, _ = timed("pg_dump | aws s3 cp", f"pg_dump {' '.join(PG)} -d {DB} -Fc | {sys.executable} -m awscli "
                            f"--endpoint-url {endpoint} s3 cp - s3://bench/shell/dump.pgc", shell=True)
        snap_s3, rss_s3 = timed("pgmedic snapshot (s3)", [str(BIN), "--config", str(s3cfg), "snapshot"])
        snap_local, rss_local = timed("pgmedic snapshot (local)", [str(BIN), "--config", str(localcfg), "snapshot"])
        m = snapshot_id(s3cfg)
        subprocess.run(["pg_dump", *PG, "-d", DB, "-Fc", "-Z0", "-f", dump], check=True)
        for name in ("bench_r1", "bench_r2", "bench_r3"):
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        psql("CREATE DATABASE bench_r1")
        plain_restore, _ = timed("pg_restore", ["pg_restore", *PG, "-d", "bench_r1", dump])
        restore_s3, rss_restore = timed("pgmedic restore (s3)", [str(BIN), "--config", str(s3cfg), "restore", m["id"],
                                                                 "--target", "bench_r2", "--create"])
        lm = snapshot_id(localcfg)
        restore_local, _ = timed("pgmedic restore (local)", [str(BIN), "--config", str(localcfg), "restore", lm["id"],
                                                             "--target", "bench_r3", "--create"])
        for name in ("bench_r1", "bench_r2", "bench_r3"):
            psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    s3.kill()

    mib = lambda kib: f"{kib / 1024:.0f} MiB"
    print(f"\ndatabase: {ROWS:,} events; raw dump {m['raw_bytes'] / 2**20:.0f} MiB, stored {m['stored_bytes'] / 2**20:.0f} MiB"
          f" (zstd {m['raw_bytes'] / m['stored_bytes']:.2f}x); {os.cpu_count()} cores\n")
    print(f"{'measurement':44} {'seconds':>8} {'ratio':>7}  peak RSS")
    lines = [
        ("pg_dump -Fc -Z0 > /dev/null  (the limit)", limit, limit, ""),
        ("pg_dump -Fc | aws s3 cp -    (shell pipeline)", pipeline, limit, ""),
        ("pgmedic snapshot → S3 (moto)", snap_s3, limit, mib(rss_s3)),
        ("pgmedic snapshot → local", snap_local, limit, mib(rss_local)),
        ("pg_restore from local -Z0 dump  (baseline)", plain_restore, plain_restore, ""),
        ("pgmedic restore ← S3 (moto)", restore_s3, plain_restore, mib(rss_restore)),
        ("pgmedic restore ← local", restore_local, plain_restore, ""),
    ]
    for label, secs, base, rss in lines:
        print(f"{label:44} {secs:8.2f} {secs / base:6.2f}x  {rss}")
    print("\ntargets: snapshot ≤ 1.15x the limit, peak RSS ≤ 64 MiB; restore ≤ 1.2x pg_restore."
          "\npeak RSS is the largest process of the command's tree (pgmedic or the pg_dump it runs).")


if __name__ == "__main__":
    main()
