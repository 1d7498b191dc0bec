# effnet-serve: `make serve` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPOSITORY ?= models/repository
VARIANTS ?= all
WEIGHTS ?= default
PYTEST_ARGS ?=

.PHONY: help venv proto models serve test test-unit test-e2e lint typecheck check bench bench-quick check-deploy soak clean

help:
	@echo "make serve    set up (venv, dependencies, model repository) and serve HTTP :8000, gRPC :8001"
	@echo "make test     set up and run the test suite"
	@echo "make models   export the default model repository ($(REPOSITORY))"
	@echo "make lint     ruff and mypy"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[export,dev]'
	touch $(STAMP)

venv: $(STAMP)

proto: $(STAMP)
	$(PY) -m service.protogen

$(REPOSITORY)/.complete: $(STAMP)
	$(PY) -m models.export --variant $(VARIANTS) --repository $(REPOSITORY) --weights $(WEIGHTS)
	touch $@

models: $(REPOSITORY)/.complete

serve: proto models
	$(PY) -m service serve --repository $(REPOSITORY)

test: proto
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: proto
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: proto
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

check: lint test

clean:
	rm -rf $(VENV) service/_generated .pytest_cache .ruff_cache .mypy_cache
