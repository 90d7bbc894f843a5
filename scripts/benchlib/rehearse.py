"""Part 5, rehearse: `pgmedic rehearse` of the bench database (its newest snapshot restored, a
one-statement deploy run against the copy, the copy dropped) on pgmedic's own ephemeral scratch
server and, opted into, on the source's own server, interleaved. The ephemeral run pays for a
cluster's start and spares production its disk, WAL and IO; the target is that it costs no more
than 1.2x the run on the source server."""
import json
import os
import sys
from pathlib import Path

from .database import build_database
from .measure import Command
from .settings import BIN, DB, PG_URL
from .storage import pgmedic

DEPLOY = 'psql {url} -Xq -v ON_ERROR_STOP=1 -c "ALTER TABLE events ADD COLUMN bench_note text"'


def configs(tmp):
    base = Path(tmp) / "rehearse"
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o711)
    os.chmod(base, 0o711)  # as root the scratch server runs as postgres, which must reach scratch.dir
    out = {}
    for where in ("ephemeral", "source"):
        cfg = base / f"{where}.toml"
        cfg.write_text(f'[daemon]\nsocket = "{base}/{where}.sock"\nstate_dir = "{base}/state-{where}"\n'
                       f'[storage]\nbackend = "local"\npath = "{base}/snapshots"\n'
                       f'[scratch]\nserver = "{where}"\ndir = "{base}/scratch"\n'
                       f'[rehearse]\nmax_age = "30d"\n'
                       f'[[databases]]\nname = "bench"\nurl = "{PG_URL}/{DB}"\n')
        out[where] = cfg
    return out


def check(path, where):
    r = json.loads(Path(path).read_text())
    if not r.get("ok") or r.get("scratch_server") != where or r.get("source_changed"):
        sys.exit(f"bench: the {where} rehearsal did not pass: {json.dumps(r)[:2000]}")


def rehearse_commands(tmp):
    build_database()
    cfgs = configs(tmp)
    pgmedic(cfgs["ephemeral"], "snapshot", "--db", "bench")  # untimed; both configurations share it

    def cmd(where, label):
        out = f"{tmp}/rehearse-{where}.json"
        run = f"{BIN} --config {cfgs[where]} rehearse --db bench --json -- {DEPLOY} > {out}"
        # The copy's backends on the source server are named pgmedic_rehearse_<hex>.
        return Command(f"rehearse_{where}", label, run, (DB, "postgres", "pgmedic_rehearse_*"),
                       after=lambda: check(out, where))

    return [
        cmd("source", 'pgmedic rehearse, scratch.server = "source"  (baseline)'),
        cmd("ephemeral", "pgmedic rehearse on its ephemeral server"),
    ]
