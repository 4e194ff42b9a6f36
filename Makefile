# minigpt: `make demo` runs notebooks 01-08 on the built-in data (06, which scores every stage, last); `make test` runs the tests.
# Every target installs what it needs into .venv first. On a CPU-only machine pick the CPU build
# of torch with TORCH, e.g. `make test TORCH=torch==2.13.0` (an unpinned `torch` may pull CUDA).
PYTHON ?= python3
TORCH ?= torch
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minigpt-installed
RUN ?= runs/demo
CONFIG ?= tiny

.PHONY: setup demo align test test-unit test-notebooks notebooks-outputs lab bench clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	@start=$$(date +%s); \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install --quiet --upgrade pip && \
	$(PY) -m pip install --quiet "$(TORCH)" && \
	$(PY) -m pip install --quiet -e ".[dev,hf,serve,eval]" && \
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (minigpt)" >/dev/null && \
	touch $(STAMP) && echo "setup: .venv ready in $$(( $$(date +%s) - start ))s"

demo: setup
	$(PY) -m minigpt.demo --config $(CONFIG) --run-dir $(RUN)

# notebooks 07 (DPO) and 08 (RL) on a finished demo run: read $(RUN)/sft, write $(RUN)/align and $(RUN)/rl
align: setup
	$(PY) -m minigpt.demo --config $(CONFIG) --run-dir $(RUN) --notebooks 07_align 08_rl

# make test: the single CI entry point (.ci/run). Each part prints its time ([time] ...).
#  1. unit tests: fast, no notebooks
#  2. nbval: the committed notebooks re-run in order on the config their outputs came from (ci unless someone
#     regenerated them with another one); `# NBVAL_CHECK_OUTPUT` cells must match, after notebooks/nbval_sanitize.cfg
#  3. slow tests: papermill 01 -> 08 on params/ci.yaml and what the executed notebooks show, end-to-end runs
#  4. browser: JupyterLab + Debian chromium (Playwright), on a copy of the run nbval just made
NB_RUN ?= runs/nbval
NBVAL_ARGS = --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg -p no:cacheprovider
test: setup
	$(PY) -m minigpt.ci_timer "unit tests" -- $(PY) -m pytest tests -q -m "not slow and not browser"
	@cfg=$$($(PY) tests/notebook_tools.py config) && rm -rf $(NB_RUN) && \
	$(PY) -m minigpt.ci_timer "notebooks: nbval (config $$cfg)" -- env MINIGPT_CONFIG=$$cfg MINIGPT_RUN_DIR=$(NB_RUN) \
		$(PY) -m pytest $(NBVAL_ARGS) notebooks -q
	$(PY) -m minigpt.ci_timer "slow tests (papermill 01-08 on ci, end to end)" -- $(PY) -m pytest tests -q -m "slow and not browser" --durations=5
	$(PY) -m minigpt.ci_timer "browser (JupyterLab + chromium)" -- env MINIGPT_TEST_RUN_DIR=$(NB_RUN) \
		$(PY) -m pytest tests/test_browser.py -q -rs --durations=3

# Re-execute the committed notebooks in place with params/$(NB_CONFIG).yaml and keep their outputs small
# (or take the outputs of an executed run: make notebooks-outputs FROM=runs/demo/notebooks).
NB_CONFIG ?= ci
notebooks-outputs: setup
	$(PY) tests/notebook_tools.py outputs $(if $(FROM),--from $(FROM),--config $(NB_CONFIG))
	$(VENV)/bin/jupytext --sync --quiet notebooks/*.ipynb

test-unit: setup
	$(PY) -m pytest tests -q -m "not slow and not browser"

lab: setup
	$(VENV)/bin/jupyter lab notebooks

bench: setup
	$(PY) -m minigpt.bench

clean-runs:
	rm -rf runs
