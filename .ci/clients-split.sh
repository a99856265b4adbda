#!/usr/bin/env bash
# The real-client tests (tests/clients) against a split topology: `lattice up` runs
# config/split.yaml (main: client + sync and the other writers / events1: the events
# writer / sync2: sync) on free ports, with a fresh database and a Redis key prefix of its
# own; tests/clients/run.sh runs the unchanged client conversations against main; then
# `lattice up` gets SIGTERM, and the script checks that it and every instance it started
# are gone.
#
#   .ci/clients-split.sh            build, run both client tests against the split
#   .ci/clients-split.sh nio        only one of them (nio | jssdk)
#
# Environment:
#   LATTICE_PG_PORT (5433), LATTICE_REDIS_PORT (6390)   the services of .ci/postgres.sh and
#                                   .ci/redis.sh (started here if needed; PostgreSQL in fast mode)
#   LATTICE_CLIENTS_NO_BUILD=1      skip `cargo build`
#   LATTICE_CLIENTS_BIN=path        the lattice binary (default $CARGO_TARGET_DIR or target, /debug/lattice)
#   LATTICE_CLIENTS_KEEP=1          keep var/clients-split/run-<pid>/ (configs, `lattice up` log) even on success
#
# Prints what run.sh prints (PASS/FAIL per test, "N passed, N failed"); exits non-zero if a
# test failed, the topology did not come up, or a process of it outlived the stop.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUN_DIR="$ROOT/var/clients-split/run-$$"
DB="lattice_clients_split_$$"
PREFIX="lattice_clients_split_$$"
BIN="${LATTICE_CLIENTS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/lattice}"
PG_PORT="${LATTICE_PG_PORT:-5433}"
REDIS_PORT="${LATTICE_REDIS_PORT:-6390}"
UP_LOG="$RUN_DIR/up.log"
UP_PID=""
DB_CREATED=0

log() { echo "clients-split: $*" >&2; }

# SIGTERM to `lattice up` (it stops its children and waits up to its grace period), SIGKILL
# after 30 s; then every instance it ever had must be gone too. Returns 1 if something had
# to be killed or survived.
stop_topology() {
    [[ -n "$UP_PID" ]] || return 0
    local rc=0 pid i children
    children="$(pgrep -P "$UP_PID" || true)"
    log "stopping lattice up (pid $UP_PID; instances: $(echo $children))"
    kill -TERM "$UP_PID" 2>/dev/null || true
    for i in $(seq 1 300); do
        kill -0 "$UP_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$UP_PID" 2>/dev/null; then
        log "error: lattice up still running 30 s after SIGTERM; killing it"
        kill -KILL "$UP_PID" 2>/dev/null || true
        rc=1
    fi
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=""
    # Any lattice process still holding our run directory's topology is a leftover.
    for pid in $children $(pgrep -f -- "$RUN_DIR/" || true); do
        [[ "$pid" == "$$" ]] && continue
        if kill -0 "$pid" 2>/dev/null; then
            log "error: process $pid ($(ps -o args= -p "$pid" 2>/dev/null || echo '?')) outlived lattice up; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            rc=1
        fi
    done
    [[ $rc == 0 ]] && log "lattice up and its instances stopped; no process left"
    return $rc
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_topology || rc=1
    if [[ "$DB_CREATED" == 1 ]]; then
        .ci/postgres.sh psql -d postgres -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1 \
            || log "warning: could not drop database $DB"
    fi
    # The mailbox streams and reply lists of this run.
    if command -v redis-cli >/dev/null; then
        redis-cli -p "$REDIS_PORT" --scan --pattern "$PREFIX:*" 2>/dev/null \
            | xargs -r redis-cli -p "$REDIS_PORT" del >/dev/null 2>&1 || true
    fi
    if [[ $rc == 0 && -z "${LATTICE_CLIENTS_KEEP:-}" ]]; then
        rm -rf "$RUN_DIR"
    elif [[ -d "$RUN_DIR" ]]; then
        log "configs and the lattice up log kept in ${RUN_DIR#"$ROOT"/}"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

mkdir -p "$RUN_DIR"

if [[ -z "${LATTICE_CLIENTS_NO_BUILD:-}" ]]; then
    log "cargo build"
    cargo build
fi
[[ -x "$BIN" ]] || { log "error: $BIN not found (did the build produce the lattice binary?)"; exit 1; }

LATTICE_PG_FAST="${LATTICE_PG_FAST:-1}" .ci/postgres.sh start
.ci/redis.sh start
.ci/postgres.sh psql -d postgres -c "create database \"$DB\"" >/dev/null
DB_CREATED=1

# The topology of config/split.yaml on three free ports, loading a homeserver file of
# this run's own.
read -r MAIN_PORT EVENTS_PORT SYNC_PORT < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(3)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
')
HOMESERVER="$RUN_DIR/homeserver.yaml"
TOPOLOGY="$RUN_DIR/split.yaml"
"$BIN" generate-config --server-name localhost >"$HOMESERVER"
sed -e "s|^homeserver: .*|homeserver: $HOMESERVER|" \
    -e "s/\b8008\b/$MAIN_PORT/g" -e "s/\b8010\b/$EVENTS_PORT/g" -e "s/\b8011\b/$SYNC_PORT/g" \
    config/split.yaml >"$TOPOLOGY"
for port in "$MAIN_PORT" "$EVENTS_PORT" "$SYNC_PORT"; do
    [[ "$(grep -v '^\s*#' "$TOPOLOGY" | grep -c "\b$port\b")" == 2 ]] \
        || { log "error: config/split.yaml no longer listens on 8008/8010/8011 (instance_map and listen)"; exit 1; }
done

BASE_URL="http://127.0.0.1:$MAIN_PORT"
export LATTICE__DATABASE__URL="postgresql://lattice@127.0.0.1:$PG_PORT/$DB"
export LATTICE__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export LATTICE__REDIS__PREFIX="$PREFIX"
export LATTICE__ENABLE_REGISTRATION=true
export LATTICE__RATE_LIMITS__ENABLED=false
export LATTICE__PUBLIC_BASEURL="$BASE_URL"

log "lattice up: main $BASE_URL, events1 :$EVENTS_PORT, sync2 :$SYNC_PORT (database $DB, redis prefix $PREFIX), log: ${UP_LOG#"$ROOT"/}"
"$BIN" up --topology "$TOPOLOGY" >"$UP_LOG" 2>&1 </dev/null &
UP_PID=$!

# Every instance answers /health (main last: it is the one the clients use).
for port in "$EVENTS_PORT" "$SYNC_PORT" "$MAIN_PORT"; do
    if ! python3 - "http://127.0.0.1:$port/health" "$UP_PID" <<'EOF'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
last = "no answer"
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        print(f"clients-split: lattice up exited before {url} answered ({last})", file=sys.stderr)
        sys.exit(1)
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
            last = f"HTTP {r.status}"
    except Exception as e:  # connection refused while starting
        last = f"{type(e).__name__}: {e}"
    time.sleep(0.2)
print(f"clients-split: {url} did not answer within 60 s ({last})", file=sys.stderr)
sys.exit(1)
EOF
    then
        echo "---- last lines of the lattice up log ----" >&2
        tail -n 40 "$UP_LOG" >&2 || true
        exit 1
    fi
done
log "every instance answers /health"

rc=0
LATTICE_CLIENTS_BASE_URL="$BASE_URL" LATTICE_CLIENTS_SERVER_LOG="$UP_LOG" \
    tests/clients/run.sh "$@" || rc=$?
stop_topology || rc=1
exit $rc
