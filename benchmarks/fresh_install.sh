#!/usr/bin/env bash
# What a make target's install costs on a fresh machine: a clone of COMMIT into a temp folder, its
# own .venv, pip reading no config (no local mirrors or find-links) and no cache, so every wheel
# comes from PyPI. Prints the install's wall time, the venv's size and package count, then what the
# same requirements download (`pip download` into an empty folder: the bytes a fresh install fetches).
#
#   bash benchmarks/fresh_install.sh COMMIT TARGET EXTRAS      e.g.
#   bash benchmarks/fresh_install.sh HEAD runtime cpu,notebooks     (what `make demo` installs)
#   bash benchmarks/fresh_install.sh HEAD deps cpu,test             (what `make test` installs first)
#
# Run before/after pairs one after the other, not at once (they share the bandwidth); the time
# depends on the machine's load, which is printed beside it.
set -euo pipefail
commit=$1 target=$2 extras=$3
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/fresh_install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone" && git checkout -q "$commit"
export PIP_CONFIG_FILE=/dev/null PIP_NO_CACHE_DIR=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s.%N)
make -s "$target" >/dev/null 2>"$work/stderr" || { cat "$work/stderr"; exit 1; }
t1=$(date +%s.%N)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "install_s $(python3 -c "print(round($t1 - $t0, 1))")"
echo "venv_bytes $(du -sb .venv | cut -f1)"
echo "packages $(.venv/bin/python -m pip list --format=freeze 2>/dev/null | wc -l)"
.venv/bin/python -m pip download -q -d "$work/dl" "pip>=24" "setuptools>=68" wheel ".[$extras]" >/dev/null 2>&1
echo "download_bytes $(du -sb "$work/dl" | cut -f1) files $(ls "$work/dl" | wc -l)"
