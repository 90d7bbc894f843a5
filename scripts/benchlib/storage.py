"""Where the snapshot and restore parts keep their snapshots: the S3 server (moto), pgmedic's
configurations for local and S3 storage, and running pgmedic's CLI against them."""
import json
import subprocess
import sys
from pathlib import Path

from .settings import BIN, DB, ENV, PG_URL, ROOT


def pgmedic(cfg, *args):
    out = subprocess.run([BIN, "--config", str(cfg), *args], env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench: pgmedic {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def start_s3(meter):
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/s3_server.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = proc.stdout.readline().strip().split("=")[1]
    endpoint = f"http://127.0.0.1:{port}"
    subprocess.run([sys.executable, "-m", "awscli", "--endpoint-url", endpoint, "s3", "mb", "s3://bench"],
                   check=True, env=ENV, capture_output=True)
    meter.s3_pid = proc.pid
    meter.keep.add(proc.pid)
    return proc, endpoint


# A public key only: the benchmark writes encrypted snapshots and never reads them back.
AGE_RECIPIENT = "age1vxl9k4rs5yh2s7ezsrwxu2mgstg97s08kcza6fyctxpz093ypv3s85a62t"


def config(tmp, backend, endpoint):
    storage = (f'backend = "s3"\nbucket = "bench"\nendpoint = "{endpoint}"\nforce_path_style = true\n'
               if backend == "s3" else f'backend = "local"\npath = "{tmp}/snapshots"\n')
    if backend == "local_age":
        storage = f'backend = "local"\npath = "{tmp}/snapshots-age"\n[storage.encryption]\nrecipients = ["{AGE_RECIPIENT}"]\n'

    # A socket of our own: `pgmedic snapshot` goes through a daemon whose socket answers.
    path = Path(tmp) / f"{backend}.toml"
    path.write_text(f'[daemon]\nsocket = "{tmp}/{backend}.sock"\nstate_dir = "{tmp}/state"\n[storage]\n{storage}\n'
                    f'[[databases]]\nname = "bench"\nurl = "{PG_URL}/{DB}"\n')
    return path


def latest_snapshot(cfg):
    """The newest snapshot's manifest; takes one (untimed) when there is none."""
    listed = json.loads(pgmedic(cfg, "snapshots", "--json"))
    if not listed:
        pgmedic(cfg, "snapshot")
        listed = json.loads(pgmedic(cfg, "snapshots", "--json"))
    return listed[-1]
