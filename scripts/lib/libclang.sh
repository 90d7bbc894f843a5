# Sourced by scripts/run and scripts/test. pgmedic parses SQL with PostgreSQL's own parser
# (the pg_query crate builds libpg_query), and pg_query generates its bindings with bindgen,
# which loads libclang at build time. A machine without libclang gets the PyPI wheel in .venv
# (about 25 MB, user space, cached there), so a fresh checkout builds with no root and no apt.
pgmedic_libclang() {
  if [ -n "${LIBCLANG_PATH:-}" ]; then
    return 0
  fi
  if ldconfig -p 2>/dev/null | grep -qE '[[:space:]]libclang(-[0-9.]+)?\.so(\.[0-9]+)*[[:space:]]'; then
    return 0
  fi
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if ! .venv/bin/python -c 'import clang.native' 2>/dev/null; then
    echo "scripts: installing libclang (for bindgen) into .venv" >&2
    .venv/bin/pip install --quiet --disable-pip-version-check 'libclang==18.1.1'
  fi
  LIBCLANG_PATH="$(.venv/bin/python -c 'import clang, os; print(os.path.join(os.path.dirname(clang.__file__), "native"))')"
  export LIBCLANG_PATH
  # The wheel has libclang but not clang's own headers (stddef.h): use the C compiler's.
  BINDGEN_EXTRA_CLANG_ARGS="${BINDGEN_EXTRA_CLANG_ARGS:-} -I$(cc -print-file-name=include)"
  export BINDGEN_EXTRA_CLANG_ARGS
}
pgmedic_libclang
