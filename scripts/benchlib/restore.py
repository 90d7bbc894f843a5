"""Part 2, restores: pgmedic restore --create from local storage and from S3 against createdb &&
pg_restore, each into a fresh database that is checked and dropped after every run."""
import os
import subprocess
import sys

from .database import psql
from .measure import Command
from .settings import BIN, DB, PG, RESTORE_DB, ROWS
from .storage import latest_snapshot


def drop_restore_db():
    psql(f"DROP DATABASE IF EXISTS {RESTORE_DB} WITH (FORCE)")


def check_and_drop():
    """Each restore must have brought the data back; then the database goes."""
    got = psql("SELECT n FROM bench_meta", RESTORE_DB)
    if got != str(ROWS):
        sys.exit(f"bench: the restored database holds bench_meta.n = {got!r}, expected {ROWS}")
    drop_restore_db()


def restore_commands(tmp, cfgs):
    dump = f"{tmp}/plain.dump"
    if not os.path.exists(dump):
        subprocess.run(["pg_dump", *PG, "-d", DB, "-Fc", "-Z0", "-f", dump], check=True)
    local_id, s3_id = latest_snapshot(cfgs["local"])["id"], latest_snapshot(cfgs["s3"])["id"]
    pg = " ".join(PG)
    plain = f"createdb {pg} {RESTORE_DB} && pg_restore {pg} -d {RESTORE_DB}"

    def cmd(key, label, c):
        # createdb and CREATE DATABASE run in a session on `postgres`
        return Command(key, label, c, (RESTORE_DB, "postgres"), before=drop_restore_db, after=check_and_drop)

    def restore(backend, snapshot_id):
        return [BIN, "--config", str(cfgs[backend]), "restore", snapshot_id, "--target", RESTORE_DB, "--create"]

    return [
        cmd("pg_restore", "createdb && pg_restore  (baseline)", f"{plain} {dump}"),
        cmd("pg_restore_1", "the same, --single-transaction", f"{plain} --single-transaction {dump}"),
        cmd("pgmedic_restore_local", "pgmedic restore ← local", restore("local", local_id)),
        cmd("pgmedic_restore_s3", "pgmedic restore ← S3 (moto)", restore("s3", s3_id)),
    ]
