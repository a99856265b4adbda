#!/usr/bin/env bash
# Real-client tests: start a fresh Lattice (debug build) on a free port with its own
# database, run the matrix-nio and matrix-js-sdk conversations against it, tear down.
#
#   tests/clients/run.sh            build, run every test
#   tests/clients/run.sh nio        only the nio test   (or: jssdk, jssdk_e2ee, nio_e2ee; several may be named)
#
# Tests: nio (nio_conversation.py), jssdk (jssdk_conversation.mjs), jssdk_e2ee (jssdk_e2ee.mjs:
# two js-sdk users with the Rust crypto, cross-signing, key backup, a second device),
# nio_e2ee (jssdk_e2ee.mjs --nio: js-sdk and matrix-nio with its olm crypto in one encrypted room).
#
# Environment:
#   LATTICE_CLIENTS_BASE_URL=url    test the server already running there (registration open,
#                                   rate limits off) instead of starting one: no build, no
#                                   database (.ci/clients-split.sh uses this)
#   LATTICE_CLIENTS_SERVER_LOG=path with LATTICE_CLIENTS_BASE_URL: the log to show when a test fails
#   LATTICE_PG_PORT (5433)          the test PostgreSQL of .ci/postgres.sh (started here if needed, fast mode)
#   LATTICE_CLIENTS_NO_BUILD=1      skip `cargo build`
#   LATTICE_CLIENTS_BIN=path        server binary to test (default $CARGO_TARGET_DIR or target, /debug/lattice)
#   LATTICE_CLIENTS_REDIS_URL=...   also give the server a redis (LATTICE__REDIS__URL)
#   LATTICE_CLIENTS_KEEP=1          keep var/clients/run-<pid>/ (config, server log) even on success
#   LATTICE_CLIENT_TEST_VERBOSE=1   print the js-sdk's warnings as they happen
#
# Everything it writes is under ./var (var/clients/run-<pid>/). Prints PASS/FAIL per test and
# a final "N passed, N failed" line; exits non-zero if anything failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

