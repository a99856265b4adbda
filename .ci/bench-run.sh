#!/usr/bin/env bash
# `make bench`, `make bench-synapse` and `make bench-split`: start a fresh Lattice monolith
# (and, with --synapse, a fresh Synapse; with --split, config/split.yaml under `lattice up`)
# on the embedded PostgreSQL, run the same workloads against each with `lattice bench`,
# and write under ./var/bench:
#
#   results-<stamp>.jsonl   one JSON line per run (also appended to results.jsonl)
#   summary-<stamp>.md      machine, load, the table of runs, ratios (copied to summary.md)
#   lattice-<workload>.log, synapse/, split/   the servers' logs and configuration
#
#   .ci/bench-run.sh [--synapse | --split | --baseline BIN|REV]
#
# --split runs the workloads (default: chat-paced) against the monolith, then against
# the split topology (Redis from .ci/redis.sh, a key prefix of the run's own): requests to
# main, /sync long polls hashed by user over main and sync2 (BENCH_SPLIT_SYNC); CPU and
# RSS of the whole topology (`lattice up` and its instances), of each instance and of
# PostgreSQL. The summary adds the ratios
# split / monolith of send and delivery p99 per run, with issue 4's target (delivery p99 at
# most twice the monolith's) met or missed.
#
# --baseline BIN compares two Lattice binaries side by side (e.g. today's main against a
# change; a git revision instead of a binary is built first, in a temporary worktree
# sharing ./target, and kept as var/bench/lattice-<rev>): each workload (default: chat chat-paced) runs BENCH_REPEAT times (default 3),
# alternating a fresh monolith of BIN (label `baseline`) and of the release build (label
# `lattice`), so drift on the machine falls on both; the summary adds the medians of each
# and their ratios lattice / baseline.
#
# Environment:
#   BENCH_WORKLOADS       runs to do, in order (default: chat chat-paced chat-ephemeral big-room idle join-storm;
#                         with --split: chat-paced)
#   BENCH_ARGS            extra arguments for every `lattice bench` (e.g. "--users 100")
#   BENCH_SPLIT_SYNC      --split: where /sync goes: `routes` (default; hashed by user over
#                         main and sync2, as `lattice routes --nginx` routes it) or `sync2` (all)
#   BENCH_BIN             a lattice binary to use instead of building the release one
#                         (only for trying the script out: numbers of a debug build mean little)
#   BENCH_LATTICE_PORT    8018      BENCH_SYNAPSE_PORT  8028   (the next free port is used when taken)
#   LATTICE_PG_PORT       5433, LATTICE_PG_DIR (see .ci/postgres.sh)
#   LATTICE_REDIS_PORT    6390 (see .ci/redis.sh; --split only)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WITH_SYNAPSE=0
WITH_SPLIT=0
BASELINE_BIN=""
case "${1:-}" in
    "") ;;
    --synapse) WITH_SYNAPSE=1 ;;
    --split) WITH_SPLIT=1 ;;
    --baseline)
        BASELINE_BIN="${2:-}"
        [[ -n "$BASELINE_BIN" ]] || { echo "$0: --baseline needs a lattice binary or a git revision" >&2; exit 2; }
        ;;
    *) echo "usage: $0 [--synapse | --split | --baseline BIN|REV]" >&2; exit 2 ;;
esac
REPEAT="${BENCH_REPEAT:-3}"

OUT=var/bench
if [[ "$WITH_SPLIT" == 1 ]]; then
    WORKLOADS=(${BENCH_WORKLOADS:-chat-paced})
elif [[ -n "$BASELINE_BIN" ]]; then
    WORKLOADS=(${BENCH_WORKLOADS:-chat chat-paced})
else
    WORKLOADS=(${BENCH_WORKLOADS:-chat chat-paced chat-ephemeral big-room idle join-storm})
fi
EXTRA=(${BENCH_ARGS:-})
SPLIT_SYNC="${BENCH_SPLIT_SYNC:-routes}"
LATTICE_PORT="${BENCH_LATTICE_PORT:-8018}"
SYNAPSE_PORT="${BENCH_SYNAPSE_PORT:-8028}"
PG_PORT="${LATTICE_PG_PORT:-5433}"
STAMP="$(date -u +%Y%m%dt%H%M%Sz)"
RESULTS="$OUT/results-$STAMP.jsonl"
SUMMARY="$OUT/summary-$STAMP.md"
BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/lattice}"
SYNAPSE_VENV=var/synapse-venv

