#!/usr/bin/env bash
# Screenshots of the site's pages at a phone's and a desktop's width, for a person to look at
# (they are not committed): the home page, the package list and a search, a project page (also
# in dark colours), a project with a failed build, and a build log. Takes the site's address
# (default: the quickstart farm's), a project built there and, optionally, one whose build
# failed; writes target/screenshots/<page>-<width>.png.
#
#   scripts/screenshots.sh [http://127.0.0.1:8080] [six] [failing-project]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh
need_debian_packages chromium curl

site=${1:-http://127.0.0.1:8080}
project=${2:-six}
failed=${3:-}
out=target/screenshots
mkdir -p "$out"
# The newest log the project's JSON links.
log=$(curl -fsS "$site/project/$project/json/index.json" | python3 -c '
import json, sys
builds = [b for r in json.load(sys.stdin)["releases"].values() for b in r["builds"].values() if b.get("log_url")]
print(builds[-1]["log_url"] if builds else "")')
pages=("home /" "packages /packages/" "search /packages/?q=${project:0:3}" "project /project/$project/")
[ -n "$log" ] && pages+=("log $log")
[ -n "$failed" ] && pages+=("failed /project/$failed/")
pages+=("project-dark /project/$project/")
for page in "${pages[@]}"; do
    name=${page%% *}
    path=${page#* }
    scheme=()
    # Chromium's setting for a reader whose system prefers dark colours.
    [[ $name == *-dark ]] && scheme=(--blink-settings=preferredColorScheme=0)
    for size in 390,844 1366,900; do
        file="$out/$name-${size%,*}.png"
        chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$size" "${scheme[@]}" \
            --screenshot="$PWD/$file" "$site$path" >/dev/null 2>&1
        echo "$file"
    done
done
