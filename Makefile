# hoopfast — `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUST_SOURCES := $(shell find rust/src -name '*.rs') rust/Cargo.toml rust/pyproject.toml rust/hoopfast_core.pyi
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F ':.*?## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: system-deps
system-deps: ## Debian packages the build, tests and benchmarks need (libclang for pg_query, libssl-dev and zlib1g-dev for the Cython trail, pgbouncer, PostgreSQL, a JDK and pgjdbc)
	@need=""; \
	command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need="$$need pgbouncer"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v psql >/dev/null || need="$$need postgresql-client"; \
	ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need="$$need libclang-dev"; \
	{ command -v javac >/dev/null && command -v java >/dev/null; } || ls /usr/lib/jvm/*/bin/javac >/dev/null 2>&1 || need="$$need default-jdk-headless"; \
	[ -f /usr/share/java/postgresql.jar ] || need="$$need libpostgresql-jdbc-java"; \
	[ -f /usr/include/openssl/sha.h ] || need="$$need libssl-dev"; \
	[ -f /usr/include/zlib.h ] || need="$$need zlib1g-dev"; \
	if [ -n "$$need" ]; then \
	  echo "installing:$$need"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml setup.py ext/_cpump.pyx ext/_ctrail.pyx $(RUST_SOURCES) | system-deps
	$(PY) -m pip install -q "maturin>=1.4,<2" "Cython>=3.0" "setuptools>=77" wheel
	rm -rf rust/target/wheels
	cd rust && ../$(PY) -m maturin build --release -q -o target/wheels
	$(PY) -m pip install -q --force-reinstall --no-deps rust/target/wheels/hoopfast_core-*.whl
	$(PY) -m pip install -q --no-build-isolation -e '.[test,dev]'
	@touch $@

.PHONY: install
install: $(STAMP) ## build everything (Rust core, Cython pump and trail, package, test deps) into .venv
	@$(VENV)/bin/hoopfast version

.PHONY: demo
demo: install system-deps ## run the gateway on a throwaway cluster with sample data; prints how to connect
	$(VENV)/bin/hoopfast demo

.PHONY: test
test: install system-deps ## lint, the Rust tests, then the whole suite once per implementation
	$(MAKE) --no-print-directory lint cargo-test test-compiled test-python

.PHONY: test-compiled
test-compiled: install ## the suite on the compiled core (Rust + Cython)
	HOOPFAST_IMPL=compiled $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-python
test-python: install ## the suite on the pure-Python reference
	HOOPFAST_IMPL=python $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: cargo-test
cargo-test: ## the Rust crate's own tests
	cargo test -q --manifest-path rust/Cargo.toml

.PHONY: lint
lint: install ## ruff (checks and format), mypy, and stubtest for the compiled modules
	$(VENV)/bin/ruff check src tests bench fuzz
	$(VENV)/bin/ruff format --check src tests bench fuzz
	$(VENV)/bin/mypy
	HOOPFAST_IMPL=compiled $(PY) -m mypy.stubtest --allowlist .stubtest-allowlist hoopfast_core hoopfast.core._cpump hoopfast.core._ctrail

.PHONY: bench
bench: install system-deps ## side-by-side benchmark: direct vs pgbouncer vs hoopfast (several minutes)
	$(PY) bench/run.py

.PHONY: clean
clean: ## remove build output and the virtualenv
	rm -rf $(VENV) rust/target build src/*.egg-info src/hoopfast/core/_cpump*.so src/hoopfast/core/_ctrail*.so ext/_cpump.c ext/_ctrail.c