log() { echo "bench-run.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# split_up, split_stop, split_forget_redis (--split)
SPLIT_BIN="$BIN"
SPLIT_DIR="$ROOT/$OUT/split"
SPLIT_REDIS_PORT="${LATTICE_REDIS_PORT:-6390}"
SPLIT_PREFIX="lattice_bench_split_$STAMP"
source .ci/split-topology.sh

SERVER_PID=""
DATABASES=()
cleanup() {
    stop_server
    if [[ "$WITH_SPLIT" == 1 ]]; then
        split_stop || true
        split_forget_redis
    fi
    for db in "${DATABASES[@]}"; do
        .ci/postgres.sh psql -d postgres -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

# fresh_database NAME: creates it (dropped again on exit) and sets DATABASE_URL.
fresh_database() {
    local name="$1"
    DATABASES+=("$name")
    # Synapse insists on C collation; Lattice does not care.
    .ci/postgres.sh psql -d postgres -c \
        "create database $name template template0 encoding 'UTF8' lc_collate 'C' lc_ctype 'C'" >/dev/null
    DATABASE_URL="postgresql://lattice@127.0.0.1:$PG_PORT/$name"
}

# free_port BASE: BASE or the first port after it that nothing listens on.
free_port() {
    local port="$1"
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        port=$((port + 1))
    done
    echo "$port"
}

wait_for_http() {
    local url="$1" logfile="$2"
    for _ in $(seq 1 240); do
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$logfile" >&2; die "the server exited while starting"; }
        if curl -fsS -o /dev/null "$url/_matrix/client/versions" 2>/dev/null; then
            # Ours, not something that took the port meanwhile.
            sleep 0.5
            kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$logfile" >&2; die "the server exited while starting"; }
            return 0
        fi
        sleep 0.5
    done
    tail -n 30 "$logfile" >&2
    die "the server did not answer on $url"
}

# The cluster of LATTICE_PG_PORT, wherever its directory is.
postmaster_pid() { head -n 1 "$(.ci/postgres.sh psql -d postgres -tAc 'show data_directory')/postmaster.pid"; }

FAILED=()
# run_workloads LABEL URL DATABASE_URL PIDS [BENCH ARGUMENT ...]
run_workloads() {
    local label="$1" url="$2" database_url="$3" pids="$4"
    shift 4
    local name args
    for name in "${WORKLOADS[@]}"; do
        case "$name" in
            chat)
                args=(chat)
                # The database's own speed, measured once, beside Lattice's busiest run.
                if [[ "$label" == lattice && -z "$BASELINE_BIN" ]]; then
                    args+=(--postgres-baseline --database-url "$database_url")
                fi
                ;;
            chat-paced)
                args=(chat --rate 1000)
                # Ten messages each, unless BENCH_ARGS says how many.
                [[ " ${EXTRA[*]} " == *" --messages "* ]] || args+=(--messages 10)
                ;;
            chat-ephemeral) args=(chat-ephemeral) ;;
            chat-todevice) args=(chat-todevice) ;;
            big-room) args=(big-room) ;;
            idle) args=(idle) ;;
            join-storm) args=(join-storm) ;;
            # The plain file copy beside the uploads runs on the media store's disk.
            media) args=(media --scratch-dir "$OUT") ;;
            *) die "unknown workload $name (chat chat-paced chat-ephemeral chat-todevice big-room idle join-storm media)" ;;
        esac
        log "$label: $name"
        # stdout as is; stderr (progress, and why a run failed) also kept in a file.
        # The load generator is always the release build's, whichever server it measures.
        if ! { "$BIN" bench "${args[@]}" --name "$name" --label "$label" --base-url "$url" \
                --pids "$pids" --json-out "$RESULTS" "$@" "${EXTRA[@]}" 2>&1 1>&3 \
                | tee "$OUT/$label-$name.err" >&2; } 3>&1; then
            # The last line says why (a problem count, or a set-up that never finished).
            FAILED+=("$label $name: $(grep -a '^lattice: ' "$OUT/$label-$name.err" | tail -n 1 | sed 's/^lattice: //')")
        fi
    done
}

