# The README's two commands: `make demo` and `make test`. Both create .venv if missing.
# `make demo` installs only the runtime dependencies: the test extras (helm-python-sdk is
# ~250 MB with manylinux-only wheels, kmock, ...), matplotlib and the operator's kopf and
# Kubernetes client must not stop a laptop from seeing the demo. Each install has its own
# stamp, redone when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev

.PHONY: demo test test-fast kube lint protos bench image clean

define venv
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
endef

$(RUNTIME_STAMP): pyproject.toml
	$(venv)
	$(PY) -m pip install --quiet -e .
	@touch $@

# the extras include the runtime dependencies, so the runtime stamp is good too
$(DEV_STAMP): pyproject.toml
	$(venv)
	$(PY) -m pip install --quiet -e '.[test,bench,operator]'
	@touch $@ $(RUNTIME_STAMP)

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/unison demo

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

# Seconds, not minutes: lint, unit tests and the operator's emulator tests only.
test-fast: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -rs tests/unit tests/operator $(PYTEST_ARGS)

# What the real-Kubernetes suite needs (Debian packages, Kubernetes built from Go modules,
# the image); `make test` then runs it instead of skipping it.
kube:
	bash scripts/kube/prepare.sh
	bash scripts/container/prepare.sh

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

protos: $(DEV_STAMP)
	$(PY) scripts/gen_protos.py

bench: $(DEV_STAMP)
	$(PY) -m bench.run

image:
	bash scripts/container/prepare.sh

clean:
	rm -rf build .pytest_cache
