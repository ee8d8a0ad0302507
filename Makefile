# Two commands on a fresh machine: `make run` serves, `make test` tests. Each installs what it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000
# Local development: no Ray token auth (see ../shared/docs/ray-serve-2.60-notes.md).
export RAY_AUTH_MODE ?= disabled
export OPENSESAME_ALLOW_PRIVATE_SPEC_HOSTS ?= 0

.PHONY: install run test test-fast check train bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# A Ray head of its own (capped: 2 CPUs, 4 GB, small object store, no dashboard) on RAY_PORT, then
# the app from serve_config.yaml on :8000. Ctrl-C stops both; other Ray clusters are left alone.
RAY_PORT ?= 6390
run: $(STAMP)
	@$(VENV)/bin/ray start --head --block --port $(RAY_PORT) --num-cpus 2 --memory 4000000000 \
	    --object-store-memory 200000000 --include-dashboard=false --disable-usage-stats & ray_pid=$$!; \
	trap 'kill $$ray_pid 2>/dev/null; wait $$ray_pid 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 60); do \
	    $(VENV)/bin/ray status --address 127.0.0.1:$(RAY_PORT) >/dev/null 2>&1 && break; sleep 1; \
	done; \
	RAY_SERVE_THROUGHPUT_OPTIMIZED=1 $(VENV)/bin/serve run --address 127.0.0.1:$(RAY_PORT) serve_config.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not serve and not slow"

# Rebuilds the shipped model (ranker/models) from ../shared/data/jentic; prints the validation table.
train: $(STAMP)
	$(PY) -m ranker.train

clean:
	rm -rf $(VENV) var .pytest_cache
