# Every target sets up .venv itself, so a fresh clone needs only Python 3.11+ and make.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-deep test-pg15 test-citus test-fast check lint format bench bench-quick clean wheel wheel-smoke

# The bench extra (the peers make bench measures: ADBC, DuckDB, pgpq) adds ~6 s from PyPI.
# Every version is the lock's (requirements/dev.txt: all extras, hash-checked; `make lock`),
# and so is the setuptools that builds the wheel (requirements/build.txt: the venv's own
# is Python's bundled one, too old for pyproject's license field).
$(STAMP): pyproject.toml requirements/dev.txt requirements/build.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt -r requirements/build.txt
	$(BIN)/pip install --quiet --no-deps -e '.[dev,bench]'
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

## test-citus: integration and exactly-once fault tests against a Citus coordinator and two
## workers on loopback; builds Citus once from the vendored source (cached in build/citus)
# tests/citus/build.sh installs Debian's PostgreSQL 15 build packages with apt when missing.
CITUS_VENDOR ?= $(CURDIR)/../shared/vendor/citus
test-citus: $(STAMP)
	bindir="$$(tests/citus/build.sh $(CITUS_VENDOR))" && INGESTD_CITUS_BIN="$$bindir" \
	    $(BIN)/pytest -q -p no:cacheprovider $(if $(BASETEMP),--basetemp=$(BASETEMP)) tests/citus

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
	rm -rf build/wheel-smoke
	$(PY) -m venv build/wheel-smoke/venv
	build/wheel-smoke/venv/bin/pip install --quiet "$$(ls dist/ingestd-*.whl)[embedded]"
	build/wheel-smoke/venv/bin/ingestd --version
	cp -r examples build/wheel-smoke/demo
	rm -rf build/wheel-smoke/demo/.ingestd
	cd build/wheel-smoke/demo && ../venv/bin/ingestd --once --config ingestd.toml
	cd build/wheel-smoke/demo && ../venv/bin/ingestd status --config ingestd.toml

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## wheel: build dist/ingestd-*.whl exactly as the Dockerfile's builder stage does
# The Dockerfile runs this very command (RUN line); tests/deploy/test_docker.py checks it.
# No build isolation: the locked setuptools (requirements/build.txt) builds the wheel.
WHEEL_CMD := pip wheel --no-deps --no-build-isolation -w dist .
wheel: $(STAMP)
	rm -rf build/lib build/bdist.* dist  # stale modules in build/lib would be packed; build/citus is a cache
	PATH="$(CURDIR)/$(BIN):$$PATH" $(WHEEL_CMD)

## bench: ingestd against psql \copy, the SQL-only upsert and its peers (ADBC, DuckDB) on generated data (see bench/README.md)
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) .ingestd examples/.ingestd .pytest_cache .mypy_cache .ruff_cache

## lock: refresh requirements/*.txt, the exact versions (with hashes) that the venv, CI and
## the image install; keeps every pin pyproject.toml still admits (UPGRADE=1: newest of all)
# pyproject.toml keeps open ranges for `pip install ingestd`; tests/deploy/test_lock.py fails
# when the lock no longer satisfies them. uv is pinned here, in its own venv.
.PHONY: lock image image-base image-stack test-image
UV_VERSION := 0.13.8
UV := $(VENV)/uv/bin/uv
LOCK := $(UV) pip compile --quiet --universal --generate-hashes --python-version 3.11 \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
lock:
	test -x $(UV) || { $(PY) -m venv $(VENV)/uv && $(VENV)/uv/bin/pip install --quiet uv==$(UV_VERSION); }
	$(LOCK) pyproject.toml --all-extras -o requirements/dev.txt
	$(LOCK) pyproject.toml --extra sqs -c requirements/dev.txt -o requirements/image.txt
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	    | $(LOCK) - -o requirements/build.txt

