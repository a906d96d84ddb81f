#!/usr/bin/env bash
# Starts (or stops) the two engines several nodes run on, on loopback, for tests and
# for trying a cluster by hand: PostgreSQL in a temporary directory (as a non-root
# user: PostgreSQL refuses root) and nats-server. Installs what is missing (Debian).
#
#   eval "$(scripts/services.sh start)"   # exports IDVB_TEST_PG and IDVB_TEST_NATS, and
#                                         # IDVB_TEST_PG_CA, IDVB_TEST_PG_TLS_USER and
#                                         # IDVB_TEST_PG_TLS_PASSWORD for the TLS tests
#   scripts/services.sh stop              # stops both, deletes the directory
#
# State lives in ${IDVB_SERVICES_DIR:-/tmp/idvb-services}; `start` when both already
# run there prints the same exports again.
set -euo pipefail

DIR="${IDVB_SERVICES_DIR:-/tmp/idvb-services}"
PG_USER=idvb-pg
# The role the TLS tests log in as: by password (SCRAM), and only over TLS.
PG_TLS_ROLE=idvb_tls

log() { echo "services: $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

pg_bin() {
    local b
    for b in /usr/lib/postgresql/*/bin; do
        if [ -x "$b/initdb" ]; then echo "$b"; return; fi
    done
    return 1
}

install_missing() {
    local pkgs=()
    pg_bin >/dev/null || pkgs+=(postgresql)
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || pkgs+=(nats-server)
    # The test certificates (PostgreSQL's TLS, and the cluster tests' own) are made by it.
    command -v openssl >/dev/null || pkgs+=(openssl)
    # A limits test reads the listener's backlog with `ss`.
    command -v ss >/dev/null || pkgs+=(iproute2)
    if [ ${#pkgs[@]} -gt 0 ]; then
        log "installing ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "${pkgs[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${pkgs[@]}" >&2; }
    fi
}

# Runs a command as the PostgreSQL user (as root) or as ourselves.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

exports() {
    echo "export IDVB_TEST_PG=postgres://postgres@127.0.0.1:$(cat "$DIR/pg.port")/postgres"
    echo "export IDVB_TEST_NATS=nats://127.0.0.1:$(cat "$DIR/nats.port")"
    # Services started by an older version of this script have no TLS.
    if [ -f "$DIR/pg-tls/password" ]; then
        echo "export IDVB_TEST_PG_CA=$DIR/pg-tls/ca.crt"
        echo "export IDVB_TEST_PG_TLS_USER=$PG_TLS_ROLE"
        echo "export IDVB_TEST_PG_TLS_PASSWORD=$(cat "$DIR/pg-tls/password")"
    fi
}

# A throw-away CA and a server certificate for 127.0.0.1 and localhost signed by it,
# installed as the data directory's server.crt/server.key (PostgreSQL's defaults); the
# CA stays in $DIR/pg-tls for the clients. EC P-256: quick to make, and rustls takes it.
make_pg_tls() {
    local d="$DIR/pg-tls"
    mkdir -p "$d"
    cat >"$d/ca.cnf" <<'CNF'
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = idvb test PostgreSQL CA
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
CNF
    printf '%s\n' "basicConstraints = CA:FALSE" "keyUsage = digitalSignature" \
        "extendedKeyUsage = serverAuth" "subjectAltName = DNS:localhost,IP:127.0.0.1" >"$d/server.ext"
    openssl req -x509 -config "$d/ca.cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -nodes -days 30 -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 30 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
    install -m 600 "$d/server.crt" "$DIR/pg/server.crt"
    install -m 600 "$d/server.key" "$DIR/pg/server.key"
    if [ "$(id -u)" = 0 ]; then chown "$PG_USER" "$DIR/pg/server.crt" "$DIR/pg/server.key"; fi
    chmod 644 "$d/ca.crt"
    python3 -c 'import secrets; print(secrets.token_hex(16))' >"$d/password"
    # First match wins: the TLS role logs in by password over TLS and never without it,
    # above initdb's trust lines, which keep serving every other user as before.
    local hba="$DIR/pg/pg_hba.conf"
    {
        echo "hostssl   all $PG_TLS_ROLE 127.0.0.1/32 scram-sha-256"
        echo "hostnossl all $PG_TLS_ROLE 127.0.0.1/32 reject"
        cat "$hba"
    } >"$hba.new"
    mv "$hba.new" "$hba"
    if [ "$(id -u)" = 0 ]; then chown "$PG_USER" "$hba"; fi
}

running() {
    [ -f "$DIR/nats.pid" ] && kill -0 "$(cat "$DIR/nats.pid")" 2>/dev/null &&
        [ -f "$DIR/pg/postmaster.pid" ] && kill -0 "$(head -1 "$DIR/pg/postmaster.pid")" 2>/dev/null
}

start() {
    if running; then exports; return; fi
    stop_quiet
    install_missing
    local bin nats
    bin="$(pg_bin)"
    nats="$(command -v nats-server || echo /usr/sbin/nats-server)"
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    if [ "$(id -u)" = 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
    fi
    mkdir -p "$DIR/pg"
    [ "$(id -u)" = 0 ] && chown "$PG_USER" "$DIR/pg"
    chmod 700 "$DIR/pg"
    local pg_port nats_port
    pg_port="$(free_port)"
    as_pg "$bin/initdb" -D "$DIR/pg" -U postgres --auth=trust --no-sync -E UTF8 >"$DIR/initdb.log" 2>&1 ||
        { cat "$DIR/initdb.log" >&2; exit 1; }
    make_pg_tls
    # Durable commits as in production (fsync on); loopback only; sockets in the data dir;
    # TLS offered (a client that does not ask for it is served as before).
    as_pg "$bin/pg_ctl" -D "$DIR/pg" -l "$DIR/pg/server.log" -w -t 60 \
        -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $DIR/pg -c max_connections=400 -c shared_buffers=128MB -c ssl=on" \
        start >&2
    echo "$pg_port" >"$DIR/pg.port"
    as_pg "$bin/psql" -h "$DIR/pg" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE ROLE $PG_TLS_ROLE LOGIN PASSWORD '$(cat "$DIR/pg-tls/password")'" >&2

    nats_port="$(free_port)"
    setsid "$nats" -a 127.0.0.1 -p "$nats_port" -P "$DIR/nats.pid" -l "$DIR/nats.log" </dev/null >/dev/null 2>&1 &
    disown || true
    for _ in $(seq 1 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$nats_port),0.2)" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "$nats_port" >"$DIR/nats.port"
    log "PostgreSQL on 127.0.0.1:$pg_port, NATS on 127.0.0.1:$nats_port ($DIR)"
    exports
}

stop_quiet() {
    local bin
    if [ -f "$DIR/pg/postmaster.pid" ] && bin="$(pg_bin)"; then
        as_pg "$bin/pg_ctl" -D "$DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ -f "$DIR/nats.pid" ]; then
        kill "$(cat "$DIR/nats.pid")" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}

case "${1:-}" in
    start) start ;;
    stop) stop_quiet; log "stopped" ;;
    env) running && exports ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
