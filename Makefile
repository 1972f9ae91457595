# The README's two commands:  `make demo`  and  `make test`.
# Both create or reuse .venv and install what they need; re-running is quick (stamp files).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
PYTEST_ARGS ?=

.PHONY: demo test test-fast deps horovod cluster-tools browser benchmarks clean help

help:
	@echo "make demo   - set up .venv and run the tutorial path on the embedded synthetic hinge data (a moving L)"
	@echo "make test   - set up .venv (with Horovod and headless Chromium) and run the test suite"

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=68" wheel

# Each stamp is redone only when pyproject.toml changes. TensorFlow comes from the cpu extra here;
# by hand on a GPU machine: .[gpu,notebooks] / .[gpu,test], never cpu and gpu together.
# What `make demo` needs: the package, TensorFlow and the headless notebook runner (no test extras).
$(STAMPS)/runtime: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[cpu,notebooks]"
	@mkdir -p $(STAMPS) && touch $@

.PHONY: runtime
runtime: $(STAMPS)/runtime

# What `make test` adds: pytest, JupyterLab, Playwright and the rest of the test extra.
$(STAMPS)/deps: $(STAMPS)/runtime pyproject.toml
	$(PY) -m pip install -q -e ".[cpu,test]"
	@mkdir -p $(STAMPS) && touch $@

deps: $(STAMPS)/deps

# Debian's Slurm (slurm-wlm, with munge) and Open MPI for the real cluster tests: a one-node Slurm
# (tests/local_slurm.py) and two MPI ranks of Horovod. Installed before Horovod so that it is built
# with MPI as well as Gloo. Without root or sudo it says so and the tests that need them skip.
# No stamp without them: a later `make test` with root tries again.
CLUSTER_PKGS := slurm-wlm munge openmpi-bin libopenmpi-dev
$(STAMPS)/cluster-tools:
	@if command -v sbatch >/dev/null && command -v mpicxx >/dev/null && [ -x /usr/sbin/munged ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CLUSTER_PKGS) >/dev/null; \
	elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CLUSTER_PKGS) >/dev/null; \
	else echo "cluster-tools: not root (and no password-less sudo): $(CLUSTER_PKGS) not installed; the Slurm and MPI tests skip"; exit 0; fi && \
	mkdir -p $(STAMPS) && touch $@

cluster-tools: $(STAMPS)/cluster-tools

# Horovod 0.28.1 compiled against the installed TensorFlow (flags recorded in docs/design.md),
# with MPI where cluster-tools installed Open MPI.
$(STAMPS)/horovod: $(STAMPS)/deps $(STAMPS)/cluster-tools scripts/install_horovod.sh
	bash scripts/install_horovod.sh $(PY)
	@touch $@

horovod: $(STAMPS)/horovod

# Debian's Chromium for the real-browser widget test (Playwright drives it; no browser download).
# apt-get runs as root, or through sudo where it needs no password or can ask on a terminal.
# Without any of these (or without apt-get) `make test` goes on and the browser tests skip with
# the reason; no stamp is written, so the next `make test` tries again.
CHROMIUM ?= /usr/bin/chromium  # where tests/test_browser.py looks for it
$(STAMPS)/browser:
	@set -e; \
	if [ -x $(CHROMIUM) ]; then :; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "no apt-get: Chromium not installed, the browser tests will skip (install it at $(CHROMIUM))"; exit 0; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "not root and no sudo: Chromium not installed, the browser tests will skip" \
	       "(as root: apt-get install chromium)"; exit 0; \
	fi; \
	mkdir -p $(STAMPS) && touch $@

browser: $(STAMPS)/browser

demo: runtime
	$(PY) -m cryovae_nb.cli demo --out demo_output

test: deps cluster-tools horovod browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Without Horovod or Chromium (their tests skip with a reason).
test-fast: deps
	$(PY) -m pytest -m "not horovod and not browser" $(PYTEST_ARGS)

benchmarks: deps
	$(PY) benchmarks/cli_startup.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/preprocess_throughput.py 10000

clean:
	rm -rf demo_output test-artifacts .pytest_cache
