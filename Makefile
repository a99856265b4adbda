# Lattice developer / CI entry points. Everything at run time lives under ./var (gitignored).
#
#   make run           PostgreSQL (durable) + release build + dev server on http://127.0.0.1:8008
#   make test          PostgreSQL (fast) + Redis, cargo test --workspace, then the real-client tests
#                      against a monolith and against `lattice up` of config/split.yaml,
#                      then the short fault-injection run (make chaos)
#   make chaos         config/sharded.yaml under bench traffic while processes, Redis and
#                      PostgreSQL are killed in turn: lost / duplicated / out-of-order sends
#   make clients       only the real-client tests (tests/clients/run.sh)
#   make clients-split only the real-client tests against the split (.ci/clients-split.sh)
#   make clients-deps  var/venv with matrix-nio, tests/clients/node_modules with matrix-js-sdk
#   make stop          stop PostgreSQL and Redis
#   make services      start PostgreSQL (fast) and Redis without running anything
#   make status        show whether PostgreSQL and Redis run
#
# Ports: LATTICE_PG_PORT (5433), LATTICE_REDIS_PORT (6390).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export LATTICE_PG_PORT ?= 5433
export LATTICE_REDIS_PORT ?= 6390

PYTHON ?= python3
VENV := var/venv
CLIENTS := tests/clients
VENV_STAMP := $(VENV)/.lattice-installed
NODE_STAMP := $(CLIENTS)/node_modules/.lattice-installed

# make run: the dev server's settings, written into $(RUN_CONFIG) when it is
# created (so `lattice serve --config var/homeserver.yaml` by hand is the same
# server); an existing file is used as it is.
RUN_LISTEN ?= 127.0.0.1:8008
RUN_CONFIG := var/homeserver.yaml
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
RELEASE_BIN := $(TARGET_DIR)/release/lattice

TEST_DATABASE_URL := postgresql://lattice@127.0.0.1:$(LATTICE_PG_PORT)/postgres
TEST_REDIS_URL := redis://127.0.0.1:$(LATTICE_REDIS_PORT)

.PHONY: help run test test-rust clients clients-split clients-deps stop services status chaos

help:
	@sed -n '3,16p' Makefile | sed 's/^# \{0,1\}//'

run:
	.ci/postgres.sh start
	cargo build --release
	$(WRITE_RUN_CONFIG)
	@echo "lattice: serving on http://$(RUN_LISTEN) (Ctrl-C stops it; 'make stop' stops PostgreSQL)"
	exec $(RELEASE_BIN) serve --config $(RUN_CONFIG)

# Writes $(RUN_CONFIG) with the development settings unless it exists.
define WRITE_RUN_CONFIG
@mkdir -p var
@if [[ ! -s $(RUN_CONFIG) ]]; then \
	echo "writing $(RUN_CONFIG) (server_name localhost, registration open, rate limits off)"; \
	$(RELEASE_BIN) generate-config --server-name localhost --listen $(RUN_LISTEN) \
		--database-url "$$(.ci/postgres.sh url)" --enable-registration --disable-rate-limits \
		> $(RUN_CONFIG).tmp; \
	mv $(RUN_CONFIG).tmp $(RUN_CONFIG); \
fi
endef

# Runs the Rust tests and the client tests even if the first fail, then fails if either did.
# The client tests use the target/debug/lattice that cargo test built (integration tests
# need the binary): building it again with the binary's own feature set would rebuild
# every dependency.
test: clients-deps services
	@rc=0; \
	echo "==> cargo test --workspace (integration tests on the monolith)"; \
	LATTICE_TEST_DATABASE_URL=$(TEST_DATABASE_URL) LATTICE_TEST_REDIS_URL=$(TEST_REDIS_URL) \
		cargo test --workspace --no-fail-fast || rc=1; \
	echo "==> cargo test --test it (integration tests on the split: client+sync / events / sync)"; \
	LATTICE_TEST_TOPOLOGY=split LATTICE_TEST_DATABASE_URL=$(TEST_DATABASE_URL) LATTICE_TEST_REDIS_URL=$(TEST_REDIS_URL) \
		cargo test --test it || rc=1; \
	echo "==> tests/clients/run.sh"; \
	LATTICE_CLIENTS_NO_BUILD=1 $(CLIENTS)/run.sh || rc=1; \
	echo "==> .ci/clients-split.sh (the same client tests against lattice up --topology config/split.yaml)"; \
	LATTICE_CLIENTS_NO_BUILD=1 .ci/clients-split.sh || rc=1; \
	echo "==> .ci/chaos.py --short (config/sharded.yaml under bench traffic; a persister, the client instance, a writer of the other streams and Redis killed)"; \
	python3 .ci/chaos.py --short --bin $(TARGET_DIR)/debug/lattice || rc=1; \
	if [[ $$rc != 0 ]]; then echo "make test: FAILED" >&2; fi; \
	exit $$rc

