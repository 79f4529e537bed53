# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_REPO ?= ./demo-repo
PYTEST_ARGS ?=
# lsst-daf-butler (the `bench` extra) installs a `butler` command of its own: it gets its own venv, which
# the peers.* benchmarks find as .venv-daf/bin/python (or BUTLER_BENCH_DAF_PYTHON); see docs/benchmarks.md.
DAF_VENV ?= .venv-daf

.PHONY: demo test lint bench daf-venv venv clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

$(DAF_VENV)/.installed: pyproject.toml
	python3 -m venv $(DAF_VENV)
	$(DAF_VENV)/bin/python -m pip install -q --upgrade pip
	$(DAF_VENV)/bin/python -m pip install -q -e ".[bench]"
	touch $@

daf-venv: $(DAF_VENV)/.installed

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
	rm -rf $(VENV) $(DAF_VENV) $(DEMO_REPO) $(DEMO_REPO)-preview-*.png .bench .pytest_cache .hypothesis
