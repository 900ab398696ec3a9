# chat-management — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_LINK_MODE ?= copy

AUTH_JWT_SECRET ?= dev-only-secret-change-me-0123456789abcdef
export AUTH_JWT_SECRET

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: ## install uv (if missing) and the project's Python dependencies
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv sync --frozen

.PHONY: test-deps
test-deps: install ## install what the tests start: redis-server and the LocalStack venv
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server; fi; }
	@bash scripts/setup-localstack.sh
	@[ -x /usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator ] || \
	  echo "!!! the Firestore emulator is not installed: tests marked 'firestore' will be skipped"

.PHONY: deploy-deps
deploy-deps: ## install promtool (Debian's prometheus package) for the alert-rule tests
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends prometheus; fi; }

.PHONY: dashboards
dashboards: install ## regenerate the chart's Grafana dashboards from deploy/grafana/dashboards.py
	uv run --frozen python deploy/grafana/dashboards.py

.PHONY: lint
lint: install ## ruff format check, ruff lint, mypy --strict
	uv run --frozen ruff format --check .
	uv run --frozen ruff check .
	uv run --frozen mypy .

.PHONY: fmt
fmt: install ## format and fix what ruff can
	uv run --frozen ruff format .
	uv run --frozen ruff check --fix .

.PHONY: test
test: test-deps deploy-deps lint ## everything CI runs: lint, types, and all tests against real backends
	uv run --frozen pytest

.PHONY: docs
docs: install ## regenerate the README's configuration table and the chart's list of settings
	uv run --frozen python scripts/update_readme_config.py
	uv run --frozen python deploy/chart_schema.py

.PHONY: run
run: install ## run all four services in one process on http://127.0.0.1:8000 (embedded adapters)
	uv run --frozen chat-management serve all

.PHONY: dev
dev: test-deps ## each service as its own process with the cloud adapters, on local Redis, LocalStack, Firestore emulator
	uv run --frozen chat-management dev

.PHONY: bench
bench: test-deps ## load the embedded and the multi-process stacks (req/s, p50, p99, ratios to a bare route); images/s/core pyvips vs Pillow vs vips CLI
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq wrk; fi; }
	uv run --frozen python scripts/bench_presign.py
	uv run --frozen python -m bench.http
	uv run --frozen python scripts/bench_consumer.py --queue sqlite
	@command -v vipsthumbnail >/dev/null 2>&1 || { \
	  echo "installing libvips-tools (vipsthumbnail: the C floor of the image benchmark)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libvips-tools; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libvips-tools; fi; } || \
	  echo "!!! libvips-tools could not be installed: bench.media skips its C floor"
	uv run --frozen python -m bench.media

.PHONY: clean
clean: ## remove local data and caches (keeps the venvs)
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
