# Two commands on a fresh machine: `make run` serves, `make test` tests. Each installs what it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000
# Local development: no Ray token auth (see ../shared/docs/ray-serve-2.60-notes.md).
export RAY_AUTH_MODE ?= disabled
export OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS ?= 0

.PHONY: install run test test-fast test-faults check train bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# A Ray head of its own on RAY_PORT, capped to the node (2 CPUs, what 4 GB leaves for replicas,
# small object store, no dashboard: `python -m deployments.serving.resources`), then the app from
# serve_config.yaml on :8000. Ctrl-C stops both; other Ray clusters are left alone. Serve's
# settings are read by the processes the head starts (proxy, controller, replicas), so they go in
# the head's environment: throughput-optimised Serve, HAProxy in place of the Python proxy with
# admission control (past 16 requests per Ingress replica HAProxy answers 503 + Retry-After
# itself: `python -m deployments.serving.admission`), and user code on the replica's own loop (no thread
# hand-off per call: benchmarks/SERVING.md; HAProxy, not the replica, refuses the excess).
RAY_PORT ?= 6390
run: $(STAMP)
	@RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 \
	    RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER="$$($(PY) -m deployments.serving.admission)" \
	    $(VENV)/bin/ray start --head --block --port $(RAY_PORT) $$($(PY) -m deployments.serving.resources) & ray_pid=$$!; \
	trap 'kill $$ray_pid 2>/dev/null; wait $$ray_pid 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 60); do \
	    $(VENV)/bin/ray status --address 127.0.0.1:$(RAY_PORT) >/dev/null 2>&1 && break; sleep 1; \
	done; \
	$(VENV)/bin/serve run --address 127.0.0.1:$(RAY_PORT) serve_config.yaml

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
	    tests/test_overload.py

# Rebuilds the shipped model (ranker/models) from ../shared/data/jentic; prints the validation table.
train: $(STAMP)
	$(PY) -m ranker.train

clean:
	rm -rf $(VENV) var .pytest_cache
