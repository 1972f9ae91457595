#!/usr/bin/env bash
# Build and install Horovod 0.28.1 against the TensorFlow already in the active (or given) venv.
# Usage: scripts/install_horovod.sh [path/to/python]     (default: $VIRTUAL_ENV/bin/python, else python3)
# Idempotent: does nothing when `import horovod.tensorflow` already works.
# Build settings are those recorded in docs/design.md (Horovod 0.28.1 compiles against TF 2.16, not newer;
# TF's bundled highwayhash/farmhash headers are not on the default include path).
set -euo pipefail

PY="${1:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}"
PY="${PY:-python3}"

if "$PY" -c "import horovod.tensorflow" >/dev/null 2>&1; then
    echo "horovod already installed: $("$PY" -c 'import horovod; print(horovod.__version__)')"
    exit 0
fi

# cmake is needed by Horovod's build; a pip wheel of it is fine where the system has none.
if ! command -v cmake >/dev/null 2>&1; then
    "$PY" -m pip install "cmake>=3.13"
    PATH="$(dirname "$PY"):$PATH"
    export PATH
fi
cmake --version | head -n 1

TF_INC="$("$PY" -c 'import tensorflow as tf; print(tf.sysconfig.get_include())')"
echo "TensorFlow include dir: $TF_INC"

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1
export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
export CXXFLAGS="${CXXFLAGS:-} -I$TF_INC/external/highwayhash -I$TF_INC/external/farmhash_archive/src"
# Horovod's setup.py imports tensorflow from the venv: build without isolation so it sees it.
# --no-cache-dir: a wheel cached from a build against another TF would load with ABI errors.
"$PY" -m pip install --no-build-isolation --no-cache-dir "horovod==0.28.1"

"$PY" -c "import horovod.tensorflow as hvd; print('horovod', __import__('horovod').__version__, 'gloo built:', hvd.gloo_built())"
