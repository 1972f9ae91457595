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

# Reinstall only when pyproject.toml changes.
$(STAMPS)/deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[cpu,test]"  # .[gpu,test] on a GPU machine, never both
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
$(STAMPS)/browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; fi
	@mkdir -p $(STAMPS) && touch $@

browser: $(STAMPS)/browser

demo: deps
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
