# The two commands a newcomer needs:
#   make demo   — fresh environment, real photos, offline pretrained model, index, services, a search
#   make test   — the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,train,dev

.PHONY: demo test reliability venv lint typecheck protos bench clean-demo

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash deploy/quickstart.sh

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Whole-stack load, soak and fault suite alone (also part of `make test`); figures in README "Reliability".
reliability: venv
	nice -n 10 $(BIN)/python -m pytest -m reliability tests/reliability -s $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check embedder indexer gateway training protos/codegen.py protos/__init__.py bench tests
	$(BIN)/mypy
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

protos: venv
	$(BIN)/python -m protos.codegen

clean-demo:
	rm -rf data/demo models var
