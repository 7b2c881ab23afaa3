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

# ensure_postgres: PostgreSQL installed, a cluster present and running on 127.0.0.1:5432,
# and the roles the tests and scripts/farm.sh use reachable over loopback TCP without a
# password: postgres (the tests' superuser), piw_test_app (the tests' application role) and
# piwheels (the local farm's). No other role is let in.
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
    if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
        step "allowing loopback TCP connections for the tests' roles"
        local hba="/etc/postgresql/$ver/$name/pg_hba.conf" rules="" role
        for role in postgres piw_test_app piwheels; do
            rules="${rules}host all $role 127.0.0.1/32 trust\nhost all $role ::1/128 trust\n"
        done
        as_root sed -i "1i ${rules%\\n}" "$hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload
    fi
    psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null
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
