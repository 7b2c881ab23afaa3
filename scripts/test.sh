#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh Debian machine: installs what is
# missing (libzmq, PostgreSQL, tmux for the monitor test, chromium for the pages' scripts, a
# Python environment with setuptools, wheel and uv, a C compiler, axe-core for the pages'
# accessibility checks),
# makes sure PostgreSQL is running, then runs clippy (warnings fail) and every test of the
# workspace against real sockets, a real database and real pip.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

need_debian_packages libzmq3-dev pkg-config tmux chromium
# A server named by DATABASE_URL is the caller's to run; the local one is set up only when none is.
if [ -z "${DATABASE_URL:-}" ]; then
    ensure_postgres
fi
ensure_test_python
ensure_test_axe

# The tests' own role; its password is in the file ensure_postgres wrote (sqlx and psql read it).
export DATABASE_URL="${DATABASE_URL:-postgres://piw_test@127.0.0.1:5432/postgres}"
export PGPASSFILE="${PGPASSFILE:-$TEST_PGPASS}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
# Most tests spend their time waiting on sockets, processes and deadlines, not on a core: two
# per core keep the cores busy (on 2 cores the run took 190 s instead of 283 s).
threads=$(( 2 * $(nproc) ))
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --test-threads "$threads"
else
    cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --locked --doc
