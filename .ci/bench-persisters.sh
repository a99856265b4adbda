#!/usr/bin/env bash
# `make bench-persisters` (issue 17): `lattice bench chat` against a topology of `main`
# (every role but events) and N event persisters `events1`..`eventsN` under `lattice up`,
# for each N of BENCH_PERSISTERS (default "1 2 4"), one after the other in one run, each
# on a fresh database and Redis key prefix. The rooms' 256 shards are spread over the
# persisters by lease (README "Live shards"); the run waits until each persister owns
# its share before measuring. Writes var/bench/persisters-<stamp>.jsonl (one report per
# N, with the CPU of every process) and var/bench/persisters-<stamp>.md: throughput per
# N, and each persister's CPU seconds and share, with the largest / smallest share.
#
# Environment: BENCH_PERSISTERS ("1 2 4"), BENCH_ARGS (extra `lattice bench` arguments),
# BENCH_BIN (a lattice binary instead of building the release one), BENCH_LOG (the
# topology's log filter, default warn), BENCH_KEEP (keep each
# run's database and Redis keys, to look into a run that reported problems), LATTICE_PG_PORT,
# LATTICE_REDIS_PORT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COUNTS=(${BENCH_PERSISTERS:-1 2 4})
EXTRA=(${BENCH_ARGS:-})
PG_PORT="${LATTICE_PG_PORT:-5433}"
REDIS_PORT="${LATTICE_REDIS_PORT:-6390}"
OUT=var/bench
STAMP="$(date -u +%Y%m%dt%H%M%Sz)"
RESULTS="$OUT/persisters-$STAMP.jsonl"
SUMMARY="$OUT/persisters-$STAMP.md"
RUN_DIR="$ROOT/$OUT/persisters-$STAMP"
BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/lattice}"

