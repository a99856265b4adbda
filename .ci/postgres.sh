#!/usr/bin/env bash
# Local PostgreSQL for development and tests, kept entirely under ./var/pg.
#
#   .ci/postgres.sh start    start the cluster (initdb + create db `lattice` if needed); no-op if running
#   .ci/postgres.sh stop     stop it (no-op if not running)
#   .ci/postgres.sh status   exit 0 if running
#   .ci/postgres.sh url      print postgresql://lattice@127.0.0.1:<port>/lattice
#   .ci/postgres.sh psql ... run psql against the cluster (as superuser `lattice`)
#
# Environment:
#   LATTICE_PG_PORT=5433   TCP port (listens on 127.0.0.1 only)
#   LATTICE_PG_DIR=var/pg  where the cluster lives (another directory runs a second cluster
#                          from the same checkout, e.g. on another port)
#   LATTICE_PG_FAST=1      test mode: fsync/full_page_writes/synchronous_commit off.
#                          Without it the cluster is durable. A durable request always
#                          switches a running fast cluster back to durable (config reload,
#                          no restart); a fast request never downgrades a running durable one.
#
# Run as root, the server runs as the `postgres` system user (postgres refuses root);
# run as any other user, it runs as that user.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${LATTICE_PG_PORT:-5433}"
FAST="${LATTICE_PG_FAST:-0}"
[[ "$FAST" == "1" || "$FAST" == "true" || "$FAST" == "yes" ]] && FAST=1 || FAST=0
PGROOT="${LATTICE_PG_DIR:-$ROOT/var/pg}"
[[ "$PGROOT" == /* ]] || PGROOT="$PWD/$PGROOT"
DATA="$PGROOT/data"
SOCKDIR="$PGROOT/run"
LOG="$PGROOT/postgres.log"
DB=lattice
SUPERUSER=lattice

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

url() { echo "postgresql://${SUPERUSER}@127.0.0.1:${PORT}/${DB}"; }

find_pgbin() {
    local d best=""
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [[ -x "$d/postgres" && -x "$d/initdb" && -x "$d/pg_ctl" ]] && best="$d"
    done
    echo "$best"
}

ensure_pgbin() {
    PGBIN="$(find_pgbin)"
    if [[ -z "$PGBIN" ]]; then
        if [[ "$(id -u)" == 0 ]]; then
            log "PostgreSQL server not found; installing it with apt-get"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update
            apt-get install -y --no-install-recommends postgresql
            PGBIN="$(find_pgbin)"
            [[ -n "$PGBIN" ]] || die "apt-get install postgresql did not provide /usr/lib/postgresql/*/bin/postgres"
        else
            log "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin). Install them with:"
            echo "    sudo apt-get update && sudo apt-get install -y postgresql" >&2
            exit 1
        fi
    fi
}

# Run a PostgreSQL server-side command as the user that owns the cluster.
AS_PG=()
setup_user() {
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' system user (apt-get install postgresql creates it)"
        AS_PG=(runuser -u postgres --)
    fi
}
as_pg() { (cd "$PGROOT" && "${AS_PG[@]}" "$@"); }

# As root: make sure the postgres user can reach ./var/pg (every ancestor directory needs +x for it).
fix_traversal() {
    [[ "$(id -u)" == 0 ]] || return 0
    local p="$PGROOT"
    local dirs=()
    while [[ "$p" != "/" && -n "$p" ]]; do dirs=("$p" "${dirs[@]}"); p="$(dirname "$p")"; done
    local d
    for d in "${dirs[@]}"; do
        [[ "$d" == "$PGROOT" ]] && continue
        if ! runuser -u postgres -- test -x "$d" 2>/dev/null; then
            log "chmod o+x $d (so the postgres user can reach $PGROOT)"
            chmod o+x "$d"
        fi
    done
    if [[ "$(stat -c %U "$PGROOT")" != postgres || ( -e "$DATA" && "$(stat -c %U "$DATA")" != postgres ) ]]; then
        chown -R postgres: "$PGROOT"
    fi
    chmod 700 "$PGROOT"
}

is_running() {
    [[ -f "$DATA/PG_VERSION" ]] || return 1
    as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

psql_() {
    PGCONNECT_TIMEOUT=5 "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" "$@"
}

write_mode_conf() {
    local f="$DATA/lattice-mode.conf" want
    if [[ "$1" == 1 ]]; then
        want=$'# written by .ci/postgres.sh: FAST (test) mode, not crash-safe\nfsync = off\nfull_page_writes = off\nsynchronous_commit = off\n'
    else
        want=$'# written by .ci/postgres.sh: durable mode\nfsync = on\nfull_page_writes = on\nsynchronous_commit = on\n'
    fi
    printf '%s' "$want" | as_pg tee "$f" >/dev/null
}

current_mode_fast() { grep -q '^fsync = off' "$DATA/lattice-mode.conf" 2>/dev/null; }

init_cluster() {
    log "creating cluster in $DATA"
    as_pg mkdir -p "$DATA"
    as_pg chmod 700 "$DATA"
    as_pg "$PGBIN/initdb" -D "$DATA" -U "$SUPERUSER" --auth-local=trust --auth-host=trust \
        -E UTF8 --locale=C >"$PGROOT/initdb.log" 2>&1 \
        || { cat "$PGROOT/initdb.log" >&2; die "initdb failed"; }
    # Our settings live in included files so they can be rewritten on each start.
    printf "\n# added by .ci/postgres.sh\ninclude_if_exists = 'lattice.conf'\ninclude_if_exists = 'lattice-mode.conf'\n" \
        | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
    # Only loopback clients, all trusted (initdb's default hba already lists 127.0.0.1/32 and ::1/128).
}

cmd_start() {
    ensure_pgbin
    setup_user
    mkdir -p "$PGROOT"
    fix_traversal
    [[ -f "$DATA/PG_VERSION" ]] || init_cluster

    if is_running; then
        local running_port
        running_port="$(sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true)"
        if [[ -n "$running_port" && "$running_port" != "$PORT" ]]; then
            die "cluster in $DATA is already running on port $running_port, not $PORT; run '$0 stop' first"
        fi
        if [[ "$FAST" == 0 ]] && current_mode_fast; then
            log "running in fast mode; switching to durable (reload)"
            write_mode_conf 0
            as_pg "$PGBIN/pg_ctl" -D "$DATA" reload >/dev/null
        fi
    else
        # Unix socket paths are limited to ~107 bytes; fall back to TCP only if ours is too long.
        local sock="$SOCKDIR"
        if (( ${#SOCKDIR} + 20 > 100 )); then
            log "socket dir path too long for a unix socket; using TCP only"
            sock=""
        else
            as_pg mkdir -p "$SOCKDIR"
        fi
        printf "# written by .ci/postgres.sh on each start\nlisten_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nmax_connections = 300\nshared_buffers = 128MB\n" \
            "$PORT" "$sock" | as_pg tee "$DATA/lattice.conf" >/dev/null
        write_mode_conf "$FAST"
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            die "something else is already listening on 127.0.0.1:$PORT (set LATTICE_PG_PORT to another port)"
        fi
        log "starting on 127.0.0.1:$PORT ($([[ $FAST == 1 ]] && echo fast/test || echo durable) mode), log: $LOG"
        as_pg touch "$LOG"
        if ! as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null; then
            tail -n 30 "$LOG" >&2 || true
            die "pg_ctl start failed"
        fi
    fi

    # Wait for TCP readiness (pg_ctl -w already waited, but be safe when it was already running).
    local i
    for i in $(seq 1 60); do
        psql_ -d postgres -tAc 'select 1' >/dev/null 2>&1 && break
        sleep 0.5
    done
    psql_ -d postgres -tAc 'select 1' >/dev/null || die "cannot connect to 127.0.0.1:$PORT as $SUPERUSER"
    if [[ "$(psql_ -d postgres -tAc "select 1 from pg_database where datname = '$DB'")" != 1 ]]; then
        log "creating database $DB"
        psql_ -d postgres -c "create database $DB" >/dev/null
    fi
}

cmd_stop() {
    ensure_pgbin
    setup_user
    if is_running; then
        log "stopping"
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
    else
        log "not running"
    fi
}

cmd_status() {
    PGBIN="$(find_pgbin)"
    [[ -n "$PGBIN" ]] || { echo "not installed"; return 1; }
    setup_user
    if [[ -d "$PGROOT" ]] && is_running; then
        echo "running: $(url)$(current_mode_fast && echo ' (fast mode)')"
    else
        echo "stopped"
        return 1
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    url) url ;;
    psql) shift; ensure_pgbin; psql_ "$@" ;;
    *) echo "usage: $0 start|stop|status|url|psql [args]" >&2; exit 2 ;;
esac
