# minigpt: `make demo` runs the five notebooks on the built-in data; `make test` runs the tests.
# Every target installs what it needs into .venv first. On a CPU-only machine pick the CPU build
# of torch with TORCH, e.g. `make test TORCH=torch==2.13.0` (an unpinned `torch` may pull CUDA).
PYTHON ?= python3
TORCH ?= torch
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minigpt-installed
RUN ?= runs/demo
CONFIG ?= tiny

.PHONY: setup demo test test-unit test-notebooks lab bench clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	@start=$$(date +%s); \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install --quiet --upgrade pip && \
	$(PY) -m pip install --quiet "$(TORCH)" && \
	$(PY) -m pip install --quiet -e ".[dev,hf]" && \
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (minigpt)" >/dev/null && \
	touch $(STAMP) && echo "setup: .venv ready in $$(( $$(date +%s) - start ))s"

demo: setup
	$(PY) -m minigpt.demo --config $(CONFIG) --run-dir $(RUN)

test: setup
	$(PY) -m minigpt.ci_timer "unit tests" -- $(PY) -m pytest tests -q -m "not browser"
	$(PY) -m minigpt.ci_timer "notebooks (nbval)" -- env MINIGPT_CONFIG=ci MINIGPT_RUN_DIR=runs/nbval \
		$(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks -q

test-unit: setup
	$(PY) -m pytest tests -q -m "not slow and not browser"

lab: setup
	$(VENV)/bin/jupyter lab notebooks

bench: setup
	$(PY) -m minigpt.bench

clean-runs:
	rm -rf runs