log() { echo "bench-persisters.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

UP_PID=""
DATABASES=()
PREFIXES=()
cleanup() {
    stop_up || true
    [[ -n "${BENCH_KEEP:-}" ]] && { log "kept databases: ${DATABASES[*]}"; return 0; }
    for prefix in "${PREFIXES[@]}"; do
        redis-cli -p "$REDIS_PORT" --scan --pattern "$prefix*" 2>/dev/null \
            | xargs -r redis-cli -p "$REDIS_PORT" del >/dev/null 2>&1 || true
    done
    for db in "${DATABASES[@]}"; do
        .ci/postgres.sh psql -d postgres -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

stop_up() {
    [[ -n "$UP_PID" ]] || return 0
    kill -TERM "$UP_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$UP_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=""
}

free_ports() {
    python3 -c '
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
' "$1"
}

wait_for_health() {
    local port="$1"
    for _ in $(seq 1 300); do
        kill -0 "$UP_PID" 2>/dev/null || { tail -n 40 "$UP_LOG" >&2; die "lattice up exited while starting"; }
        curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null && return 0
        sleep 0.2
    done
    tail -n 40 "$UP_LOG" >&2
    die "port $port did not answer /health within 60 s"
}

mkdir -p "$OUT" "$RUN_DIR"
.ci/postgres.sh start >&2
.ci/redis.sh start >&2
if [[ -z "${BENCH_BIN:-}" ]]; then
    log "building the release binary"
    cargo build --release >&2
fi
[[ -x "$BIN" ]] || die "no lattice binary at $BIN"

run=0
for n in "${COUNTS[@]}"; do
    run=$((run + 1))
    db="lattice_persisters_${run}_${n}_$STAMP"
    DATABASES+=("$db")
    .ci/postgres.sh psql -d postgres -c "create database $db" >/dev/null
    prefix="lattice_bench_persisters_${run}_${n}_$STAMP"
    PREFIXES+=("$prefix")
    read -r -a ports < <(free_ports $((n + 1)))
    main_port="${ports[0]}"
    homeserver="$RUN_DIR/homeserver-$n.yaml"
    topology="$RUN_DIR/topology-$n.yaml"
    "$BIN" generate-config --server-name localhost >"$homeserver"
    {
        echo "homeserver: $homeserver"
        echo "settings:"
        echo "  http_workers: 1"
        echo "  instance_map:"
        echo "    main: { host: 127.0.0.1, port: $main_port }"
        for i in $(seq 1 "$n"); do
            echo "    events$i: { host: 127.0.0.1, port: ${ports[$i]} }"
        done
        echo "  stream_writers:"
        echo "    events: [$(seq -s ', ' -f 'events%g' 1 "$n")]"
        echo "instances:"
        echo "  - name: main"
        echo "    roles: [client, sync, typing, to_device, account_data, receipts, presence, device_lists, push_rules, pusher, federation_sender, federation_reader, media, background]"
        echo "    listen: \"127.0.0.1:$main_port\""
        for i in $(seq 1 "$n"); do
            echo "  - name: events$i"
            echo "    roles: [events]"
            echo "    listen: \"127.0.0.1:${ports[$i]}\""
        done
    } >"$topology"
    UP_LOG="$RUN_DIR/up-$run-$n.log"
    log "$n persister(s): lattice up (main :$main_port), log $UP_LOG"
    env LATTICE__DATABASE__URL="postgresql://lattice@127.0.0.1:$PG_PORT/$db" \
        LATTICE__REDIS__URL="redis://127.0.0.1:$REDIS_PORT" \
        LATTICE__REDIS__PREFIX="$prefix" \
        LATTICE__ENABLE_REGISTRATION=true \
        LATTICE__RATE_LIMITS__ENABLED=false \
        LATTICE__PUBLIC_BASEURL="http://127.0.0.1:$main_port" \
        LATTICE__LOG="${BENCH_LOG:-warn}" \
        "$BIN" up --topology "$topology" >"$UP_LOG" 2>&1 </dev/null &
    UP_PID=$!
    for port in "${ports[@]}"; do
        wait_for_health "$port"
    done
    # Every persister owns its share before the measurement starts.
    for _ in $(seq 1 100); do
        owners="$(LATTICE__DATABASE__URL="postgresql://lattice@127.0.0.1:$PG_PORT/$db" \
            "$BIN" admin shards --config "$homeserver" | grep -cE '^  events[0-9]+: [0-9]+ shard' || true)"
        [[ "$owners" == "$n" ]] && break
        sleep 0.2
    done
    [[ "$owners" == "$n" ]] || die "$n persisters never all owned shards"
    pids="topology=$UP_PID"
    for name in main $(seq -f 'events%g' 1 "$n"); do
        pid="$(pgrep -P "$UP_PID" -f -- "--instance $name( |\$)" | head -n 1)"
        [[ -n "$pid" ]] || die "no process for $name"
        pids+=",$name=$pid"
    done
    pids+=",postgres=$(head -n 1 "$(.ci/postgres.sh psql -d postgres -tAc 'show data_directory')/postmaster.pid")"
    "$BIN" bench chat --name "chat-$n-persisters" --label "persisters-$n" \
        --base-url "http://127.0.0.1:$main_port" --pids "$pids" --json-out "$RESULTS" "${EXTRA[@]}" >&2 \
        || log "$n persister(s): the run reported problems (see above)"
    stop_up
done

python3 - "$RESULTS" >"$SUMMARY" <<'EOF'
import json, sys
print("| persisters | accepted/s | send p99 ms | delivery p99 ms | topology CPU s | each persister's CPU s (share) | largest / smallest share |")
print("|---:|---:|---:|---:|---:|---|---:|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    procs = {p["label"]: p for p in r["processes"]}
    persisters = sorted((l, p["cpu_seconds"]) for l, p in procs.items() if l.startswith("events"))
    total = sum(c for _, c in persisters) or 1.0
    shares = [c / total for _, c in persisters]
    each = ", ".join(f"{l} {c:.1f} ({100 * c / total:.0f} %)" for l, c in persisters)
    spread = max(shares) / min(shares) if min(shares) > 0 else float("inf")
    print(f"| {len(persisters)} | {r['accepted_per_second']:.0f} | {r['send_latency_ms']['p99']:.1f} "
          f"| {r['delivery_latency_ms']['p99']:.1f} | {procs['topology']['cpu_seconds']:.1f} | {each} | {spread:.2f} |")
EOF
cat "$SUMMARY"
log "results: $RESULTS, summary: $SUMMARY"
