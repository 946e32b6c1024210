# Every target sets up .venv itself, so a fresh clone needs only Python 3.11+ and make.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-deep test-pg15 test-fast check lint format bench bench-quick clean wheel wheel-smoke

# The bench extra (the peers make bench measures: ADBC, DuckDB, pgpq) adds ~6 s from PyPI.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

## demo: load examples/inbox into the embedded PostgreSQL and show what landed
demo: $(STAMP)
	cd examples && ../$(BIN)/ingestd --once --config ingestd.toml
	cd examples && ../$(BIN)/ingestd status --config ingestd.toml
	cd examples && ../$(BIN)/python show.py

## test: the whole suite (unit, integration, fault) against a real PostgreSQL
test: $(STAMP)
	$(BIN)/pytest -q

## test-pg15: the integration tests against Debian's PostgreSQL 15 (a second server version)
test-pg15: $(STAMP)
	tests/other_server.sh 15

## test-deep: the differential CSV test (every path reads every byte alike) with many examples
test-deep: $(STAMP)
	INGESTD_DEEP=1 $(BIN)/pytest -q tests/integration/test_one_meaning.py -k test_every_path_reads --hypothesis-show-statistics

## test-fast: unit tests only (no database)
test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

## check: what CI checks besides the tests (the same hooks as .pre-commit-config.yaml)
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict ingestd
	$(BIN)/lint-imports

lint: check

## wheel-smoke: build the wheel, install it into a fresh venv, run --version and the demo
wheel-smoke: wheel
	rm -rf /tmp/ingestd-wheel-venv
	$(PY) -m venv /tmp/ingestd-wheel-venv
	/tmp/ingestd-wheel-venv/bin/pip install --quiet "$$(ls dist/ingestd-*.whl)[embedded]"
	/tmp/ingestd-wheel-venv/bin/ingestd --version
	rm -rf /tmp/ingestd-wheel-demo && cp -r examples /tmp/ingestd-wheel-demo
	rm -rf /tmp/ingestd-wheel-demo/.ingestd
	cd /tmp/ingestd-wheel-demo && /tmp/ingestd-wheel-venv/bin/ingestd --once --config ingestd.toml
	cd /tmp/ingestd-wheel-demo && /tmp/ingestd-wheel-venv/bin/ingestd status --config ingestd.toml

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## wheel: build dist/ingestd-*.whl exactly as the Dockerfile's builder stage does
# The Dockerfile runs this very command (RUN line); tests/deploy/test_docker.py checks it.
WHEEL_CMD := pip wheel --no-deps -w dist .
wheel: $(STAMP)
	rm -rf build dist  # setuptools would pack stale modules left in build/lib
	PATH="$(CURDIR)/$(BIN):$$PATH" $(WHEEL_CMD)

## bench: ingestd against psql \copy, the SQL-only upsert and its peers (ADBC, DuckDB) on generated data (see bench/README.md)
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) .ingestd examples/.ingestd .pytest_cache .mypy_cache .ruff_cache
