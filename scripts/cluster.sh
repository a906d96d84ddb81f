#!/usr/bin/env bash
# A three-node cluster on this machine (SPEC §7), for trying it by hand: PostgreSQL and
# nats-server on loopback (scripts/services.sh), a database for the cluster, the release
# binary, and three nodes `a`, `b`, `c` on free loopback ports, each with the same API key,
# device issuer and webhook secret (made here at random) and `--demo`. Prints the nodes'
# addresses and how to talk to them; Ctrl-C stops the nodes (SIGTERM: each hands its
# sessions over, the last one keeps them in the store) and the engines, if it started them.
#
#   scripts/cluster.sh            # nodes a b c, database idvb_cluster (kept between runs)
#   scripts/cluster.sh --fresh    # the same on an emptied database
#   scripts/cluster.sh a b c d    # other node ids
#
# Three nodes on one box prove that the cluster is correct, not that it is fast: they
# share the cores with PostgreSQL and NATS (docs/cluster.md, "Scaling").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

fresh=0
nodes=()
for arg in "$@"; do
    case "$arg" in
        --fresh) fresh=1 ;;
        -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "cluster.sh: unknown option $arg" >&2; exit 2 ;;
        *) nodes+=("$arg") ;;
    esac
done
[ ${#nodes[@]} -gt 0 ] || nodes=(a b c)
db="${IDVB_CLUSTER_DB:-idvb_cluster}"
[[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "cluster.sh: IDVB_CLUSTER_DB must be a plain name" >&2; exit 2; }

log() { echo "cluster: $*" >&2; }

# The engines: reuse the ones already running in IDVB_SERVICES_DIR (then they are left
# running at the end: others may use them), else start them and stop them at the end.
started_services=0
if env_lines=$(scripts/services.sh env 2>/dev/null); then
    log "using the running PostgreSQL and NATS"
else
    env_lines=$(scripts/services.sh start)
    started_services=1
fi
eval "$env_lines"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/idvb-cluster.XXXXXX")
pids=()
stopping=0
stop_all() {
    [ "$stopping" = 1 ] && return
    stopping=1
    trap '' INT TERM
    if [ ${#pids[@]} -gt 0 ]; then
        log "stopping the nodes (SIGTERM: each hands its sessions over)"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # Bounded: a node drains for at most --shutdown-timeout (default 30 s).
        for _ in $(seq 1 400); do
            alive=0
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ "$alive" = 0 ] && break
            sleep 0.1
        done
        for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    if [ "$started_services" = 1 ]; then
        scripts/services.sh stop
    fi
    log "logs kept in $run_dir"
}
trap 'stop_all; exit 130' INT TERM
trap stop_all EXIT

# psql from the PostgreSQL installation services.sh uses (it is not always on PATH).
psql_bin=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | tail -n 1)
[ -n "$psql_bin" ] || { log "psql is missing"; exit 1; }
psql() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 "$@"; }
if [ "$fresh" = 1 ]; then
    psql "$IDVB_TEST_PG" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >&2
fi
if [ "$(psql "$IDVB_TEST_PG" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    psql "$IDVB_TEST_PG" -c "CREATE DATABASE $db" >&2
    log "created database $db"
else
    log "using database $db (--fresh empties it)"
fi
store="${IDVB_TEST_PG%/*}/$db"

log "building the release binary"
cargo build --release --quiet --bin idv-broker
bin="$root/target/release/idv-broker"

# One set of credentials for the whole cluster: any node must accept what another issued.
random() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }
api_key="cluster-key-$(random)"
issuer_secret="cluster-issuer-$(random)"
webhook_secret="cluster-webhook-$(random)"
# Seals every message between the nodes (SPEC §7): the same on each, new at each run.
cluster_key="$(head -c 32 /dev/urandom | base64)"

addresses=()
for id in "${nodes[@]}"; do
    out="$run_dir/node-$id.out"
    : >"$out"
    # Own process group, so a Ctrl-C in this terminal reaches the nodes only through
    # stop_all's SIGTERM (in order), not all at once from the terminal.
    setsid "$bin" --bind 127.0.0.1:0 --store "$store" --nats "$IDVB_TEST_NATS" --node-id "$id" \
        --cluster-key "$cluster_key" --demo --rate-limit 0 \
        --api-key "Cluster=$api_key" --issuer "phone-app=$issuer_secret" \
        --webhook-secret "$webhook_secret" --webhook-allow-private \
        </dev/null >"$out" 2>"$run_dir/node-$id.log" &
    pids+=($!)
    address=""
    for _ in $(seq 1 300); do
        address=$(sed -n 's/^listening on //p' "$out" | head -n 1)
        [ -n "$address" ] && break
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then
            log "node $id did not start:"
            tail -n 20 "$run_dir/node-$id.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    [ -n "$address" ] || { log "node $id printed no address in 30 s"; tail -n 20 "$run_dir/node-$id.log" >&2; exit 1; }
    addresses+=("$address")
done

nodes_arg=$(for i in "${!nodes[@]}"; do printf '%s=%s,' "${nodes[$i]}" "${addresses[$i]}"; done)
nodes_arg=${nodes_arg%,}
echo
echo "${#nodes[@]} nodes on PostgreSQL ($store) and NATS ($IDVB_TEST_NATS):"
for i in "${!nodes[@]}"; do
    printf '  node %-4s %s   (log: %s)\n' "${nodes[$i]}" "${addresses[$i]}" "$run_dir/node-${nodes[$i]}.log"
done
cat <<EOF

Any node answers any request; try creating on one and watching on another:

  export IDVB_API_KEY=$api_key
  curl -s -X POST ${addresses[0]}/v1/sessions -H "X-Api-Key: \$IDVB_API_KEY" \\
    -H 'Content-Type: application/json' -d '{"scopes": ["full_name"]}'
  JWT=\$($bin token --issuer phone-app=$issuer_secret --sub alice)
  curl -s ${addresses[1]}/v1/sessions/\$ID/information -H "Authorization: Bearer \$JWT"

Demo: ${addresses[0]}/demo (each node's demo is its own). Webhook secret: $webhook_secret
Bench: cargo bench --bench ws_load -- --nodes $nodes_arg \\
         --api-key $api_key --issuer phone-app=$issuer_secret --store $store

Ctrl-C stops the cluster.
EOF

# Stay until Ctrl-C; say so when a node ends by itself.
declare -A reported=()
while true; do
    for i in "${!pids[@]}"; do
        if [ -z "${reported[$i]:-}" ] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
            reported[$i]=1
            log "node ${nodes[$i]} exited; its sessions go to the others (log: $run_dir/node-${nodes[$i]}.log)"
        fi
    done
    sleep 1
done
