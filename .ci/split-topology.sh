# Sourced, not run: config/split.yaml under `lattice up` (main: client + sync and the
# other writers / events1: the events writer / sync2: sync) on three free ports, with a
# homeserver file, a database and a Redis key prefix of the caller's own. Used by
# .ci/clients-split.sh and .ci/bench-run.sh --split.
#
# Set before split_up:
#   SPLIT_BIN            the lattice binary
#   SPLIT_DIR            a directory of this run's own (configs, up.log); it is created
#   SPLIT_DATABASE_URL   the (fresh) database every instance uses
#   SPLIT_REDIS_PORT     the Redis of .ci/redis.sh (already started)
#   SPLIT_PREFIX         this run's Redis key prefix
# and define log() (one line on stderr).
#
#   split_up [NAME=VALUE ...]   starts `lattice up` (extra environment for every instance as
#                               arguments), waits until every instance answers /health; sets
#                               UP_PID, UP_LOG, MAIN_PORT, EVENTS_PORT, SYNC_PORT. Returns 1
#                               (after printing the log's tail) if the topology did not come up.
#   split_instance_pid NAME     the pid of instance NAME (a child of `lattice up`)
#   split_stop                  SIGTERM to `lattice up`, SIGKILL after 30 s; then every instance
#                               it had must be gone. Returns 1 if something had to be killed.
#   split_forget_redis          deletes the keys under SPLIT_PREFIX (mailbox streams, reply lists)

UP_PID=""

split_up() {
    mkdir -p "$SPLIT_DIR"
    UP_LOG="$SPLIT_DIR/up.log"
    read -r MAIN_PORT EVENTS_PORT SYNC_PORT < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(3)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
')
    local homeserver="$SPLIT_DIR/homeserver.yaml" topology="$SPLIT_DIR/split.yaml" port
    "$SPLIT_BIN" generate-config --server-name localhost >"$homeserver"
    sed -e "s|^homeserver: .*|homeserver: $homeserver|" \
        -e "s/\b8008\b/$MAIN_PORT/g" -e "s/\b8010\b/$EVENTS_PORT/g" -e "s/\b8011\b/$SYNC_PORT/g" \
        config/split.yaml >"$topology"
    for port in "$MAIN_PORT" "$EVENTS_PORT" "$SYNC_PORT"; do
        if [[ "$(grep -v '^\s*#' "$topology" | grep -c "\b$port\b")" != 2 ]]; then
            log "error: config/split.yaml no longer listens on 8008/8010/8011 (instance_map and listen)"
            return 1
        fi
    done

    log "lattice up: main :$MAIN_PORT, events1 :$EVENTS_PORT, sync2 :$SYNC_PORT (database ${SPLIT_DATABASE_URL##*/}, redis prefix $SPLIT_PREFIX), log: $UP_LOG"
    env LATTICE__DATABASE__URL="$SPLIT_DATABASE_URL" \
        LATTICE__REDIS__URL="redis://127.0.0.1:$SPLIT_REDIS_PORT" \
        LATTICE__REDIS__PREFIX="$SPLIT_PREFIX" \
        LATTICE__ENABLE_REGISTRATION=true \
        LATTICE__RATE_LIMITS__ENABLED=false \
        LATTICE__PUBLIC_BASEURL="http://127.0.0.1:$MAIN_PORT" \
        "$@" \
        "$SPLIT_BIN" up --topology "$topology" >"$UP_LOG" 2>&1 </dev/null &
    UP_PID=$!

    # Every instance answers /health (main last: it is the one clients use).
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
        print(f"lattice up exited before {url} answered ({last})", file=sys.stderr)
        sys.exit(1)
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
            last = f"HTTP {r.status}"
    except Exception as e:  # connection refused while starting
        last = f"{type(e).__name__}: {e}"
    time.sleep(0.2)
print(f"{url} did not answer within 60 s ({last})", file=sys.stderr)
sys.exit(1)
EOF
        then
            echo "---- last lines of the lattice up log ----" >&2
            tail -n 40 "$UP_LOG" >&2 || true
            return 1
        fi
    done
    log "every instance answers /health"
}

split_instance_pid() {
    pgrep -P "$UP_PID" -f -- "--instance $1( |\$)" | head -n 1
}

split_stop() {
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
    for pid in $children $(pgrep -f -- "$SPLIT_DIR/" || true); do
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

split_forget_redis() {
    command -v redis-cli >/dev/null || return 0
    redis-cli -p "$SPLIT_REDIS_PORT" --scan --pattern "$SPLIT_PREFIX:*" 2>/dev/null \
        | xargs -r redis-cli -p "$SPLIT_REDIS_PORT" del >/dev/null 2>&1 || true
}
