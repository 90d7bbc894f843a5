"""pgmedic's benchmark, in parts; scripts/bench.py is the entry point and explains what is
measured and how.

  settings   paths, the PGMEDIC_BENCH_* environment, database names, the commands' environment
  measure    running one command: wait4's rusage of its tree, the subreaper, /proc sampling of
             the PostgreSQL backends' and the S3 server's CPU, interleaved rounds, medians
  database   psql, the realistic bench database and the many tiny ones
  storage    the S3 server (moto), pgmedic's configurations, pgmedic's CLI
  snapshot   part 1: the snapshot commands
  restore    part 2: the restore commands
  many       part 3: the daemon with many databases, watched from /proc
  report     tables, the many-databases summary, targets with PASS/FAIL, the JSON copy
"""
