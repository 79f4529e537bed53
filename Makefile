# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_REPO ?= ./demo-repo
PYTEST_ARGS ?=

.PHONY: demo test lint bench venv clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m orchestration.demo_build --repo $(DEMO_REPO)

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check butler orchestration tests benchmarks
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(DEMO_REPO) $(DEMO_REPO)-preview-*.png .bench .pytest_cache .hypothesis
