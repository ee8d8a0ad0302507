# Two commands on a fresh machine: `make run` serves, `make test` tests. Each installs what it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000
# Local development: no Ray token auth (see ../shared/docs/ray-serve-2.60-notes.md).
export RAY_AUTH_MODE ?= disabled
export OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS ?= 0

.PHONY: install run stop test test-fast test-faults check train bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# `make run`: a Ray head of its own on RAY_PORT, capped to the node (2 CPUs, what 4 GB leaves for
# replicas, small object store: `python -m deployments.serving.resources`), then the app from
# serve_config.yaml on HOST:PORT behind HAProxy, which admits 16 requests per Ingress replica and
# answers the excess 503 + Retry-After itself (`python -m deployments.serving.admission`). HTTP
# binds 127.0.0.1 unless HOST=0.0.0.0; Prometheus metrics on METRICS_PORT, Ray's dashboard (for
# `serve status` / `serve deploy`) on 127.0.0.1:DASHBOARD_PORT. It prints where everything listens,
# refuses in one line when a port is taken or an earlier run is still up, and Ctrl-C stops it all.
# `make stop` (from any shell) ends every process `make run` started for that RAY_PORT, and only
# those: tools/run.py.
HOST ?= 127.0.0.1
RAY_PORT ?= 6390
METRICS_PORT ?= 8080
DASHBOARD_PORT ?= 8265
HAPROXY_METRICS_PORT ?= 9101
HAPROXY_STATS_PORT ?= 8404
# ACCESS_LOG=1: Serve's access log and one JSON line per prediction (deployments/serving/logs.py).
ACCESS_LOG ?= 0
RUN_ARGS = --host $(HOST) --port $(PORT) --ray-port $(RAY_PORT) --metrics-port $(METRICS_PORT) \
	--dashboard-port $(DASHBOARD_PORT) --haproxy-metrics-port $(HAPROXY_METRICS_PORT) \
	--haproxy-stats-port $(HAPROXY_STATS_PORT)
run: $(STAMP)
	@$(PY) -m tools.run start $(RUN_ARGS) $(if $(filter 1,$(ACCESS_LOG)),--access-log)

stop: $(STAMP)
	@$(PY) -m tools.run stop $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

# The serving benchmark (~10 min): writes benchmarks/results/serving.{json,md,png}.
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks.serving

# Lint (ruff), types (mypy) and the layer contract: core/ imports neither deployments/ nor
# ranker/, ranker/ never imports deployments/ (tests/test_layers.py). CI runs it before `make test`.
CHECK_STAMP := $(VENV)/.check-stamp
$(CHECK_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,check]'
	touch $(CHECK_STAMP)

check: $(CHECK_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not serve and not slow"

# Faults, overload and hostile input (RELIABILITY.md), ~10 min; also part of `make test`. The
# measured numbers go to var/faults.jsonl (one JSON line per fault).
test-faults: $(STAMP)
	mkdir -p var && rm -f var/faults.jsonl
	FAULTS_REPORT=var/faults.jsonl $(PY) -m pytest -q -s tests/test_hostile_properties.py \
	    tests/test_faults_cluster.py tests/test_faults_model.py tests/test_hostile_http.py \
	    tests/test_overload.py tests/test_faults_admission.py tests/test_hostile_llm.py

# Rebuilds the shipped model (ranker/models) from ../shared/data/jentic; prints the validation table.
train: $(STAMP)
	$(PY) -m ranker.train

clean:
	rm -rf $(VENV) var .pytest_cache
