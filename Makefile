# Developer entry points. `make test` and `make demo` set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
MODEL ?=
PYTEST_ARGS ?=

.PHONY: help env test demo docs bench clean

help:
	@echo "make test   - create $(VENV), install the package with its fast, mnn, test and doc extras, run the tests"
	@echo "make demo   - embed the bundled recordings and print a similarity matrix (MODEL=/path/to/model.pth.tar)"
	@echo "make docs   - build the Sphinx documentation into doc/_build/html"
	@echo "make bench  - run the speed and memory benchmarks, the runtimes side by side, a one-off command's first use, the AS-norm cohort statistics chunked and whole, sliding windows, then the dask scale-out benchmark"

# The editable install uses compat mode: it puts the work tree on sys.path, so that the
# pkgutil namespace packages bob/ and bob/learn/ (shared with bob, bob.learn.em, ...) find
# bob.learn.pytorch in every process, including bob's `bob` command.
$(VENV)/.installed: setup.py requirements.txt fast-requirements.txt mnn-requirements.txt vad-requirements.txt test-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=23.1"
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[fast,mnn,vad,test,doc]" --config-settings editable_mode=compat
	touch $@

env: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

docs: $(VENV)/.installed
	$(PY) -m sphinx -W --keep-going -b html doc doc/_build/html
	$(PY) -m sphinx -W --keep-going -b doctest doc doc/_build/doctest

demo: $(VENV)/.installed
	$(VENV)/bin/bob pytorch demo $(if $(MODEL),--model "$(MODEL)")

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py
	$(PY) benchmarks/runtimes.py
	$(PY) benchmarks/firstuse.py
	$(PY) benchmarks/cohort.py
	$(PY) benchmarks/windows.py
	$(PY) benchmarks/cluster.py

clean:
	rm -rf build dist doc/_build *.egg-info .pytest_cache
