# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY_PACKAGES := -p aigw_contracts -p aigw_runtime -p aigw_edge -p aigw_router -p aigw_retrieval -p aigw_worker -p aigw_metering -p aigw_simulator -p aigw_devstack -p aigw_cli

.PHONY: install run test lint typecheck pytest bench clean

install:
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || python3 -m pip install --user --quiet uv || python3 -m pip install --user --quiet --break-system-packages uv
	@$(UV) sync --frozen --quiet

run: install
	@$(UV) run aigw-dev run

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: install
	$(UV) run mypy $(PY_PACKAGES)

pytest: install
	$(UV) run pytest

test: lint typecheck pytest

bench: install
	$(UV) run python -m bench.gateway

clean:
	rm -rf .aigw .pytest_cache .mypy_cache .ruff_cache
