#!/usr/bin/env bash
# Runs a piwheels farm on this machine, in ./farm (created on first use, reused after).
#
# What it starts today: a local PostgreSQL database "piwheels" (created on first use, with the
# role "piwheels" the master connects as), then the release build of piw-master, with its
# state, output and sockets under ./farm, until Ctrl-C. The database, slave, index server and package registration
# steps join this script as those parts of the farm are implemented (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

need_debian_packages libzmq3-dev pkg-config
ensure_postgres

step "building release binaries"
cargo build --release --locked --workspace

step "database"
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'piwheels'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE ROLE piwheels LOGIN"
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'piwheels'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE piwheels"
target/release/piw-initdb --config /dev/null --dsn postgres://postgres@127.0.0.1:5432/piwheels --user piwheels

farm=$PWD/farm
mkdir -p "$farm/state" "$farm/www"
install -d -m 700 "$farm/run"

cat > "$farm/piwheels.toml" <<TOML
# Written by scripts/farm.sh on every run, so that the paths follow the checkout.
[master]
dsn = "postgres://piwheels@127.0.0.1:5432/piwheels"
output-path = "$farm/www"
state-dir = "$farm/state"
control-queue = "ipc://$farm/run/control"
status-queue = "ipc://$farm/run/status"
TOML

step "starting piw-master (Ctrl-C stops it)"
cat >&2 <<TXT
  configuration  $farm/piwheels.toml
  output         $farm/www
  control        ipc://$farm/run/control
  status         ipc://$farm/run/status
TXT
exec target/release/piw-master --config "$farm/piwheels.toml"