## image: the container image IMAGE (ingestd:local) with podman or docker, on BASE
# The locked wheels are downloaded (hash-checked) first, so the build needs no network.
ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || { command -v docker >/dev/null 2>&1 && echo docker; })
IMAGE ?= ingestd:local
BASE ?= python:3.11-slim
IMAGE_PYTHON ?= 3.11
WHEELS := requirements/wheels
# podman: HEALTHCHECK exists only in the docker format; runc where Debian's crun fails here.
ENGINE_FLAGS := $(if $(filter podman,$(ENGINE)),--format docker $(if $(shell command -v runc),--runtime runc) \
	--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
image: $(STAMP)
	@test -n "$(ENGINE)" || { echo "make image: no container engine: install podman (apt-get install podman runc) or docker" >&2; exit 2; }
	$(BIN)/pip download --quiet --disable-pip-version-check --require-hashes --no-deps --only-binary=:all: \
	    --python-version $(IMAGE_PYTHON) -d $(WHEELS) -r requirements/image.txt -r requirements/build.txt
	$(ENGINE) build $(ENGINE_FLAGS) --network none --build-arg BASE=$(BASE) --build-arg PIP_NO_INDEX=1 \
	    --build-arg PIP_FIND_LINKS=/src/$(WHEELS) -t $(IMAGE) .

## image-base: a base image made from Debian packages (no registry needed), once per machine
# tzdata as in python:*-slim: Arrow reads time zones from /usr/share/zoneinfo.
IMAGE_BASE := localhost/ingestd-base:bookworm
image-base:
	@test -n "$(ENGINE)" || { echo "make image-base: no container engine: install podman (apt-get install podman runc) or docker" >&2; exit 2; }
	$(ENGINE) image inspect $(IMAGE_BASE) >/dev/null 2>&1 || { \
	    mmdebstrap --quiet --variant=apt --include=python3-minimal,python3-venv,tzdata \
	        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	        --dpkgopt='path-exclude=/usr/share/locale/*' bookworm - \
	    | $(ENGINE) import --change 'CMD ["python3"]' - $(IMAGE_BASE); }

## image-stack: Debian's PostgreSQL and Prometheus on image-base, for the compose stack test
STACK_IMAGE := localhost/ingestd-stack:bookworm
image-stack: image-base
	$(ENGINE) image inspect $(STACK_IMAGE) >/dev/null 2>&1 || $(ENGINE) build $(ENGINE_FLAGS) \
	    --network host --build-arg BASE=$(IMAGE_BASE) -t $(STACK_IMAGE) -f tests/deploy/stack.Containerfile tests/deploy

## test-image: build the image on image-base and run it for real (tests/deploy/test_image.py),
## then deploy/compose.yaml under podman-compose (tests/deploy/test_stack.py)
# Without podman or docker it skips (and says why); under CI=true that is an error.
TEST_IMAGE := localhost/ingestd:test
COMPOSE_VERSION := 1.6.0
PODMAN_COMPOSE := $(VENV)/compose/bin/podman-compose
test-image: $(STAMP)
ifeq ($(ENGINE),)
	@if [ "$$CI" = true ]; then echo "make test-image: no container engine (CI must run it)" >&2; exit 1; fi
	@echo "make test-image: SKIPPED: no container engine (apt-get install podman runc mmdebstrap)"
else
	$(MAKE) --no-print-directory image-base
	$(MAKE) --no-print-directory image BASE=$(IMAGE_BASE) IMAGE=$(TEST_IMAGE)
ifeq ($(ENGINE),podman)
	$(MAKE) --no-print-directory image-stack
	test -x $(PODMAN_COMPOSE) || { $(PY) -m venv $(VENV)/compose \
	    && $(VENV)/compose/bin/pip install --quiet podman-compose==$(COMPOSE_VERSION); }
endif
	INGESTD_IMAGE=$(TEST_IMAGE) INGESTD_ENGINE=$(ENGINE) INGESTD_BASE_IMAGE=$(IMAGE_BASE) \
	INGESTD_STACK_IMAGE=$(STACK_IMAGE) INGESTD_COMPOSE=$(CURDIR)/$(PODMAN_COMPOSE) \
	    $(BIN)/pytest -q -p no:cacheprovider $(if $(BASETEMP),--basetemp=$(BASETEMP)) \
	    tests/deploy/test_image.py tests/deploy/test_stack.py
endif
