#!/usr/bin/env bash
# Load benchmark of the built-in web server (master/src/web_server.rs): requests per second for
# a simple-index page (as pip asks for it, and as HTML) and for a wheel file, measured with wrk
# from Debian's packages (installed if missing) against a generated tree on loopback.
#
#   scripts/bench-web.sh                     # 10 s per run, 64 connections, 2 wrk threads
#   DURATION=30s CONNECTIONS=128 WHEEL_BYTES=100000 scripts/bench-web.sh
#
# wrk and the server share the machine, so the figures are a floor for the server alone.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WHEEL_BYTES="${WHEEL_BYTES:-1048576}"
PROJECTS="${PROJECTS:-10000}"

command -v wrk >/dev/null 2>&1 || need_debian_packages wrk

step "building the server (release)"
cargo build --release --quiet -p piwheels-master --example serve_tree
server_bin="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/examples/serve_tree"

tree="$(mktemp -d)"
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$tree"
}
trap cleanup EXIT

step "generating a tree: $PROJECTS projects, one wheel of $WHEEL_BYTES bytes"
mkdir -p "$tree/simple/numpy"
{
    printf '<!DOCTYPE html>\n<html>\n  <head>\n    <meta name="pypi:repository-version" content="1.1">\n'
    printf '    <title>Simple index</title>\n  </head>\n  <body>\n'
    for n in $(seq 1 "$PROJECTS"); do printf '    <a href="project-%d/">project-%d</a><br>\n' "$n" "$n"; done
    printf '  </body>\n</html>\n'
} > "$tree/simple/index.html"
wheel="numpy-2.2.4-cp311-cp311-linux_armv7l.whl"
head -c "$WHEEL_BYTES" /dev/urandom > "$tree/simple/numpy/$wheel"
sha=$(sha256sum "$tree/simple/numpy/$wheel" | cut -d' ' -f1)
{
    printf '<!DOCTYPE html>\n<html>\n  <head>\n    <meta name="pypi:repository-version" content="1.1">\n'
    printf '    <title>Links for numpy</title>\n  </head>\n  <body>\n    <h1>Links for numpy</h1>\n'
    for v in $(seq 1 40); do
        printf '    <a href="numpy-1.%d.0-cp311-cp311-linux_armv7l.whl#sha256=%s" data-requires-python="&gt;=3.9">numpy-1.%d.0-cp311-cp311-linux_armv7l.whl</a><br>\n' "$v" "$sha" "$v"
    done
    printf '  </body>\n</html>\n'
} > "$tree/simple/numpy/index.html"
{
    printf '{"meta":{"api-version":"1.1"},"name":"numpy","versions":[],"files":['
    for v in $(seq 1 40); do
        [ "$v" -gt 1 ] && printf ','
        printf '{"filename":"numpy-1.%d.0-cp311-cp311-linux_armv7l.whl","url":"numpy-1.%d.0-cp311-cp311-linux_armv7l.whl","hashes":{"sha256":"%s"},"requires-python":">=3.9","size":%d,"yanked":false}' "$v" "$v" "$sha" "$WHEEL_BYTES"
    done
    printf ']}\n'
} > "$tree/simple/numpy/index.json"

log="$tree/server.log"
"$server_bin" "$tree" 127.0.0.1:0 2> "$log" &
server_pid=$!
for _ in $(seq 1 50); do
    grep -q 'serving' "$log" && break
    sleep 0.1
done
addr=$(sed -n 's|.* on http://\([^/]*\)/.*|\1|p' "$log")
[ -n "$addr" ] || { cat "$log" >&2; exit 1; }

pip_accept='application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01'
results=()
measure() {
    local label="$1" url="$2"; shift 2
    step "$label: wrk -t$THREADS -c$CONNECTIONS -d$DURATION $* $url"
    local out
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$@" "$url")
    echo "$out" >&2
    if echo "$out" | grep -q 'Non-2xx'; then
        echo "bench-web: $label got error answers" >&2
        exit 1
    fi
    local rps transfer
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    transfer=$(echo "$out" | awk '/^Transfer\/sec:/ {print $2}')
    results+=("$(printf '%-44s %12s req/s %12s/s' "$label" "$rps" "$transfer")")
}

measure "page /simple/numpy/ (JSON, pip's Accept)" "http://$addr/simple/numpy/" -H "Accept: $pip_accept"
measure "page /simple/numpy/ (HTML)" "http://$addr/simple/numpy/" -H "Accept: text/html"
measure "page /simple/ ($PROJECTS projects, HTML)" "http://$addr/simple/"
measure "wheel ($WHEEL_BYTES bytes)" "http://$addr/simple/numpy/$wheel"

printf '\n%s on %s cores, %s connections, %s per run:\n' "built-in web server" "$(nproc)" "$CONNECTIONS" "$DURATION"
printf '%s\n' "${results[@]}"
