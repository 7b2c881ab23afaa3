#!/usr/bin/env bash
# A whole piwheels farm on this machine, in ./farm: installs what is missing, builds the
# release binaries, creates (or reuses) the database "piwheels" (FARM_DB), starts piw-master with the
# built-in index server and one piw-slave for this machine's Python, registers a few real
# packages with piw-add, waits until they are built, and shows pip installing one of them from
# the farm's index into a fresh virtual environment. The farm then keeps running and the
# script prints its addresses; Ctrl-C stops it. Running it again reuses everything.
#
# The farm runs authenticated, as a real one should: the master's tcp sockets admit only the
# keys in farm/state/authorized_keys.toml. The script makes a key for its slave (role slave),
# for the admin tools (importer) and for piw-monitor (operator) in farm/keys, authorizes them
# with piw-keys, and writes them into the configuration file.
#
# Settings (environment): FARM_DB (the database, default piwheels: a farm's database and its
# ./farm go together, so give another checkout its own), FARM_HTTP (index server address,
# default 127.0.0.1:8080), FARM_METRICS (where the master answers Prometheus, default
# 127.0.0.1:9300), FARM_BUILDERS (the slave's builders, default 1), FARM_DEBIAN_CONTENTS
# (Debian Contents files, comma-separated, in which the failure triage looks up the package a
# failed build missed; default apt-file's, when this machine has them),
# FARM_PACKAGES (what to build, "name==version ...", default a pure package, one with an
# optional C extension and one with flit's build backend), FARM_TIMEOUT (seconds to wait for
# the builds, default 900).
#
# The master pins each release's source to the hash pip's own index publishes, and the slave
# fetches build dependencies from it: the index is pip's (PIP_INDEX_URL, its configuration, else
# the default pip itself knows; FARM_INDEX overrides), so nothing here names a package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

db=${FARM_DB:-piwheels}
http=${FARM_HTTP:-127.0.0.1:8080}
metrics=${FARM_METRICS:-127.0.0.1:9300}
builders=${FARM_BUILDERS:-1}
packages=${FARM_PACKAGES:-"six==1.17.0 markupsafe==3.0.2 idna==3.10"}
timeout=${FARM_TIMEOUT:-900}
farm=$PWD/farm
config=$farm/piwheels.toml

need_debian_packages libzmq3-dev libzmq5 pkg-config python3-pip python3-venv python3-dev gcc curl
ensure_postgres

step "building release binaries"
cargo build --release --locked --workspace --bins
bin=$PWD/target/release

