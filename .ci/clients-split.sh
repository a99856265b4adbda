#!/usr/bin/env bash
# The real-client tests (tests/clients) against a split topology: `lattice up` runs
# config/split.yaml (main: client + sync and the other writers / events1: the events
# writer / sync2: sync) on free ports, with a fresh database and a Redis key prefix of its
# own; tests/clients/run.sh runs the unchanged client conversations against main; then
# `lattice up` gets SIGTERM, and the script checks that it and every instance it started
# are gone.
#
#   .ci/clients-split.sh            build, run every client test against the split
#   .ci/clients-split.sh nio        only some of them (nio | jssdk | jssdk_e2ee | nio_e2ee)
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
BIN="${LATTICE_CLIENTS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/lattice}"
PG_PORT="${LATTICE_PG_PORT:-5433}"
DB_CREATED=0

log() { echo "clients-split: $*" >&2; }

# split_up, split_stop, split_forget_redis
SPLIT_BIN="$BIN"
SPLIT_DIR="$RUN_DIR"
SPLIT_DATABASE_URL="postgresql://lattice@127.0.0.1:$PG_PORT/$DB"
SPLIT_REDIS_PORT="${LATTICE_REDIS_PORT:-6390}"
SPLIT_PREFIX="lattice_clients_split_$$"
source .ci/split-topology.sh

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    split_stop || rc=1
    if [[ "$DB_CREATED" == 1 ]]; then
        .ci/postgres.sh psql -d postgres -c "drop database if exists \"$DB\" with (force)" >/dev/null 2>&1 \
            || log "warning: could not drop database $DB"
    fi
    # The mailbox streams and reply lists of this run.
    split_forget_redis
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

split_up || exit 1
BASE_URL="http://127.0.0.1:$MAIN_PORT"

rc=0
LATTICE_CLIENTS_BASE_URL="$BASE_URL" LATTICE_CLIENTS_SERVER_LOG="$UP_LOG" \
    tests/clients/run.sh "$@" || rc=$?
split_stop || rc=1
exit $rc
