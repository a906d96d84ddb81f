#!/usr/bin/env bash
# Runs schemathesis (from PyPI) against the real broker with its own /openapi.json, as
# each role of SPEC §1: the backend (X-Api-Key), the client app (a session token made
# for the run) and the device (a JWT minted for the run). Every generated request must
# get a documented status, a documented content type, a body that matches its schema,
# the documented headers, and no 5xx. Traffic goes only to 127.0.0.1.
#
# Bounded: at most ST_MAX_EXAMPLES (default 100) generated cases per operation and
# phase; with the binary already built, the whole script takes under two minutes on a
# 2-core box. Exits non-zero on any failure. ST_REPORT_DIR=DIR keeps a HAR of every
# request and response per role.
set -euo pipefail
# Relative to the caller's folder, before the cd.
report_dir=${ST_REPORT_DIR:+$(realpath -m "$ST_REPORT_DIR")}
cd "$(dirname "$0")/.."
root=$(pwd)

st_version=4.32.5
venv="$root/target/schemathesis-venv"
max_examples=${ST_MAX_EXAMPLES:-100}

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$st_version"; then
  echo "schemathesis.sh: installing schemathesis $st_version into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$st_version"
fi

cargo build --quiet --bin idv-broker
broker="$root/target/debug/idv-broker"

work=$(mktemp -d)
broker_pid=""
cleanup() {
  if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

api_key="schemathesis-api-key-0123456789"
issuer="st-issuer"
issuer_secret="schemathesis-issuer-secret-0123456789"

# No webhook secret: a callback_url is then refused with 400 before any DNS look-up,
# so the fuzzer's hosts are never resolved or called. --demo: the demo's routes answer
# as they do in a demo, not only 404.
"$broker" --bind 127.0.0.1:0 --db "$work/broker.db" --rate-limit 0 --demo \
  --api-key "st=$api_key" --issuer "$issuer=$issuer_secret" \
  >"$work/stdout" 2>"$work/stderr" &
broker_pid=$!

base=""
for _ in $(seq 1 300); do
  if line=$(grep -m1 '^listening on ' "$work/stdout" 2>/dev/null); then
    base=${line#listening on }
    break
  fi
  if ! kill -0 "$broker_pid" 2>/dev/null; then
    echo "schemathesis.sh: the broker exited before listening:" >&2
    cat "$work/stderr" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$base" ]]; then
  echo "schemathesis.sh: the broker did not print its listening line" >&2
  exit 1
fi
case "$base" in
  http://127.0.0.1:*) ;;
  *) echo "schemathesis.sh: unexpected address $base" >&2; exit 1 ;;
esac
echo "schemathesis.sh: broker at $base" >&2

# A session of the run's own, for the client and device roles.
new_session() {
  curl -sS --fail-with-body -X POST "$base/v1/sessions" \
    -H "X-Api-Key: $api_key" -H 'Content-Type: application/json' \
    -d '{"scopes": ["full_name", "selfie"], "ttl_seconds": 3600}'
}
json_field() {
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
client_session=$(new_session)
client_id=$(json_field session_id <<<"$client_session")
client_token=$(json_field session_token <<<"$client_session")
device_session=$(new_session)
device_id=$(json_field session_id <<<"$device_session")
device_jwt=$("$broker" token --issuer "$issuer=$issuer_secret" --sub st-device --ttl 3600)

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance

# Runs schemathesis on the operations tagged $1, with the config file $2. One worker:
# with several threads, hypothesis's concurrent ast.parse calls trip a CPython 3.11 bug
# ("AST constructor recursion depth mismatch", gh-106905) and abort the run.
run() {
  local tag=$1 config=$2
  echo "schemathesis.sh: role $tag" >&2
  # From the temp folder: schemathesis keeps its example database in ./.schemathesis.
  (cd "$work" && "$venv/bin/schemathesis" --config-file "$config" run "$base/openapi.json" \
    --include-tag "$tag" \
    --checks "$checks" \
    --max-examples "$max_examples" \
    --workers 1 \
    --request-timeout 10 \
    --seed 1 \
    --no-color \
    --warnings off \
    ${report_dir:+--report har --report-dir "$report_dir/$tag"})
}

# Backend: every operation that takes the API key; a session id in the path is
# generated (mostly unknown ids: 404), which is what a fuzzer should try.
cat >"$work/backend.toml" <<TOML
headers = { "X-Api-Key" = "$api_key" }
TOML
run backend "$work/backend.toml"

# Operations and pages need no credential.
cat >"$work/open.toml" <<TOML
TOML
run operations "$work/open.toml"
run pages "$work/open.toml"

# Client: the run's session and its token. `wait` is pinned to 0: a long-poll that
# waits its full 30 s for every generated case would take the run past its bound
# (the wait itself is covered by tests/api).
cat >"$work/client.toml" <<TOML
headers = { "Authorization" = "Bearer $client_token" }

[parameters]
"path.id" = "$client_id"
"query.wait" = 0
TOML
run client "$work/client.toml"

# Device: a session of its own (the device binds to it, uploads, decides).
cat >"$work/device.toml" <<TOML
headers = { "Authorization" = "Bearer $device_jwt" }

[parameters]
"path.id" = "$device_id"
TOML
run device "$work/device.toml"

echo "schemathesis.sh: every role passed" >&2
