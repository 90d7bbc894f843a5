"""Part 6, repair: time to repair as the database grows. Three databases (about 100 MB, 700 MB and
2 GB of rows, built once and kept as pgmedic_bench_repair_<size>), each with a failed Prisma
migration. For each, interleaved: the repair's own SQL run by psql (the floor), `pgmedic repair`
with a playbook `{ resolve = "rolled-back" }` and its scoped pre-repair snapshot (the default), the
same with repair.snapshot = "full", and `pgmedic snapshot` (a full snapshot alone). Before every
run the failed row is put back (untimed) and after it the snapshots are deleted (untimed).
Target: the scoped repair within 0.5 s of the SQL's own time at every size."""
import shutil
from pathlib import Path

from .database import psql
from .measure import Command
from .settings import BIN, PG, PG_URL

# Rows of ~300 bytes (text that compresses about as real rows do).
SIZES = {"100mb": 330_000, "700mb": 2_300_000, "2gb": 8_000_000}
FAILED = "20260101000000_add_thing"
RESOLVE = f"UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = '{FAILED}' AND finished_at IS NULL AND rolled_back_at IS NULL"
RESET = f"UPDATE _prisma_migrations SET rolled_back_at = NULL WHERE migration_name = '{FAILED}'"


def db_name(size):
    return f"pgmedic_bench_repair_{size}"


def build(size, rows):
    name = db_name(size)
    if psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1":
        if psql("SELECT to_regclass('public.bench_meta') IS NOT NULL", name) == "t" and psql("SELECT n FROM bench_meta", name) == str(rows):
            return
    print(f"building {name} with {rows:,} rows (once; kept for later runs) ...", flush=True)
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(f"CREATE DATABASE {name}")
    psql(f"""
        CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, placed_at timestamptz NOT NULL,
                             status text NOT NULL, lines jsonb NOT NULL, note text);
        INSERT INTO orders
        SELECT i, i % 50000, TIMESTAMPTZ '2024-01-01' + i * INTERVAL '7 seconds',
               (ARRAY['new','paid','shipped','returned'])[1 + i % 4],
               jsonb_build_object('sku', 'SKU-' || (i % 9000), 'qty', 1 + i % 5, 'price', (i % 10000) / 100.0,
                                  'trace', md5(i::text) || md5((i * 7)::text)),
               CASE WHEN i % 2 = 0 THEN 'gift wrap, deliver after 5pm, call before #' || i ELSE NULL END
        FROM generate_series(1, {rows}) i;
        CREATE TABLE "_prisma_migrations" (
            "id" VARCHAR(36) PRIMARY KEY NOT NULL, "checksum" VARCHAR(64) NOT NULL, "finished_at" TIMESTAMPTZ,
            "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, "rolled_back_at" TIMESTAMPTZ,
            "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), "applied_steps_count" INTEGER NOT NULL DEFAULT 0);
        INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, logs, started_at, applied_steps_count)
        VALUES ('00000000-0000-4000-8000-000000000001', repeat('a', 64), now(), '20250101000000_init', '', now(), 1),
               ('00000000-0000-4000-8000-000000000002', repeat('b', 64), NULL, '{FAILED}',
                'Database error code: 42P01', now(), 0);
        CREATE TABLE bench_meta (n bigint); INSERT INTO bench_meta VALUES ({rows});
        VACUUM ANALYZE;""", name)


def config(tmp, size, snapshot):
    base = Path(tmp) / "repair" / size / snapshot
    base.mkdir(parents=True, exist_ok=True)
    cfg = base / "pgmedic.toml"
    cfg.write_text(f'[daemon]\nsocket = "{base}/pgmedic.sock"\nstate_dir = "{base}/state"\n'
                   f'[storage]\nbackend = "local"\npath = "{base}/snapshots"\n'
                   f'[repair]\nsnapshot = "{snapshot}"\n'
                   f'[[databases]]\nname = "app"\nurl = "{PG_URL}/{db_name(size)}"\n'
                   f'[databases.migrations]\ntool = "prisma"\n'
                   f'[[playbooks]]\nname = "back"\nsteps = [ {{ resolve = "rolled-back" }} ]\n')
    return cfg, base / "snapshots"


def repair_commands(tmp):
    cmds = []
    for size, rows in SIZES.items():
        build(size, rows)
        name = db_name(size)
        reset = lambda name=name: psql(RESET, name)
        sql = f"psql {' '.join(PG)} -d {name} -XAtq -v ON_ERROR_STOP=1 -c \"{RESOLVE}\" > /dev/null"
        cmds.append(Command(f"sql_{size}", f"{size}: the resolve's SQL by psql  (floor)", sql, (name,), before=reset))
        for snapshot in ("auto", "full"):
            cfg, snaps = config(tmp, size, snapshot)
            clean = lambda snaps=snaps: shutil.rmtree(snaps, ignore_errors=True)
            run = f"{BIN} --config {cfg} repair --json > /dev/null"
            label = f"{size}: pgmedic repair, " + ("scoped snapshot" if snapshot == "auto" else 'repair.snapshot = "full"')
            cmds.append(Command(f"repair_{snapshot}_{size}", label, run, (name,), before=reset, after=clean))
        cfg, snaps = config(tmp, size, "full")
        run = f"{BIN} --config {cfg} snapshot --db app > /dev/null"
        cmds.append(Command(f"snapshot_{size}", f"{size}: pgmedic snapshot (full)", run, (name,),
                            after=lambda snaps=snaps: shutil.rmtree(snaps, ignore_errors=True)))
    return cmds


def repair_targets(r):
    from .report import target
    out = []
    for size in SIZES:
        extra = r[f"repair_auto_{size}"]["wall_s"] - r[f"sql_{size}"]["wall_s"]
        out.append(target(f"repair {size}: scoped repair's wall - the SQL's own ≤ 0.5 s", extra, 0.5, " s"))
    return out
