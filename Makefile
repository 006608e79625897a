# leaddist: `make run` serves the app, `make test` runs the suite. See README.md.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# A demo secret for the quota-reset webhook, for local use only (`make run` prints it).
DEMO_WEBHOOK_SECRET := whsec_bGVhZGRpc3QtZGVtby1zZWNyZXQtbG9jYWwtb25seSE=

.PHONY: run test lint format install clean-db

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

run: export WEBHOOK_SECRET ?= $(DEMO_WEBHOOK_SECRET)
run: export PORT := $(PORT)
run: install
	$(PY) manage.py migrate --no-input
	$(PY) manage.py seed
	$(PY) manage.py collectstatic --no-input --verbosity 0
	$(PY) manage.py demo_setup
	$(VENV)/bin/daphne -b 127.0.0.1 -p $(PORT) leaddist.asgi:application

clean-db:
	rm -rf .pgdata