test-rust: services
	LATTICE_TEST_DATABASE_URL=$(TEST_DATABASE_URL) LATTICE_TEST_REDIS_URL=$(TEST_REDIS_URL) \
		cargo test --workspace

clients: clients-deps
	$(CLIENTS)/run.sh

clients-split: clients-deps
	.ci/clients-split.sh

# The fault-injection run (README "Live shards"): config/sharded.yaml on a PostgreSQL and a
# Redis of its own under `lattice bench chat`, each persister, the sync instance, the
# client instance, each writer of the other streams, Redis and PostgreSQL killed in turn;
# `make test` runs its short form.
chaos:
	python3 .ci/chaos.py

services:
	LATTICE_PG_FAST=1 .ci/postgres.sh start
	.ci/redis.sh start

stop:
	.ci/postgres.sh stop
	.ci/redis.sh stop

status:
	@.ci/postgres.sh status || true
	@.ci/redis.sh status || true

clients-deps: $(VENV_STAMP) $(NODE_STAMP)

$(VENV_STAMP): $(CLIENTS)/requirements.txt
	@if [[ ! -x $(VENV)/bin/python ]]; then \
		echo "creating $(VENV)"; \
		if ! $(PYTHON) -m venv $(VENV); then \
			rm -rf $(VENV); \
			if [[ $$(id -u) == 0 ]] && command -v apt-get >/dev/null; then \
				DEBIAN_FRONTEND=noninteractive apt-get update && \
				DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv && \
				$(PYTHON) -m venv $(VENV); \
			else \
				echo "python venv support is missing; install it with: sudo apt-get install -y python3-venv" >&2; \
				exit 1; \
			fi; \
		fi; \
	fi
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -r $(CLIENTS)/requirements.txt
	@touch $@

$(NODE_STAMP): $(CLIENTS)/package.json $(CLIENTS)/package-lock.json
	@command -v npm >/dev/null || { echo "node/npm not found (Node.js >= 20 is needed for the js-sdk test)" >&2; exit 1; }
	cd $(CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# make bench          fresh release monolith on the embedded PostgreSQL; every `lattice bench`
#                     workload; JSON lines and a markdown summary under var/bench/
# make bench-synapse  the same, then the same workloads against Synapse (from PyPI, in
#                     var/synapse-venv) in the same run, with the ratios Lattice / Synapse
# make bench-split    the monolith, then config/split.yaml under `lattice up` (with Redis),
#                     at the same paced load (chat-paced), with the ratios split / monolith
# make bench-baseline the release build against BASE (a git revision or a lattice binary,
#                     default main), chat and chat-paced alternating,
#                     BENCH_REPEAT (3) times each, with the medians and ratios
# make bench-media    the media workload alone (uploads, downloads, thumbnails, against a
#                     plain file copy; the server's RSS with 20 x 10 MB uploads in flight)
# make bench-persisters chat against main + 1, 2 and 4 event persisters (BENCH_PERSISTERS)
#                     under `lattice up`: throughput and each persister's CPU share
# BENCH_WORKLOADS="chat idle" picks runs; BENCH_ARGS="--users 100" is passed to each.
.PHONY: bench bench-synapse bench-split bench-baseline bench-media bench-persisters
BASE ?= main

bench:
	.ci/bench-run.sh

bench-synapse:
	.ci/bench-run.sh --synapse

bench-split:
	.ci/bench-run.sh --split

bench-baseline:
	.ci/bench-run.sh --baseline $(BASE)

bench-media:
	BENCH_WORKLOADS=media .ci/bench-run.sh

bench-persisters:
	.ci/bench-persisters.sh

# make up             like `make run`, but a whole topology under `lattice up` (with Redis):
#                     TOPOLOGY=config/split.yaml by default; Ctrl-C stops every instance.
#                     `lattice routes --nginx --topology $(TOPOLOGY)` prints a proxy for it.
.PHONY: up
TOPOLOGY ?= config/split.yaml

up:
	.ci/postgres.sh start
	.ci/redis.sh start
	cargo build --release
	$(WRITE_RUN_CONFIG)
	exec env LATTICE__REDIS__URL=redis://127.0.0.1:$(LATTICE_REDIS_PORT) \
		$(RELEASE_BIN) up --topology $(TOPOLOGY)