# Each workload gets a fresh monolith on a fresh database, so no run pays for
# what an earlier one left behind (caches, allocator state, dead rows).
# bench_lattice [SERVER_BIN LABEL [RUN]]: the release build (or SERVER_BIN, reported as LABEL).
bench_lattice() {
    local server_bin="${1:-$BIN}" label="${2:-lattice}" run="${3:-}"
    local workload all=("${WORKLOADS[@]}")
    "$server_bin" generate-config --server-name localhost > "$OUT/$label.yaml"
    for workload in "${all[@]}"; do
        local WORKLOADS=("$workload")
        LATTICE_PORT="$(free_port "$LATTICE_PORT")"
        local url="http://127.0.0.1:$LATTICE_PORT" log_file="$OUT/$label-$workload$run.log"
        fresh_database "lattice_bench_${STAMP}_${label}_${workload//-/_}$run"
        local database_url="$DATABASE_URL"
        log "starting $label on $url for $workload (log: $log_file)"
        env LATTICE__DATABASE__URL="$database_url" \
            LATTICE__ENABLE_REGISTRATION=true \
            LATTICE__RATE_LIMITS__ENABLED=false \
            LATTICE__LISTEN="127.0.0.1:$LATTICE_PORT" \
            LATTICE__LOG=warn \
            "$server_bin" serve --config "$OUT/$label.yaml" > "$log_file" 2>&1 &
        SERVER_PID=$!
        wait_for_http "$url" "$log_file"
        run_workloads "$label" "$url" "$database_url" "$label=$SERVER_PID,postgres=$(postmaster_pid)"
        stop_server
    done
}

# --baseline: the baseline and the release build, alternating, BENCH_REPEAT times.
bench_baseline() {
    local run workload all=("${WORKLOADS[@]}")
    for run in $(seq 1 "$REPEAT"); do
        for workload in "${all[@]}"; do
            local WORKLOADS=("$workload")
            bench_lattice "$BASELINE_BIN" baseline "_$run"
            bench_lattice "$BIN" lattice "_$run"
        done
    done
}

install_synapse() {
    local stamp="$SYNAPSE_VENV/.lattice-installed"
    [[ -f "$stamp" ]] && return 0
    log "installing Synapse from PyPI into $SYNAPSE_VENV"
    if [[ ! -x "$SYNAPSE_VENV/bin/python" ]]; then
        python3 -m venv "$SYNAPSE_VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    fi
    "$SYNAPSE_VENV/bin/pip" install --disable-pip-version-check -q matrix-synapse psycopg2-binary
    touch "$stamp"
}