TESTS=(nio jssdk jssdk_e2ee nio_e2ee)
if [[ $# -gt 0 ]]; then TESTS=("$@"); fi

RUN_DIR="$ROOT/var/clients/run-$$"
DB="lattice_clients_$$"
BIN="${LATTICE_CLIENTS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/lattice}"
SERVER_PID=""
SERVER_LOG=""
DB_CREATED=0
PASSED=0
FAILED=0
RESULTS=()

log() { echo "clients: $*" >&2; }

summary() {
    echo
    for r in "${RESULTS[@]}"; do echo "  $r"; done
    echo "$PASSED passed, $FAILED failed"
}

stop_server() {
    # SIGINT (the server's clean shutdown), then SIGTERM, then SIGKILL.
    [[ -n "$SERVER_PID" ]] || return 0
    local sig i prev=INT
    for sig in INT TERM KILL; do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        [[ $sig == INT ]] || log "warning: server (pid $SERVER_PID) still running after SIG$prev; sending SIG$sig"
        kill -"$sig" "$SERVER_PID" 2>/dev/null || true
        for i in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        prev=$sig
    done
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_server
    if [[ "$DB_CREATED" == 1 ]]; then
        .ci/postgres.sh psql -d postgres -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1 \
            || log "warning: could not drop database $DB"
    fi
    if [[ $rc == 0 && -z "${LATTICE_CLIENTS_KEEP:-}" ]]; then
        rm -rf "$RUN_DIR"
    elif [[ -d "$RUN_DIR" ]]; then
        log "config and server log kept in ${RUN_DIR#"$ROOT"/}"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# The name a test reports under.
test_name() {
    case "$1" in
        nio | jssdk) echo "${1}_conversation" ;;
        *) echo "$1" ;;
    esac
}

fail_all() {
    # The server could not be brought up: every test counts as failed.
    log "error: $*"
    local t
    for t in "${TESTS[@]}"; do RESULTS+=("FAIL $(test_name "$t") (server not available)"); FAILED=$((FAILED + 1)); done
    summary
    exit 1
}

mkdir -p "$RUN_DIR"

# Waits (max 30 s) until GET /_matrix/client/versions at $1 answers 200 with a versions
# list; with a pid as $2, gives up as soon as that process is gone.
wait_for_versions() {
    python3 - "$@" <<'EOF'
import json, os, sys, time, urllib.request
base = sys.argv[1]
pid = int(sys.argv[2]) if len(sys.argv) > 2 else None
deadline = time.monotonic() + 30
last = "no answer"
while time.monotonic() < deadline:
    if pid is not None:
        try:
            os.kill(pid, 0)
        except OSError:
            print(f"clients: server exited before answering ({last})", file=sys.stderr)
            sys.exit(1)
    try:
        with urllib.request.urlopen(base + "/_matrix/client/versions", timeout=2) as r:
            body = json.load(r)
            if r.status == 200 and isinstance(body.get("versions"), list):
                print(f"clients: server up, versions {body['versions']}", file=sys.stderr)
                sys.exit(0)
            last = f"HTTP {r.status} {body}"
    except Exception as e:  # connection refused while starting, or a bad answer
        last = f"{type(e).__name__}: {e}"
    time.sleep(0.2)
print(f"clients: GET /_matrix/client/versions did not answer within 30 s ({last})", file=sys.stderr)
sys.exit(1)
EOF
}

# --- dependencies -----------------------------------------------------------------------
# (stamps: a no-op when var/venv and node_modules match requirements.txt and package-lock.json)
make --no-print-directory clients-deps >&2

if [[ -n "${LATTICE_CLIENTS_BASE_URL:-}" ]]; then
    # --- a server started by someone else -------------------------------------------------
    BASE_URL="${LATTICE_CLIENTS_BASE_URL%/}"
    SERVER_LOG="${LATTICE_CLIENTS_SERVER_LOG:-}"
    log "testing the running server at $BASE_URL"
    wait_for_versions "$BASE_URL" || fail_all "no homeserver answers at $BASE_URL"
else
    # --- build ------------------------------------------------------------------------------
    if [[ -z "${LATTICE_CLIENTS_NO_BUILD:-}" ]]; then
        log "cargo build"
        cargo build || fail_all "cargo build failed"
    fi
    [[ -x "$BIN" ]] || fail_all "$BIN not found (did the build produce the lattice binary?)"

    # --- database -----------------------------------------------------------------------------
    LATTICE_PG_FAST="${LATTICE_PG_FAST:-1}" .ci/postgres.sh start || fail_all "could not start PostgreSQL"
    .ci/postgres.sh psql -d postgres -c "create database \"$DB\"" >/dev/null || fail_all "could not create database $DB"
    DB_CREATED=1
    PG_PORT="${LATTICE_PG_PORT:-5433}"
    DB_URL="postgresql://lattice@127.0.0.1:${PG_PORT}/${DB}"

    # --- server -------------------------------------------------------------------------------
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    BASE_URL="http://127.0.0.1:${PORT}"
    CONFIG="$RUN_DIR/homeserver.yaml"
    SERVER_LOG="$RUN_DIR/server.log"

    "$BIN" generate-config --server-name localhost >"$CONFIG" 2>"$RUN_DIR/generate-config.err" \
        || { cat "$RUN_DIR/generate-config.err" >&2; fail_all "lattice generate-config failed"; }

    export LATTICE__DATABASE__URL="$DB_URL"
    export LATTICE__LISTEN="127.0.0.1:${PORT}"
    export LATTICE__ENABLE_REGISTRATION=true
    export LATTICE__RATE_LIMITS__ENABLED=false
    export LATTICE__PUBLIC_BASEURL="$BASE_URL"
    if [[ -n "${LATTICE_CLIENTS_REDIS_URL:-}" ]]; then export LATTICE__REDIS__URL="$LATTICE_CLIENTS_REDIS_URL"; fi

    log "starting lattice on $BASE_URL (database $DB), log: ${SERVER_LOG#"$ROOT"/}"
    "$BIN" serve --config "$CONFIG" >"$SERVER_LOG" 2>&1 </dev/null &
    SERVER_PID=$!

    if ! wait_for_versions "$BASE_URL" "$SERVER_PID"; then
        echo "---- last lines of the server log ----" >&2
        tail -n 40 "$SERVER_LOG" >&2 || true
        fail_all "lattice did not come up"
    fi
fi

# --- tests --------------------------------------------------------------------------------
run_test() {
    local name="$1" limit="$2"; shift 2
    echo
    echo "=== $name"
    local start=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    local took=$((SECONDS - start))
    if [[ $rc == 0 ]]; then
        RESULTS+=("PASS $name (${took}s)")
        PASSED=$((PASSED + 1))
        echo "=== PASS $name (${took}s)"
    else
        [[ $rc == 124 || $rc == 137 ]] && echo "=== $name killed after $limit s" >&2
        RESULTS+=("FAIL $name (exit $rc, ${took}s)")
        FAILED=$((FAILED + 1))
        echo "=== FAIL $name (exit $rc, ${took}s)"
    fi
    if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "---- the server died; last lines of its log ----" >&2
        tail -n 40 "$SERVER_LOG" >&2 || true
    fi
}

for t in "${TESTS[@]}"; do
    case "$t" in
        nio) PYTHONDONTWRITEBYTECODE=1 run_test nio_conversation 90 var/venv/bin/python tests/clients/nio_conversation.py "$BASE_URL" ;;
        jssdk) run_test jssdk_conversation 90 node tests/clients/jssdk_conversation.mjs "$BASE_URL" ;;
        jssdk_e2ee) run_test jssdk_e2ee 120 node tests/clients/jssdk_e2ee.mjs "$BASE_URL" ;;
        nio_e2ee) run_test nio_e2ee 120 node tests/clients/jssdk_e2ee.mjs "$BASE_URL" --nio var/venv/bin/python ;;
        *) log "unknown test '$t' (known: nio jssdk jssdk_e2ee nio_e2ee)"; RESULTS+=("FAIL $t (unknown test)"); FAILED=$((FAILED + 1)) ;;
    esac
done

if [[ $FAILED -gt 0 && -n "$SERVER_LOG" ]]; then
    echo "---- last lines of the server log (${SERVER_LOG#"$ROOT"/}) ----" >&2
    tail -n 30 "$SERVER_LOG" >&2 || true
fi

stop_server
summary
[[ $FAILED == 0 ]]
