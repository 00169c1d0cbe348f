# `make train` and `make test` create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: train test test-fast lint format clean-logs

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

train: $(VENV)/.installed  ## train the default config; extra Hydra overrides via ARGS="..."
	$(PY) src/train.py $(ARGS)

# The SLURM tests submit to a single-node SLURM on this machine (scripts/local_slurm.py). Its OS
# packages (apt-get, as root: slurm-wlm and munge) are installed here, once, rather than inside
# pytest; where that is not possible the script says why and those tests skip with its reason.
$(VENV)/.slurm-installed: scripts/local_slurm.py | $(VENV)/.installed
	$(PY) scripts/local_slurm.py install && touch $@ || true

# The report test opens eval.py's report.html in Debian's chromium (scripts/install_browser.sh),
# installed the same way: once, before pytest; without it that test skips with the reason.
$(VENV)/.browser-installed: scripts/install_browser.sh | $(VENV)/.installed
	bash scripts/install_browser.sh && touch $@ || true

test: $(VENV)/.installed $(VENV)/.slurm-installed $(VENV)/.browser-installed  ## the whole suite, slow tests included (what CI runs)
	$(PY) -m pytest $(ARGS)

test-fast: $(VENV)/.installed  ## skip the slow (DDP, sweep, end-to-end) tests
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests scripts

format: $(VENV)/.installed
	$(VENV)/bin/ruff format src tests scripts
	$(VENV)/bin/ruff check --fix src tests scripts

clean-logs:
	rm -rf logs/
