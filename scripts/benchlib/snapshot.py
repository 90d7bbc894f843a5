"""Part 1, snapshots: pgmedic snapshot to local storage and to S3 against pg_dump alone (the
limit), pg_dump piped into zstd (the yardstick) and the usual shell pipeline to S3."""
import os
import shutil
import subprocess
import sys

from .measure import Command
from .settings import BIN, DB, ENV, OTHER_BIN, PG, WITH_AWS


def forget(tmp, endpoint, backend):
    """Deletes the snapshots just taken (untimed, after each run), so every round starts from the
    same storage: moto keeps every object in its own memory and temp files, and a server holding
    more each round would slow the later rounds only."""
    if backend == "s3":
        return lambda: subprocess.run([sys.executable, "-m", "awscli", "--endpoint-url", endpoint, "s3", "rm",
                                       "--recursive", "--quiet", "s3://bench/bench/"], check=True, env=ENV)
    folder = f"{tmp}/snapshots-age" if backend == "local_age" else f"{tmp}/snapshots"
    return lambda: shutil.rmtree(folder, ignore_errors=True)


def snapshot_commands(tmp, cfgs, endpoint, sizes):
    dump = " ".join(["pg_dump", *PG, "-d", DB])
    out = f"{tmp}/yardstick.zst"

    def keep_size():
        sizes["zstd_cli_bytes"] = os.path.getsize(out)
        os.remove(out)

    cmds = [
        Command("limit", "pg_dump -Fc -Z0 > /dev/null  (the limit)", ["pg_dump", *PG, "-d", DB, "-Fc", "-Z0"], (DB,)),
        Command("zstd", "pg_dump -Fc -Z0 | zstd -3 -T0 > file  (yardstick)", f"{dump} -Fc -Z0 | zstd -q -3 -T0 > {out}",
                (DB,), after=keep_size),
    ]
    if WITH_AWS:
        cmds.append(Command("aws", "pg_dump -Fc | aws s3 cp -  (shell to S3)",
                            f"{dump} -Fc | {sys.executable} -m awscli --endpoint-url {endpoint} s3 cp - "
                            f"s3://bench/shell/dump.pgc", (DB,)))
    cmds += [
        Command("pgmedic_local", "pgmedic snapshot → local", [BIN, "--config", str(cfgs["local"]), "snapshot"], (DB,),
                after=forget(tmp, endpoint, "local")),
        Command("pgmedic_s3", "pgmedic snapshot → S3 (moto)", [BIN, "--config", str(cfgs["s3"]), "snapshot"], (DB,),
                after=forget(tmp, endpoint, "s3")),
        Command("pgmedic_local_age", "pgmedic snapshot → local, age-encrypted",
                [BIN, "--config", str(cfgs["local_age"]), "snapshot"], (DB,), after=forget(tmp, endpoint, "local_age")),
    ]
    if OTHER_BIN:
        # A/B: another build's snapshots in the same rounds, so a change is judged paired.
        cmds += [Command(f"other_{k}", f"other build: snapshot → {where}", [OTHER_BIN, "--config", str(cfgs[k]), "snapshot"],
                         (DB,), after=forget(tmp, endpoint, k)) for k, where in (("local", "local"), ("s3", "S3 (moto)"))]
    return cmds
