"""The benchmark's settings: paths, the PGMEDIC_BENCH_* environment, the database names, how to
reach PostgreSQL, and the environment every measured command runs in."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = str(ROOT / "target/release/pgmedic")
OTHER_BIN = os.environ.get("PGMEDIC_BENCH_OTHER")  # another pgmedic binary to compare with (snapshot part)
ROWS = int(os.environ.get("PGMEDIC_BENCH_ROWS", "3000000"))
DB = "pgmedic_bench" if ROWS == 3000000 else f"pgmedic_bench_{ROWS}"  # a small run keeps the big database
RESTORE_DB = "pgmedic_bench_restore"
MANY_PREFIX = "pgmedic_many_"
ROUNDS = max(int(os.environ.get("PGMEDIC_BENCH_ROUNDS", "3")), 1)
WITH_AWS = os.environ.get("PGMEDIC_BENCH_AWS", "1") != "0"
MANY = int(os.environ.get("PGMEDIC_BENCH_MANY", "100"))
MANY_TIMEOUT = float(os.environ.get("PGMEDIC_BENCH_MANY_TIMEOUT", "600"))
MANY_MAX_CONCURRENT = 1
SAMPLE_EVERY = 0.02
JSON_OUT = Path(os.environ.get("PGMEDIC_BENCH_JSON", ROOT / "target/bench-results.json"))
PARTS = ("snapshot", "restore", "many", "diagnose", "rehearse", "repair")
PG = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
PG_URL = "postgresql://postgres@127.0.0.1:5432"
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
           AWS_EC2_METADATA_DISABLED="true", PGMEDIC_LOG="warn")
TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024  # ru_maxrss and VmRSS are in KiB