abi=$(/usr/bin/python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
step "database $db (builds for $abi)"
# The master's role logs in over loopback with a password (kept as a real farm would keep it,
# out of the configuration file), one per user of the machine since the role belongs to the
# whole server; the database is set up by the postgres system user over the local socket.
pgpass=$HOME/.local/state/piwheels/farm-pgpass
if ! PGPASSFILE=$pgpass psql -h 127.0.0.1 -U piwheels -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    password=$(sed -n 's|^127\.0\.0\.1:5432:\*:piwheels:\([0-9a-f]*\)$|\1|p' "$pgpass" 2>/dev/null || true)
    [ -n "$password" ] || password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    mkdir -p "$(dirname "$pgpass")"
    (umask 077 && echo "127.0.0.1:5432:*:piwheels:$password" > "$pgpass")
    chmod 600 "$pgpass"
    as_postgres psql -qX -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET client_min_messages = warning;
DO \$\$ BEGIN CREATE ROLE piwheels; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
ALTER ROLE piwheels LOGIN NOSUPERUSER PASSWORD '$password';
SQL
fi
as_postgres psql -X -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || as_postgres psql -X -d postgres -qc "CREATE DATABASE \"$db\""
as_postgres "$bin/piw-initdb" --config /dev/null --dsn "postgres:///$db" --user piwheels --abi "$abi"

# Builds run the packages' own code, so the slave runs as an unprivileged user: the invoking
# user, or a system user made for it when the script runs as root.
builder=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
    builder=piwheels-builder
    id "$builder" >/dev/null 2>&1 || useradd --system --home-dir "$farm/builds" --shell /usr/sbin/nologin "$builder"
fi
mkdir -p "$farm/state" "$farm/www" "$farm/builds"
install -d -m 700 "$farm/run"
install -d -m 755 "$farm/keys"
chown "$builder" "$farm/builds"

step "keys (in $farm/keys, authorized in $farm/state/authorized_keys.toml)"
keys() { "$bin/piw-keys" --config /dev/null --state-dir "$farm/state" "$@"; }
master_key=$(keys master | tail -n 1)
# client_key NAME ROLE OWNER: a key pair for one client, readable by its owner only, and
# authorized with the label farm-NAME unless it is already (a key made anew replaces the one
# that held the label before).
client_key() {
    local file=$farm/keys/$1.key fingerprint
    [ -f "$file" ] || keys new "$file" >/dev/null
    chown "$3" "$file"
    fingerprint=$(keys show "$file" | awk '/^fingerprint:/ {print $2}')
    if ! keys list | grep -qF " $fingerprint "; then
        if keys list | awk '{print $1}' | grep -qx "farm-$1"; then keys revoke "farm-$1" >/dev/null; fi
        keys authorize "$file" --role "$2" --label "farm-$1"
    fi
}
client_key slave slave "$builder"
client_key tools importer "$(id -un)"
client_key monitor operator "$(id -un)"

index=${FARM_INDEX:-${PIP_INDEX_URL:-$(/usr/bin/python3 -m pip config get global.index-url 2>/dev/null \
    || /usr/bin/python3 -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')}}

# The slave builds on this machine, so this machine's apt-file data names its packages.
contents=${FARM_DEBIAN_CONTENTS:-$(shopt -s nullglob; files=(/var/lib/apt/lists/*_Contents-*.lz4); IFS=,; echo "${files[*]}")}
contents_line=
if [ -n "$contents" ]; then contents_line="debian-contents = \"$contents\""; fi

cat > "$config" <<TOML
# Written by scripts/farm.sh on every run, so that the paths follow the checkout.
[master]
dsn = "postgres://piwheels@127.0.0.1:5432/$db"
output-path = "$farm/www"
state-dir = "$farm/state"
control-queue = "ipc://$farm/run/control"
status-queue = "ipc://$farm/run/status"
import-queue = "ipc://$farm/run/import"
logger-queue = "ipc://$farm/run/logger"
slave-queue = "tcp://127.0.0.1:5555"
file-queue = "tcp://127.0.0.1:5556"
http-listen = "$http"
metrics-listen = "$metrics"
site-url = "http://$http"
pypi-simple = "$index"
$contents_line

[slave]
master = "127.0.0.1"
build-root = "$farm/builds"
builders = $builders
python = "/usr/bin/python3"
key = "$farm/keys/slave.key"
master-key = "$master_key"

[import]
import-queue = "ipc://$farm/run/import"
file-queue = "tcp://127.0.0.1:5556"
key = "$farm/keys/tools.key"
master-key = "$master_key"

[monitor]
control-queue = "ipc://$farm/run/control"
status-queue = "ipc://$farm/run/status"
key = "$farm/keys/monitor.key"
master-key = "$master_key"

[keys]
state-dir = "$farm/state"

[logger]
logger-queue = "ipc://$farm/run/logger"
TOML
chmod 644 "$config"

pids=()
stop_farm() {
    trap - INT TERM EXIT
    step "stopping the farm"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_farm INT TERM EXIT

step "starting piw-master (log: $farm/master.log)"
PIW_CONFIG=$config PGPASSFILE=$pgpass "$bin/piw-master" >>"$farm/master.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    [ -S "$farm/run/import" ] && curl -fs -o /dev/null "http://$http/simple/" && break
    kill -0 "${pids[0]}" 2>/dev/null || { tail -n 20 "$farm/master.log" >&2; echo "piw-master stopped; see above" >&2; exit 1; }
    sleep 0.2
done

step "starting piw-slave as $builder (log: $farm/slave.log)"
if [ "$builder" = "$(id -un)" ]; then
    PIW_CONFIG=$config HOME=$farm/builds "$bin/piw-slave" >>"$farm/slave.log" 2>&1 &
else
    setpriv --reuid="$builder" --regid="$(id -g "$builder")" --clear-groups -- \
        env PIW_CONFIG="$config" HOME="$farm/builds" "$bin/piw-slave" >>"$farm/slave.log" 2>&1 &
fi
pids+=($!)

step "registering: $packages"
for spec in $packages; do
    PIW_CONFIG=$config "$bin/piw-add" "${spec%%==*}" "${spec##*==}"
done

step "waiting for the builds (up to ${timeout}s)"
names=$(for spec in $packages; do printf "'%s'," "${spec%%==*}"; done)
names=${names%,}
deadline=$((SECONDS + timeout))
while :; do
    done_count=$(PGPASSFILE=$pgpass psql -h 127.0.0.1 -U piwheels -d "$db" -tAc \
        "SELECT count(DISTINCT package) FROM builds WHERE package IN ($names)")
    [ "$done_count" -ge "$(echo "$packages" | wc -w)" ] && break
    if [ $SECONDS -ge $deadline ]; then
        echo "the builds did not finish within ${timeout}s; see $farm/slave.log" >&2
        exit 1
    fi
    sleep 2
done
PGPASSFILE=$pgpass psql -h 127.0.0.1 -U piwheels -d "$db" -c \
    "SELECT package, version, abi_tag, CASE WHEN status THEN 'built' ELSE 'failed' END AS result, duration
     FROM builds WHERE package IN ($names) ORDER BY package"

first=${packages%% *}
first=${first%%==*}
step "pip installs $first from the farm's index into a fresh virtual environment"
demo=$farm/demo-venv
rm -rf "$demo"
/usr/bin/python3 -m venv "$demo"
# Only the farm's index: no configuration files, no other indexes or local wheel directories.
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "$demo/bin/pip" install --no-cache-dir --disable-pip-version-check --index-url "http://$http/simple/" "$first"
"$demo/bin/python" -c "import $first, sys; print('imported', $first.__name__, 'from', $first.__file__)"

cat >&2 <<TXT

== the farm is running (Ctrl-C stops it)
  package index    http://$http/simple/
  home page        http://$http/
  metrics          http://$metrics/metrics   (for Prometheus; docs/operations.md)
  more builders    kill -TTIN (the piw-slave host's pid), or + in the monitor
  monitor          $bin/piw-monitor --config $config
  add packages     $bin/piw-add --config $config NAME VERSION
  keys             $bin/piw-keys --config $config list   (the master's public key: $master_key)
  configuration    $config
  logs             $farm/master.log, $farm/slave.log
TXT
wait "${pids[0]}"
