# Shared set-up helpers for scripts/test.sh and scripts/farm.sh; meant to be sourced.
# Everything here is idempotent: it installs or starts only what is missing.

step() { printf '\n== %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
# need_debian_packages PKG...: installs the packages that are not installed yet.
need_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "installing ${missing[*]}"
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# as_postgres CMD...: runs a command as the postgres system user, which the server lets in over
# its local socket (peer authentication) as its superuser.
as_postgres() {
    (cd / && as_root runuser -u postgres -- "$@")
}

# The password file of the tests' roles (libpq's format, for PGPASSFILE): one per user of the
# machine, since the roles belong to the whole server and every checkout shares them.
TEST_PGPASS="$HOME/.local/state/piwheels/test-pgpass"

# ensure_postgres: PostgreSQL installed, a cluster present and running on 127.0.0.1:5432, and
# the tests' own roles: piw_test (makes and drops the tests' databases, and the roles piw-initdb
# grants), piw_test_app (the master's role in tests, no privileges of its own) and
# piw_test_super (a superuser, for the one test that reaches into another session). They log in
# over loopback TCP with a random password kept in $TEST_PGPASS (mode 600); no role is let in
# without a password by these scripts.
ensure_postgres() {
    if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
        need_debian_packages postgresql
    fi
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
        step "creating PostgreSQL cluster $version/main"
        as_root pg_createcluster "$version" main >/dev/null
    fi
    local cluster
    cluster=$(pg_lsclusters -h | head -n 1)
    local ver name status
    ver=$(echo "$cluster" | awk '{print $1}')
    name=$(echo "$cluster" | awk '{print $2}')
    status=$(echo "$cluster" | awk '{print $4}')
    if [ "$status" != "online" ]; then
        step "starting PostgreSQL $ver/$name"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start
    fi
    local hba="/etc/postgresql/$ver/$name/pg_hba.conf" rule="host all piw_test,piw_test_app,piw_test_super,piwheels"
    # Earlier versions of these scripts let their roles in over loopback without a password.
    if as_root grep -Eq '^host all (postgres|piw_test_app|piwheels) (127\.0\.0\.1/32|::1/128) trust$' "$hba" \
        || ! as_root grep -qxF "$rule 127.0.0.1/32 scram-sha-256" "$hba"; then
        step "letting the tests' roles in over loopback TCP, with a password"
        as_root sed -i -E '/^host all (postgres|piw_test_app|piwheels) (127\.0\.0\.1\/32|::1\/128) trust$/d; /^host all piw_test,[a-z_,]+ (127\.0\.0\.1\/32|::1\/128) scram-sha-256$/d' "$hba"
        as_root grep -qxF "$rule 127.0.0.1/32 scram-sha-256" "$hba" \
            || as_root sed -i "1i $rule 127.0.0.1/32 scram-sha-256\n$rule ::1/128 scram-sha-256" "$hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload
    fi
    if as_root grep -Eq '^[[:space:]]*(local|host)[^#]*[[:space:]]trust[[:space:]]*$' "$hba"; then
        echo "note: $hba lets roles in without a password (rules these scripts did not write; the tests do not need them)" >&2
    fi
    if ! PGPASSFILE=$TEST_PGPASS psql -h 127.0.0.1 -U piw_test_super -d postgres -tAc 'select 1' >/dev/null 2>&1; then
        step "giving the tests' roles a password ($TEST_PGPASS)"
        local password=""
        if [ -f "$TEST_PGPASS" ]; then
            password=$(sed -n 's|^127\.0\.0\.1:5432:\*:piw_test:\([0-9a-f]*\)$|\1|p' "$TEST_PGPASS")
        fi
        [ -n "$password" ] || password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
        mkdir -p "$(dirname "$TEST_PGPASS")"
        (umask 077 && printf '127.0.0.1:5432:*:%s:%s\n' piw_test "$password" piw_test_app "$password" piw_test_super "$password" > "$TEST_PGPASS")
        chmod 600 "$TEST_PGPASS"
        as_postgres psql -qX -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET client_min_messages = warning;
DO \$\$ BEGIN CREATE ROLE piw_test; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
DO \$\$ BEGIN CREATE ROLE piw_test_app; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
DO \$\$ BEGIN CREATE ROLE piw_test_super; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
ALTER ROLE piw_test LOGIN NOSUPERUSER CREATEDB CREATEROLE PASSWORD '$password';
ALTER ROLE piw_test_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$password';
ALTER ROLE piw_test_super LOGIN SUPERUSER PASSWORD '$password';
-- Tests end the master's connections, as an administrator would.
GRANT pg_signal_backend TO piw_test;
SQL
    fi
    PGPASSFILE=$TEST_PGPASS psql -h 127.0.0.1 -U piw_test -d postgres -tAc 'select 1' >/dev/null
}

# ensure_test_python: a Python environment with setuptools and wheel (what pip needs to build
# the test sdists without build isolation) and uv (the second installer the index is tested
# with), first on PATH, plus a C compiler and Python's headers for the C-extension test. Kept
# in target/, so `cargo clean` removes it. It is made from Debian's Python, which the headers
# match and which the unprivileged user the tests run builders as can execute (a Python under
# /root could not be).
ensure_test_python() {
    need_debian_packages python3-venv python3-dev gcc
    local venv="$PWD/target/test-python"
    if ! "$venv/bin/python3" -c 'import setuptools, wheel' >/dev/null 2>&1 || ! [ -x "$venv/bin/uv" ] \
        || ! grep -q '^home = /usr/bin$' "$venv/pyvenv.cfg" 2>/dev/null; then
        step "creating the tests' Python environment in $venv"
        /usr/bin/python3 -m venv --clear "$venv"
        "$venv/bin/python3" -m pip install -q --upgrade pip setuptools wheel uv
    fi
    export PATH="$venv/bin:$PATH"
}

# ensure_test_axe: axe-core, the accessibility checker the browser tests run in chromium on
# every page (contrast, headings, labels, table headers), from the npm registry with the
# machine's Node.js and npm; kept in target/test-node, its script's path exported as
# PIW_AXE_SCRIPT. The version is pinned so that a new rule cannot fail a run by itself.
AXE_VERSION=4.10.3
ensure_test_axe() {
    local dir="$PWD/target/test-node"
    local script="$dir/node_modules/axe-core/axe.min.js"
    if ! grep -q "\"version\": \"$AXE_VERSION\"" "$dir/node_modules/axe-core/package.json" 2>/dev/null || ! [ -f "$script" ]; then
        command -v npm >/dev/null || need_debian_packages npm
        step "installing axe-core $AXE_VERSION in $dir"
        mkdir -p "$dir"
        npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund --loglevel=error "axe-core@$AXE_VERSION"
    fi
    export PIW_AXE_SCRIPT="$script"
}
