"""The benchmark's databases: psql, the realistic `pgmedic_bench` (built once and kept) and the
many tiny `pgmedic_many_NNN` ones for the daemon part."""
import os
import subprocess
import sys

from .settings import DB, MANY, MANY_PREFIX, PG, ROWS


def psql(sql, db="postgres"):
    # On stdin, not -c: -c would run every statement in one transaction, which VACUUM refuses.
    out = subprocess.run(["psql", *PG, "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1"],
                         input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench: psql on {db} failed: {out.stderr.strip()}")
    return out.stdout.strip()


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


def many_names():
    return [f"{MANY_PREFIX}{i:03d}" for i in range(MANY)]


def ensure_many_databases(names):
    """Creates the tiny databases that do not exist yet (kept for later runs)."""
    have = set(psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{MANY_PREFIX}%'").split())
    missing = [n for n in names if n not in have]
    if not missing:
        return
    print(f"creating {len(missing)} small databases {MANY_PREFIX}NNN (once; kept for later runs) ...", flush=True)
    table = ("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text NOT NULL, added timestamptz NOT NULL);\n"
             "INSERT INTO items SELECT i, 'item ' || i, now() FROM generate_series(1, 100) i ON CONFLICT DO NOTHING;\n")
    psql("".join(f"CREATE DATABASE {n};\n\\connect {n}\n{table}\\connect postgres\n" for n in missing))
