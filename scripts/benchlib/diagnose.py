"""Part 4, diagnose: `pgmedic diagnose --json` of a failed 40-statement migration on a 300-table
schema, its whole cost (the ephemeral scratch cluster's start, the baseline schema loaded, the
replay statement by statement, the finish and undo proven on copies, the live catalog read), next
to the shell's own start of a throw-away cluster (initdb, pg_ctl start, pg_ctl stop), measured
in the same rounds. pgmedic's own cluster start is read from its debug log."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .database import psql
from .measure import Command
from .settings import BIN, ENV, PG, PG_URL

DIAG_DB = "pgmedic_bench_diagnose"
TABLES = 300
FAILED = "20250601000000_wide"
PG_BIN = Path("/usr/lib/postgresql") / "15" / "bin"


def schema_sql():
    out = []
    for i in range(TABLES):
        fk = f', "parent" INTEGER REFERENCES "t{i - 1:03}"("id")' if i else ""
        out.append(f'CREATE TABLE "t{i:03}" ("id" SERIAL PRIMARY KEY, "name" TEXT NOT NULL, "note" VARCHAR(200), '
                   f'"amount" NUMERIC(12,2) DEFAULT 0, "created" TIMESTAMPTZ NOT NULL DEFAULT now(){fk});')
        out.append(f'CREATE INDEX "t{i:03}_name_idx" ON "t{i:03}"("name");')
    return "\n".join(out)


def migration_sql():
    """40 statements: 15 columns, 10 indexes, 5 tables, 5 foreign keys, 5 defaults."""
    s = [f'ALTER TABLE "t{i:03}" ADD COLUMN "extra" TEXT;' for i in range(15)]
    s += [f'CREATE INDEX "t{i:03}_extra_idx" ON "t{i:03}"("extra");' for i in range(10)]
    s += [f'CREATE TABLE "n{j}" ("id" SERIAL PRIMARY KEY, "t" INTEGER NOT NULL);' for j in range(5)]
    s += [f'ALTER TABLE "n{j}" ADD CONSTRAINT "n{j}_t_fkey" FOREIGN KEY ("t") REFERENCES "t{j:03}"("id");' for j in range(5)]
    s += [f'ALTER TABLE "t{i:03}" ALTER COLUMN "note" SET DEFAULT \'none\';' for i in range(100, 105)]
    return "\n".join(s) + "\n"


PRISMA = ('CREATE TABLE "_prisma_migrations" ("id" VARCHAR(36) PRIMARY KEY NOT NULL, "checksum" VARCHAR(64) NOT NULL, '
          '"finished_at" TIMESTAMPTZ, "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, "rolled_back_at" TIMESTAMPTZ, '
          '"started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), "applied_steps_count" INTEGER NOT NULL DEFAULT 0);')


def setup(tmp):
    """The database at its baseline, a snapshot of it (untimed), then the migration failed at
    statement 26 after 25 ran; returns the configuration."""
    base = Path(tmp) / "diagnose"
    if base.exists():
        shutil.rmtree(base)
    (base / "migrations" / FAILED).mkdir(parents=True)
    os.chmod(tmp, 0o711)
    os.chmod(base, 0o711)  # as root the scratch server runs as postgres, which must reach scratch.dir
    text = migration_sql()
    (base / "migrations" / FAILED / "migration.sql").write_text(text)
    psql(f"DROP DATABASE IF EXISTS {DIAG_DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DIAG_DB}")
    subprocess.run(["psql", *PG, "-d", DIAG_DB, "-Xq", "-v", "ON_ERROR_STOP=1"], input=schema_sql() + PRISMA,
                   text=True, check=True)
    cfg = base / "pgmedic.toml"
    cfg.write_text(f'[daemon]\nsocket = "{base}/pgmedic.sock"\nstate_dir = "{base}/state"\n'
                   f'[storage]\nbackend = "local"\npath = "{base}/snapshots"\n[scratch]\ndir = "{base}/scratch"\n'
                   f'[[databases]]\nname = "bench"\nurl = "{PG_URL}/{DIAG_DB}"\n'
                   f'[databases.migrations]\ndir = "{base}/migrations"\n')
    out = subprocess.run([BIN, "--config", str(cfg), "snapshot", "--db", "bench"], env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench: the baseline snapshot failed: {out.stderr.strip()}")
    ran = "\n".join(text.splitlines()[:25])
    log = "Migration name: x\n\nDatabase error code: 55P03\n\nDatabase error:\nERROR: canceling statement due to lock timeout\n"
    psql(f"{ran} INSERT INTO _prisma_migrations (id, checksum, migration_name, logs, started_at) "
         f"VALUES ('bench', 'c', '{FAILED}', $l${log}$l$, clock_timestamp())", DIAG_DB)
    return cfg


class ClusterStarts:
    """pgmedic's own scratch cluster start, from each run's debug line."""

    def __init__(self, log):
        self.log, self.ms = log, []

    def collect(self):
        text = Path(self.log).read_text(errors="replace")
        found = re.findall(r"scratch cluster started.*?elapsed_ms=(\d+)", text)
        if not found:
            sys.exit(f"bench: no 'scratch cluster started' line in pgmedic's log:\n{text[-2000:]}")
        self.ms.extend(int(x) for x in found)


def shell_cluster(tmp):
    """initdb + pg_ctl start + pg_ctl stop, as the server user (root may not run it)."""
    base = Path(tmp) / "shell"
    data, sock = base / "data", base / "sock"
    sock.mkdir(parents=True, exist_ok=True)
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    script = (f"rm -rf {data} && mkdir -p {sock} && {PG_BIN}/initdb -D {data} -U postgres -A trust --no-sync "
              f"-E UTF8 --locale=C --no-instructions >/dev/null && {PG_BIN}/pg_ctl -D {data} -w -s "
              f"-o \"-c listen_addresses= -k {sock} -c fsync=off\" start >/dev/null && "
              f"{PG_BIN}/pg_ctl -D {data} -s -m immediate stop && rm -rf {data}")
    if as_user:
        for d in (base, sock):
            shutil.chown(d, "postgres")
        return " ".join(as_user) + f" sh -c '{script}'"
    return script


def diagnose_commands(tmp):
    cfg = setup(tmp)
    log = f"{tmp}/diagnose.log"
    starts = ClusterStarts(log)
    check = lambda: check_report(cfg)
    run = f"PGMEDIC_LOG=pgmedic::scratch=debug {BIN} --config {cfg} diagnose --json > {tmp}/diagnose.json 2> {log}"
    cmds = [
        Command("shell_cluster", "initdb + pg_ctl start + stop  (baseline)", shell_cluster(tmp), ("postgres",)),
        Command("pgmedic_diagnose", "pgmedic diagnose (300 tables, 40 statements)", run, (DIAG_DB,),
                after=lambda: (starts.collect(), check())),
    ]
    return cmds, starts


def check_report(cfg):
    """Each run must have proven the stopping point (a benchmark of a refusal proves nothing)."""
    import json
    out = Path(cfg).parent.parent / "diagnose.json"
    r = json.loads(out.read_text())[0]
    if r.get("proof") != "replay" or r.get("stopped_after") != 25 or not r["playbooks"]["finish"].get("sql"):
        sys.exit(f"bench: diagnose did not prove the stopping point: proof={r.get('proof')} "
                 f"stopped_after={r.get('stopped_after')} finish={r['playbooks']['finish'].get('why')}")
