# leaddist: `make run` serves the app for development, `make test` runs the suite, `make serve`
# runs the production server, `make worker` a background worker on its own. See README.md.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# A demo secret for the quota-reset webhook, for local use only (`make run` prints it).
DEMO_WEBHOOK_SECRET := whsec_bGVhZGRpc3QtZGVtby1zZWNyZXQtbG9jYWwtb25seSE=

# The drain worker: procrastinate's, waiting out database outages (leaddist/background.py); it
# also applies the routing rules' time transitions (the routing queue).
DRAIN_WORKER := -m leaddist.background --queues drains,routing,default --concurrency 1 \
	--shutdown-graceful-timeout 25 --fetch-job-polling-interval 1

.PHONY: run serve worker test lint format install install-dev clean-db

# What serving needs, and what testing adds on top (requirements-dev.txt includes the first).
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install-dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

run: export WEBHOOK_SECRET ?= $(DEMO_WEBHOOK_SECRET)
# Development delivers to local receivers (http, 127.0.0.1) too: the flag reaches the delivery
# worker and the admin alike (a set_delivery run in another terminal needs it set there:
# docs/DELIVERY.md). Production (`make serve`) leaves it off.
run: export ALLOW_PRIVATE_DELIVERY_TARGETS ?= true
run: export PORT := $(PORT)
run: install
	$(PY) manage.py migrate --no-input
	$(PY) manage.py seed
	$(PY) manage.py collectstatic --no-input --verbosity 0
	$(PY) manage.py demo_setup
	@# The background workers (drains; deliveries) run beside daphne and stop with it (Ctrl-C).
	$(PY) $(DRAIN_WORKER) & drains=$$!; \
	$(PY) manage.py deliver_leads & deliveries=$$!; \
	trap 'kill $$drains $$deliveries 2>/dev/null; wait $$drains $$deliveries' EXIT; \
	$(VENV)/bin/daphne -b 127.0.0.1 -p $(PORT) leaddist.asgi:application

# Production: DEBUG off, settings from the environment (docs/OPERATIONS.md). The settings
# refuse to load without SECRET_KEY, WEBHOOK_SECRET and DELIVERY_SECRET_KEYS, so each step below
# stops there.
serve: export DEBUG := false
serve: install
	$(PY) manage.py migrate --no-input
	$(PY) manage.py collectstatic --no-input --verbosity 0
	$(PY) -m leaddist.serve

# Background workers on their own, for hosts that run no web server. `make serve` and `make run`
# start them already. Drains and housekeeping (procrastinate) one at a time; lead deliveries in a
# process of their own (`manage.py deliver_leads`: the delivery queue, DELIVERY_CONCURRENCY async
# attempts at once), so neither waits for the other and an endpoint that hangs holds one
# delivery place for at most its timeout.
worker: install
	$(PY) $(DRAIN_WORKER) & drains=$$!; \
	trap 'kill $$drains 2>/dev/null; wait $$drains' EXIT; \
	$(PY) manage.py deliver_leads

clean-db:
	rm -rf .pgdata
