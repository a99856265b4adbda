#!/usr/bin/env bash
# Local Redis for development and tests, kept under ./var/redis (no persistence).
#
#   .ci/redis.sh start    start redis-server daemonized on 127.0.0.1:<port>; no-op if running
#   .ci/redis.sh stop     stop it (no-op if not running)
#   .ci/redis.sh status   exit 0 if running
#   .ci/redis.sh url      print redis://127.0.0.1:<port>
#
# Environment:
#   LATTICE_REDIS_PORT=6390
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${LATTICE_REDIS_PORT:-6390}"
DIR="$ROOT/var/redis"
PIDFILE="$DIR/redis.pid"
LOG="$DIR/redis.log"

log() { echo "redis.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

url() { echo "redis://127.0.0.1:${PORT}"; }

# redis-server, and openssl (the split-over-TLS test makes its certificates with it).
ensure_redis() {
    REDIS_SERVER="$(command -v redis-server || true)"
    [[ -z "$REDIS_SERVER" && -x /usr/bin/redis-server ]] && REDIS_SERVER=/usr/bin/redis-server
    local missing=()
    [[ -n "$REDIS_SERVER" ]] || missing+=(redis-server)
    command -v openssl >/dev/null || missing+=(openssl)
    if [[ ${#missing[@]} -gt 0 ]]; then
        if [[ "$(id -u)" == 0 ]]; then
            log "${missing[*]} not found; installing with apt-get"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update
            apt-get install -y --no-install-recommends "${missing[@]}"
            REDIS_SERVER="$(command -v redis-server || echo /usr/bin/redis-server)"
            [[ -x "$REDIS_SERVER" ]] || die "apt-get install redis-server did not provide redis-server"
        else
            log "${missing[*]} not found. Install with:"
            echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
    fi
}

# PING over a plain TCP socket (no redis-cli needed).
ping() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || exit 1
        [[ "$reply" == "+PONG"* ]]
    ) 2>/dev/null
}

pid_alive() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

cmd_start() {
    ensure_redis
    mkdir -p "$DIR"
    if pid_alive; then
        ping || die "redis pid $(cat "$PIDFILE") is alive but 127.0.0.1:$PORT does not answer PING (another port? run '$0 stop' first)"
        return 0
    fi
    rm -f "$PIDFILE"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "something else is already listening on 127.0.0.1:$PORT (set LATTICE_REDIS_PORT to another port)"
    fi
    log "starting on 127.0.0.1:$PORT, log: $LOG"
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
        --daemonize yes --pidfile "$PIDFILE" --logfile "$LOG" --dir "$DIR" \
        --save '' --appendonly no --databases 16 \
        || die "redis-server failed to start (see $LOG)"
    local i
    for i in $(seq 1 100); do
        ping && return 0
        sleep 0.1
    done
    tail -n 20 "$LOG" >&2 || true
    die "redis did not answer PING on 127.0.0.1:$PORT"
}

cmd_stop() {
    if pid_alive; then
        local pid i
        pid="$(cat "$PIDFILE")"
        log "stopping (pid $pid)"
        kill -TERM "$pid"
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }
            sleep 0.1
        done
        die "redis pid $pid did not exit"
    else
        rm -f "$PIDFILE"
        log "not running"
    fi
}

cmd_status() {
    if pid_alive && ping; then
        echo "running: $(url)"
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
    *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
