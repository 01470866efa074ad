# Two commands (see README "Quick start"):
#   make train [ARGS="model=tiny trainer.max_steps=200"]   set up .venv if needed, then train
#   make test  [PYTEST_ARGS="-m 'not slow'"]               set up .venv if needed, then run the tests
#   (the 25 slowest tests are listed at the end: --durations=25, always on)
# Setup is idempotent: the venv is (re)installed only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.smet-installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup train test clean-venv help

help:
	@echo "make train [ARGS='hydra overrides']  - install into $(VENV) (once) and run python train.py"
	@echo "make test  [PYTEST_ARGS=...]         - install into $(VENV) (once) and run the test suite"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# data=kjv_wiki (fidelity study) reads one data file of gensim's wheel: the wheel alone, no scipy
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt 'gensim>=4.3'
	@touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true \
	  $(PY) -m pytest --durations=25 $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