bench_synapse() {
    install_synapse
    SYNAPSE_PORT="$(free_port "$SYNAPSE_PORT")"
    local dir="$OUT/synapse" url="http://127.0.0.1:$SYNAPSE_PORT" db="synapse_bench_$STAMP"
    rm -rf "$dir"
    mkdir -p "$dir/media"
    fresh_database "$db"
    local secret
    secret="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
    # Rate limits far beyond what the bench sends, registration open without
    # verification (the m.login.dummy flow), no presence and no key servers
    # (Lattice has neither yet), cheap bcrypt (only set-up registers users).
    cat > "$dir/homeserver.yaml" <<EOF
server_name: "localhost"
pid_file: "$ROOT/$dir/homeserver.pid"
listeners:
  - port: $SYNAPSE_PORT
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: psycopg2
  args:
    user: lattice
    database: $db
    host: 127.0.0.1
    port: $PG_PORT
    cp_min: 5
    cp_max: 10
log_config: "$ROOT/$dir/log.yaml"
media_store_path: "$ROOT/$dir/media"
signing_key_path: "$ROOT/$dir/signing.key"
report_stats: false
macaroon_secret_key: "$secret"
form_secret: "$secret"
registration_shared_secret: "$secret"
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
trusted_key_servers: []
suppress_key_server_warning: true
presence:
  enabled: false
rc_message: {per_second: 1000000, burst_count: 1000000}
rc_registration: {per_second: 1000000, burst_count: 1000000}
rc_registration_token_validity: {per_second: 1000000, burst_count: 1000000}
rc_login:
  address: {per_second: 1000000, burst_count: 1000000}
  account: {per_second: 1000000, burst_count: 1000000}
  failed_attempts: {per_second: 1000000, burst_count: 1000000}
rc_joins:
  local: {per_second: 1000000, burst_count: 1000000}
  remote: {per_second: 1000000, burst_count: 1000000}
rc_joins_per_room: {per_second: 1000000, burst_count: 1000000}
rc_invites:
  per_room: {per_second: 1000000, burst_count: 1000000}
  per_user: {per_second: 1000000, burst_count: 1000000}
  per_issuer: {per_second: 1000000, burst_count: 1000000}
rc_admin_redaction: {per_second: 1000000, burst_count: 1000000}
rc_3pid_validation: {per_second: 1000000, burst_count: 1000000}
rc_room_creation: {per_second: 1000000, burst_count: 1000000}
EOF
    cat > "$dir/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $ROOT/$dir/homeserver.log
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
EOF
    "$SYNAPSE_VENV/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --generate-keys >/dev/null
    log "starting synapse on $url (log: $dir/homeserver.log)"
    "$SYNAPSE_VENV/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" > "$dir/stdout.log" 2>&1 &
    SERVER_PID=$!
    wait_for_http "$url" "$dir/stdout.log"
    run_workloads synapse "$url" "$DATABASE_URL" "synapse=$SERVER_PID,postgres=$(postmaster_pid)"
    stop_server
}

# The same workloads against config/split.yaml under `lattice up`: sends and every other
# request to main; /sync hashed by user over main and sync2, as the proxy of
# `lattice routes --nginx` does (BENCH_SPLIT_SYNC=sync2: every /sync to sync2).
SPLIT_FAILED=0
bench_split() {
    fresh_database "lattice_split_bench_$STAMP"
    SPLIT_DATABASE_URL="$DATABASE_URL"
    rm -rf "$SPLIT_DIR"
    split_up LATTICE__LOG=warn || die "the split topology did not come up (log: $SPLIT_DIR/up.log)"
    local main events1 sync2 pids
    main="$(split_instance_pid main)"
    events1="$(split_instance_pid events1)"
    sync2="$(split_instance_pid sync2)"
    [[ -n "$main" && -n "$events1" && -n "$sync2" ]] \
        || die "cannot find the instances of lattice up $UP_PID (main '$main', events1 '$events1', sync2 '$sync2')"
    # The whole topology first (the summary's CPU and RSS columns), then each process.
    pids="lattice-split=$UP_PID,main=$main,events1=$events1,sync2=$sync2,postgres=$(postmaster_pid)"
    local sync_urls=(--sync-url "http://127.0.0.1:$SYNC_PORT")
    case "$SPLIT_SYNC" in
        routes) sync_urls+=(--sync-url "http://127.0.0.1:$MAIN_PORT") ;;
        sync2) ;;
        *) die "BENCH_SPLIT_SYNC must be routes or sync2, not '$SPLIT_SYNC'" ;;
    esac
    run_workloads lattice-split "http://127.0.0.1:$MAIN_PORT" "$SPLIT_DATABASE_URL" "$pids" \
        "${sync_urls[@]}"
    # Errors and panics of the instances, for the reader of the summary.
    rm -f "$OUT/split-errors.log"
    if grep -aE ' (ERROR|WARN) |panicked' "$SPLIT_DIR/up.log" >"$OUT/split-errors.log"; then
        log "the split topology logged $(wc -l <"$OUT/split-errors.log") warnings or errors: $OUT/split-errors.log"
    else
        rm -f "$OUT/split-errors.log"
    fi
    split_stop || SPLIT_FAILED=1
    split_forget_redis
}

