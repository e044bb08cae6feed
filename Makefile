# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates (or reuses) the project's virtual environment by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-platform lint schema clean hil

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the gateway against a simulated site (Ctrl-C stops; DEMO_SECONDS=N stops by itself).
demo: $(STAMP)
	$(BIN)/python -m hil.demo --config config/example-site.yaml

## Lint, type-check and run every test. Four workers on any machine: most of the suite waits on
## brokers, simulated lines and subprocesses rather than computing, so four overlap well on two
## cores. Tests start their own brokers on free ports and work in their own folders; the few
## that must share something (the demo's fixed ports) name an xdist_group, run by one worker.
PYTEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

## Lint and the tests that start no broker, gateway or installer (about 85 s): the edit-test loop.
## `make test` (everything, with mypy) before pushing.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -m "not integration"

## Hardware-in-the-loop scenarios against the simulated rig (SCENARIO=FILE runs one, EDGE_RIG=FILE
## a real rig); reports in var/hil/ (report.txt, junit.xml, figures.json). docs/hil.md.
SCENARIO ?= hil/scenarios/*.yaml
hil: $(STAMP)
	$(BIN)/python -m hil.scenario run $(SCENARIO) --report var/hil

## Measure; prints the figures and writes bench-results.json.
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks

## The district platform at scale: fleet simulator, Mosquitto, receivers and PostgreSQL (about
## 3 minutes; needs mosquitto and postgresql). Merges its figures into bench-results.json.
bench-platform: $(STAMP)
	$(BIN)/python -m tests.benchmarks.district_ingest --out bench-results.json

## Regenerate config/site.schema.json after changing edge/config/model.py.
schema: $(STAMP)
	$(BIN)/python -m edge.config.schema

clean:
	rm -rf $(VENV) var bench-results.json .mypy_cache .ruff_cache .pytest_cache
