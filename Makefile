# Quickstart: `make run` (main job on the default config) and `make test` (the whole suite).
# Both build .venv themselves on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
STAMP := $(shell date +%Y%m%d-%H%M%S)
RUN_DIR ?= runs/default-$(STAMP)
EVAL_INSTANCES ?= 40

.PHONY: run test lint venv clean

$(BIN)/activate:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON)' not found. rl_optimizer needs Python 3.11 (tensorflow 2.15.1 / tf-agents 0.19.0)."; \
	  echo "       install it (e.g. 'pyenv install 3.11' or 'apt-get install python3.11 python3.11-venv')"; \
	  echo "       or point the Makefile at it: make PYTHON=/path/to/python3.11 ..."; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || { \
	  echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'), but rl_optimizer needs 3.11"; \
	  echo "       (tf-agents 0.19.0 -> tensorflow-probability 0.23 -> tensorflow 2.15.1 -> Python 3.11)."; \
	  echo "       install Python 3.11 and run: make PYTHON=/path/to/python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# [distributed] (dm-reverb, Linux x86_64 only) too, so the distributed tests run; elsewhere they
# are skipped.
$(VENV)/.installed: $(BIN)/activate setup.cfg pyproject.toml
	$(BIN)/pip install -e '.[test,distributed]'
	touch $@

venv: $(VENV)/.installed

# Trains the default policy from scratch, then evaluates it on held-out test instances against
# the tuned baselines (the quality bar's families and the multimodal ones).
run: venv
	$(BIN)/rl-optimizer train --config $(CONFIG) --run-dir $(RUN_DIR)
	$(BIN)/rl-optimizer evaluate --policy $(RUN_DIR) --instances $(EVAL_INSTANCES) \
	  --out $(RUN_DIR)/evaluation
	@echo "run directory: $(RUN_DIR)  (policy: $(RUN_DIR)/export, report: $(RUN_DIR)/evaluation/report.md)"

lint: venv
	$(BIN)/ruff check rl_optimizer tests examples

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
