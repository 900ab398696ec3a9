# chat-management — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_LINK_MODE ?= copy
# uv from PATH, else the project-local one scripts/bootstrap.sh installs into .tools (never the system Python)
export PATH := $(PATH):$(CURDIR)/.tools/bin
# uv trusts the platform's certificate store (a proxy's own root CA, as on CI)
export UV_SYSTEM_CERTS ?= 1
export UV_NATIVE_TLS ?= 1

AUTH_JWT_SECRET ?= dev-only-secret-change-me-0123456789abcdef
export AUTH_JWT_SECRET
# `make run` listens on loopback only: the dev secret above is public (and refused anywhere else).
HOST ?= 127.0.0.1
export HOST

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: ## install uv (if missing, into .tools) and every Python dependency, dev tools included
	@bash scripts/bootstrap.sh uv
	uv sync --frozen

.PHONY: install-runtime
install-runtime: ## install uv (if missing, into .tools) and the runtime dependencies only
	@bash scripts/bootstrap.sh run

.PHONY: test-deps
test-deps: ## install what the tests need: dependencies, redis-server, prometheus + promtool, chromium (apt as root/sudo), the LocalStack venv
	@bash scripts/bootstrap.sh test
	@bash scripts/bootstrap.sh system chromium  # the web client's browser tests (tests/web)

.PHONY: deploy-deps
deploy-deps: ## install Debian's prometheus: promtool and the server the live dashboard/alert check starts
	@bash scripts/bootstrap.sh system prometheus=prometheus prometheus=promtool

.PHONY: deps-check
deps-check: install ## the lock matches the pyprojects; each workspace member's imports match its own dependencies
	@bash scripts/check-deps.sh

.PHONY: dashboards
dashboards: install ## regenerate the chart's Grafana dashboards from deploy/grafana/dashboards.py
	uv run --frozen python deploy/grafana/dashboards.py

.PHONY: lint
lint: install ## ruff format check, ruff lint, mypy --strict, the import-linter contracts (layers), the docs site (mkdocs --strict)
	uv run --frozen ruff format --check .
	uv run --frozen ruff check .
	uv run --frozen mypy .
	uv run --frozen lint-imports
	NO_MKDOCS_2_WARNING=1 uv run --frozen mkdocs build --strict

.PHONY: fmt
fmt: install ## format and fix what ruff can
	uv run --frozen ruff format .
	uv run --frozen ruff check --fix .

# pytest-xdist workers: the suite waits on backends and subprocesses far more than it computes, so more
# workers than cores pays off (measured in docs/getting-started.md, `make test`); files stay whole on one worker.
PYTEST_WORKERS ?= 4

.PHONY: test
test: test-deps lint deps-check ## everything CI runs: lint, types, and all tests against real backends (PYTEST_WORKERS=4 in parallel)
	uv run --frozen pytest -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: docs
docs: install ## regenerate the configuration table (docs/operations/configuration.md) and the chart's list of settings
	uv run --frozen python scripts/update_readme_config.py
	uv run --frozen python deploy/chart_schema.py
	uv run --frozen python -m chat_management.provision deploy/bucket

# the web client's "sign in as" (POST /dev/token) is for laptops only: these two targets turn it on
run dev: export DEV_LOGIN ?= true

.PHONY: run
run: install-runtime ## run all five services in one process on http://127.0.0.1:8000 (embedded adapters)
	uv run --frozen --no-dev chat-management serve all

.PHONY: dev
dev: test-deps ## each service as its own process with the cloud adapters, on local Redis, LocalStack, Firestore emulator; open http://127.0.0.1:8100/ (the gateway)
	uv run --frozen chat-management dev

.PHONY: bench
bench: test-deps ## stacks under load (req/s, p50, p99 vs a bare route); CPU µs per layer; limiter cost; images/s/core pyvips vs Pillow vs vips CLI; sockets; per-pod cost on a Redis Cluster; Firestore writes at 3,300 msg/s vs its limits; JSON in bench/results/, SVG plots
	@bash scripts/bootstrap.sh system wrk
	uv run --frozen python -m bench.results --new
	uv run --frozen python scripts/bench_presign.py
	uv run --frozen python -m bench.http
	uv run --frozen python -m bench.layers
	uv run --frozen python -m bench.limiter
	uv run --frozen python scripts/bench_consumer.py --queue sqlite
	@command -v vipsthumbnail >/dev/null 2>&1 || { \
	  echo "installing libvips-tools (vipsthumbnail: the C floor of the image benchmark)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libvips-tools; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libvips-tools; fi; } || \
	  echo "!!! libvips-tools could not be installed: bench.media skips its C floor"
	uv run --frozen python -m bench.media
	uv run --frozen python -m bench.media_pipeline
	uv run --frozen python -m bench.albums
	uv run --frozen python -m bench.sockets
	uv run --frozen python -m bench.socket_memory
	uv run --frozen python -m bench.pods
	uv run --frozen python -m bench.firestore_model
	uv run --frozen python -m bench.plots

.PHONY: clean
clean: ## remove local data and caches (keeps the venvs)
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache

.PHONY: chaos
chaos: test-deps ## fault injection (long form): every fault on every backend, kill -9 and SIGTERM under load
	CHAOS=long uv run --frozen pytest tests/chaos -s -q -p no:randomly --timeout 900