machine_header() {
    local cpu mem
    cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    mem="$(awk '/MemTotal/ {printf "%.1f GB", $2 / 1048576}' /proc/meminfo)"
    echo "# lattice bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(nproc) cores ($cpu), $mem RAM, $(uname -sr)"
    echo "- load average before the runs: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- lattice $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)'), $([[ -n "${BENCH_BIN:-}" ]] && echo "binary $BENCH_BIN (BENCH_BIN)" || echo 'release build'); PostgreSQL $(.ci/postgres.sh psql -d postgres -tAc 'show server_version' 2>/dev/null | cut -d' ' -f1) ($([[ "$(.ci/postgres.sh psql -d postgres -tAc 'show fsync' 2>/dev/null)" == off ]] && echo 'fast mode: fsync off' || echo 'durable'))"
    if [[ "$WITH_SYNAPSE" == 1 ]]; then
        echo "- synapse $("$SYNAPSE_VENV/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null), one process, psycopg2"
    fi
    if [[ -n "$BASELINE_BIN" ]]; then
        echo "- baseline: $BASELINE_BIN ($("$BASELINE_BIN" --version 2>/dev/null || echo '?')), alternating with the release build, each workload $REPEAT times"
    fi
    if [[ "$WITH_SPLIT" == 1 ]]; then
        echo "- lattice-split: config/split.yaml under \`lattice up\` (main: client + sync, events1: events, sync2: sync) with Redis $(redis-cli -p "$SPLIT_REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p'); requests to main, /sync $([[ "$SPLIT_SYNC" == routes ]] && echo 'hashed by user over main and sync2 (as lattice routes --nginx does)' || echo 'to sync2'); its CPU and RSS are \`lattice up\` and its three instances together (each also in results-*.jsonl)"
    fi
    echo "- server, database and load generator share the machine; CPU and RSS are the server's process and the PostgreSQL cluster's process tree"
    echo
}

# build_baseline REV: the release binary of REV, built in a worktree that shares ./target
# (dependencies are built once for both), kept as var/bench/lattice-<rev>.
build_baseline() {
    local rev short tree
    rev="$(git rev-parse --verify "$1^{commit}")" || die "--baseline $1 is neither a binary nor a git revision"
    short="$(git rev-parse --short "$rev")"
    BASELINE_BIN="$ROOT/$OUT/lattice-$short"
    [[ -x "$BASELINE_BIN" ]] && return 0
    tree="$ROOT/$OUT/baseline-src"
    git worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
    git worktree add --detach "$tree" "$rev" >/dev/null
    log "building the baseline $short in $tree"
    (cd "$tree" && CARGO_TARGET_DIR="$ROOT/${CARGO_TARGET_DIR:-target}" cargo build --release) \
        || die "the baseline $short did not build"
    cp "$ROOT/${CARGO_TARGET_DIR:-target}/release/lattice" "$BASELINE_BIN"
    git worktree remove --force "$tree"
}

mkdir -p "$OUT"
if [[ -n "$BASELINE_BIN" && ! -x "$BASELINE_BIN" ]]; then
    build_baseline "$BASELINE_BIN"
fi
.ci/postgres.sh start
if [[ -z "${BENCH_BIN:-}" ]]; then
    cargo build --release
fi
[[ -x "$BIN" ]] || die "$BIN not found"
if [[ "$WITH_SPLIT" == 1 ]]; then
    .ci/redis.sh start
fi
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ -n "$BASELINE_BIN" ]]; then
    bench_baseline
else
    bench_lattice
fi
if [[ "$WITH_SYNAPSE" == 1 ]]; then
    bench_synapse
fi
if [[ "$WITH_SPLIT" == 1 ]]; then
    bench_split
fi

[[ -s "$RESULTS" ]] || die "no run produced a result"
cat "$RESULTS" >> "$OUT/results.jsonl"
{
    machine_header
    "$BIN" bench summary --json-in "$RESULTS" $([[ -n "$BASELINE_BIN" ]] && echo --medians)
    if [[ ${#FAILED[@]} -gt 0 ]]; then
        echo
        echo "Runs that saw problems or did not finish:"
        echo
        printf -- '- %s\n' "${FAILED[@]}"
    fi
} > "$SUMMARY"
cp "$SUMMARY" "$OUT/summary.md"
echo
cat "$SUMMARY"
echo
log "results: $RESULTS, summary: $SUMMARY"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    log "runs that saw problems or did not finish:"
    printf '    %s\n' "${FAILED[@]}" >&2
    exit 1
fi
if [[ "$SPLIT_FAILED" == 1 ]]; then
    die "a process of the split topology had to be killed (see above)"
fi
