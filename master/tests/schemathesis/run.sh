#!/bin/sh
# Runs schemathesis with every check against a fresh master in a loopback-only network
# namespace (instances it creates cannot reach anything):
#   unshare -n master/tests/schemathesis/run.sh target/debug/nodepass
# Needs `pip install schemathesis` (the `schemathesis` command on PATH or in $ST).
set -e
EXE=$(realpath "${1:?usage: run.sh <nodepass binary>}")
HERE=$(dirname "$(realpath "$0")")
ST=${ST:-schemathesis}
ip link set lo up
STATE=$(mktemp -d)
LOG="$STATE/master.log"
NP_STATE_DIR="$STATE/state" "$EXE" 'master://127.0.0.1:18099/api?log=warn' >"$LOG" 2>&1 &
MASTER=$!
trap 'kill $MASTER; wait $MASTER; rm -rf "$STATE"' EXIT
for _ in $(seq 1 50); do grep -q 'API Key' "$LOG" && break; sleep 0.2; done
KEY=$(grep -o 'API Key [a-z]*: [0-9a-f]*' "$LOG" | awk '{print $NF}')
cd "$HERE"
"$ST" run http://127.0.0.1:18099/api/v1/openapi.json --checks all \
    -H "X-API-Key: $KEY" --max-examples "${MAX_EXAMPLES:-50}"
