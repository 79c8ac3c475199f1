# The two set-up commands of the README:
#   make run    installs airwave into .venv and starts it on its embedded defaults
#   make test   installs what the tests need (Python packages; postgresql, redis-server, coturn,
#               chromium, npm from Debian) and runs them all against a private PostgreSQL and Redis
PYTHON ?= python3.11
# xdist workers for the parallel run (tests/suite.py); the serial run is always one process.
TEST_WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test,bench]'
	touch $(STAMP)

# The web app's one npm dependency (socket.io-client), installed once when missing.
WEB_BUNDLE := web/node_modules/socket.io-client/dist/socket.io.esm.min.js

$(WEB_BUNDLE):
	cd web && npm ci --no-audit --no-fund

run: $(STAMP) $(WEB_BUNDLE)
	$(BIN)/airwave serve --dev

test: $(STAMP)
	bash tests/prepare-machine.sh
	$(BIN)/ruff check .
	$(BIN)/python -m tests.suite --workers=$(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) data .pytest_cache
