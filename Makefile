# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates (or reuses) the project's virtual environment by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-platform lint schema clean hil deploy-arm64 deploy-armhf

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
## cores. Tests start their own brokers on free ports and work in their own folders; the demo's
## tests, which need its fixed ports, take a file lock so one runs at a time.
PYTEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal

## Lint and the tests that start no broker, gateway or installer (about 85 s): the edit-test loop.
## `make test` (everything, with mypy) before pushing.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -n 2 --dist worksteal -m "not integration and not slow"

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

## The install on a 64-bit Raspberry Pi OS, proven here (as root; 5 to 12 minutes): a Debian bookworm
## arm64 root (debootstrap) run under qemu-user, deploy/install.sh from a wheelhouse for aarch64,
## then edge --version, check-config, selftest and the lgpio pin factory inside it. Writes
## deploy_arm64_root_s and deploy_arm64_install_s to bench-results.json. docs/deploy.md.
deploy-arm64: $(STAMP)
	$(BIN)/python -m tests.deploy.arm --arch arm64

## The same for 32-bit Raspberry Pi OS (about 10 minutes): lgpio, PyYAML and cffi have no armv7l
## wheel on PyPI, so install.sh builds them from sources in the wheelhouse, under qemu.
deploy-armhf: $(STAMP)
	$(BIN)/python -m tests.deploy.arm --arch armhf

## Regenerate config/site.schema.json after changing edge/config/model.py.
schema: $(STAMP)
	$(BIN)/python -m edge.config.schema

clean:
	rm -rf $(VENV) var bench-results.json .mypy_cache .ruff_cache .pytest_cache
