# backup-agent — every target creates the virtualenv first when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

LOCK   := requirements.lock

.PHONY: venv demo test lint bench soak install lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python scripts/demo

# The demo needs the agent and moto_server only ('.[demo]'): no test, lint or type tools.
# A development install (`make venv`) already has them all.
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ ! -f $(STAMP) ] || [ pyproject.toml -nt $(STAMP) ]; then \
	    $(BIN)/python -m pip install --quiet -e '.[demo]'; fi
	touch $(DEMO_STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP)
	$(BIN)/ruff check agent tests scripts bench
	$(BIN)/ruff format --check agent tests scripts bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m bench

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m soak

install:
	sudo scripts/install.sh

# requirements.lock: every runtime and build dependency of pyproject.toml, pinned, with the
# sha256 of each file PyPI has for it; scripts/install.sh installs exactly that set
# (pip --require-hashes). Keeps the pins still allowed; `make lock LOCK_FLAGS=--upgrade`
# moves every pin to the newest release allowed.
lock: $(STAMP)
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
	    --allow-unsafe --all-build-deps --strip-extras --no-emit-index-url \
	    --no-emit-find-links --no-emit-trusted-host $(LOCK_FLAGS) \
	    --output-file $(LOCK) pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
