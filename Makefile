# pipewright — the commands a user and CI run. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ENV_UP := tests/env/up
ENV_DOWN := tests/env/down
CARGO ?= cargo
# make bench QUICK=1: the short benchmark run; WORKER_ARGS="...": extra worker flags (bench/run).
QUICK ?=
WORKER_ARGS ?=

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: test
test: ## Start the local test environment and node (building them on first use), build the release images and import them, run every test
	@eval "$$($(ENV_UP))"; \
	  echo "[make] control plane $$($$KUBECTL version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n 1), node $$PIPEWRIGHT_NODE_NAME ($$PIPEWRIGHT_NODE_IP), Kafka $$KAFKA_BOOTSTRAP_SERVERS, PostgreSQL $${DATABASE_URL##*@}"; \
	  echo "[make] building the operator and worker release binaries (as their Dockerfiles do) into images for the node, then the workspace and its tests"; \
	  start=$$SECONDS; tests/env/images >/dev/null && \
	  echo "[make] images built in $$((SECONDS - start)) s; building and running the tests" && \
	  start=$$SECONDS && $(CARGO) test --workspace --locked -- --include-ignored && \
	  echo "[make] cargo test (build and run) took $$((SECONDS - start)) s"
	@echo "[make] tests passed; the environment keeps running for the next run (make env-down stops it)"

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: env
env: ## Start the local test environment and print how to use it from a shell
	@$(ENV_UP) >/dev/null
	@echo 'Use it from your shell with:  eval "$$($(ENV_UP))"'

.PHONY: env-down
env-down: ## Stop the local test environment and delete its state (target/testenv)
	@$(ENV_DOWN)

.PHONY: clean-cache
clean-cache: env-down ## Delete the cache of built binaries and jars ($PIPEWRIGHT_CACHE)
	@cache="$${PIPEWRIGHT_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/pipewright}"; \
	  chmod -R u+w "$$cache" 2>/dev/null || true; rm -rf "$$cache"; echo "removed $$cache"

.PHONY: demo
demo: ## Run it all locally: node, operator pod, an Outbox and an EventConsumer, a demo app, a live view (Ctrl-C ends)
	examples/demo/run $(DEMO_ARGS)

.PHONY: fuzz
fuzz: ## Fuzz the event decoder, the worker's configuration files and the identifier parsers (cargo-fuzz on nightly; FUZZ_SECONDS per target, default 60)
	fuzz/run $(FUZZ_SECONDS)

.PHONY: chaos
chaos: ## The whole pipeline under faults (pod kills, broker SIGKILL, database and operator restarts) with 100k events, the bad-input catalogue and the fuzz targets (FUZZ_SECONDS each, default 30); figures and tables into docs/reliability.md (make test runs 10k events and the same catalogue)
	@eval "$$($(ENV_UP))"; tests/env/images >/dev/null && \
	  PIPEWRIGHT_CHAOS_EVENTS=$${CHAOS_EVENTS:-100000} PIPEWRIGHT_CHAOS_REPORT=$(CURDIR)/docs/reliability.md \
	  $(CARGO) test -p pipewright-testenv --locked --test chaos -- --nocapture && \
	  PIPEWRIGHT_BAD_INPUT_REPORT=$(CURDIR)/docs/reliability.md \
	  $(CARGO) test -p pipewright-testenv --locked --test crds -- invalid_ && \
	  PIPEWRIGHT_BAD_INPUT_REPORT=$(CURDIR)/docs/reliability.md \
	  $(CARGO) test -p pipewright-worker --locked --test consume_bad_input && \
	  PIPEWRIGHT_BAD_INPUT_REPORT=$(CURDIR)/docs/reliability.md \
	  $(CARGO) test -p pipewright-worker --locked --test consume_bad_sinks && \
	  PIPEWRIGHT_BAD_INPUT_REPORT=$(CURDIR)/docs/reliability.md \
	  $(CARGO) test -p pipewright-testenv --locked --test e2e_bad_resources && \
	  fuzz/run $${FUZZ_SECONDS:-30}

.PHONY: generate
generate: ## Regenerate the CRD YAML into charts/pipewright/crds (issue #3)
	$(CARGO) run -q -p pipewright-crds --bin crdgen -- charts/pipewright/crds

.PHONY: generate-check
generate-check: ## Fail when the checked-in CRD YAML differs from the Rust types
	$(CARGO) run -q -p pipewright-crds --bin crdgen -- --check charts/pipewright/crds

.PHONY: bench
bench: ## Benchmarks: the worker against peers, as ratios, into docs/benchmarks.md (QUICK=1: a short run)
	@QUICK="$(QUICK)" WORKER_ARGS="$(WORKER_ARGS)" bench/run

.PHONY: kind-e2e
kind-e2e: ## kind cluster (Docker, else podman + tests/kind/node-image), images, helm install, examples, status
	tests/kind/e2e
