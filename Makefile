# The two commands a newcomer needs:
#   make demo   — fresh environment, real photos, offline pretrained model, index, services, a search
#   make test   — the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,train,dev

# Images (deploy/Dockerfile): `make wheelhouse images` builds offline; PYTHON_IMAGE=... for another base,
# DOCKER=/usr/bin/docker for Debian's client (it has BuildKit built in), IMAGE_TAG for the tag, and
# BUILD_FLAGS for more `docker build` flags (e.g. --network none: a wheelhouse build needs no network).
DOCKER       ?= docker
IMAGE_TAG    ?= latest
PYTHON_IMAGE ?= python:3.11-slim-bookworm
IMAGE_VARIANT ?= cpu
VARIANTS     ?= $(IMAGE_VARIANT)
BUILD_FLAGS  ?=
WHEELHOUSE   := deploy/wheelhouse

.PHONY: demo demo-retrain test reliability venv lint typecheck protos bench clean-demo wheelhouse images images-test \
	clean-wheelhouse

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash deploy/quickstart.sh

# Against a running `make demo` (another terminal): fine-tune (PRESET=ft adds phase 2), serve the new model
# beside the old one, re-index while the gateway answers, print before/after.
PRESET ?= tl-hard
demo-retrain: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m training.demo_retrain --preset $(PRESET)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Whole-stack load, soak and fault suite alone (also part of `make test`); figures in README "Reliability".
reliability: venv
	nice -n 10 $(BIN)/python -m pytest -m reliability tests/reliability -s $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check embedder indexer gateway training protos/codegen.py protos/__init__.py bench tests
	$(BIN)/mypy
	$(BIN)/hadolint deploy/Dockerfile
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

protos: venv
	$(BIN)/python -m protos.codegen

clean-demo:
	rm -rf data/demo models var

# Every wheel the images install (pyproject's build backend + dependencies of each extra in VARIANTS),
# collected by pip on this host; deploy/Dockerfile then installs with --no-index. Needs CPython 3.11.
# Collected again when pyproject.toml changes or VARIANTS differ (the stamp stays out of the build context:
# a file added to the wheelhouse would invalidate the image's cached layers).
WHEELHOUSE_STAMP := build/wheelhouse-$(shell echo $(VARIANTS) | tr ' ' +).stamp
wheelhouse: $(WHEELHOUSE_STAMP)

$(WHEELHOUSE_STAMP): pyproject.toml
	rm -f build/wheelhouse-*.stamp
	$(PYTHON) deploy/wheelhouse.py $(foreach v,$(VARIANTS),--variant $(v)) $(WHEELHOUSE)
	mkdir -p build && touch $@

clean-wheelhouse:
	rm -f $(WHEELHOUSE)/*.whl build/wheelhouse-*.stamp

# The three images, from the wheelhouse (tags as docker-compose.yml names them); IMAGE_VARIANT picks the
# runtime extra they install (cpu by default; any other runtime extra of pyproject.toml, e.g. openvino).
images: wheelhouse
	for target in embedder gateway indexer; do \
	  DOCKER_BUILDKIT=1 $(DOCKER) build -f deploy/Dockerfile --target $$target --build-arg VARIANT=$(IMAGE_VARIANT) $(BUILD_FLAGS) \
	    --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t recipelens/$$target:$(IMAGE_TAG) . || exit 1; \
	done

# Build the images and run them (indexer job, embedder, gateway, a search) on a Docker engine: tests/deploy.
images-test: venv
	$(BIN)/python -m pytest -m images tests/deploy -s $(PYTEST_ARGS)
