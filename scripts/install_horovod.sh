#!/usr/bin/env bash
# Build and install Horovod 0.28.1 against the TensorFlow already in the active (or given) venv,
# with Gloo always and with MPI where Open MPI's compiler wrapper (mpicxx, Debian's libopenmpi-dev)
# is present: the mpirun backend and `srun --mpi=...` need the MPI controller; horovodrun --gloo does not.
# Usage: scripts/install_horovod.sh [path/to/python]     (default: $VIRTUAL_ENV/bin/python, else python3)
# Idempotent: does nothing when `import horovod.tensorflow` already works with the controllers this
# machine can have (a Gloo-only build is rebuilt once MPI is installed).
# Build settings are those recorded in docs/design.md (Horovod 0.28.1 compiles against TF 2.16, not newer;
# TF's bundled highwayhash/farmhash headers are not on the default include path).
set -euo pipefail

PY="${1:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}"
PY="${PY:-python3}"

WANT_MPI=0
if command -v mpicxx >/dev/null 2>&1; then WANT_MPI=1; fi

if "$PY" -c "import horovod.tensorflow as hvd, sys; sys.exit(0 if hvd.gloo_built() and (hvd.mpi_built() or not $WANT_MPI) else 1)" \
        >/dev/null 2>&1; then
    echo "horovod already installed: $("$PY" -c 'import horovod.tensorflow as hvd, horovod; print(horovod.__version__, "gloo", hvd.gloo_built(), "mpi", hvd.mpi_built())')"
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

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1
if [ "$WANT_MPI" = 1 ]; then
    export HOROVOD_WITH_MPI=1
    echo "MPI: $(mpicxx --showme:version 2>/dev/null || command -v mpicxx)"
else
    export HOROVOD_WITHOUT_MPI=1
    echo "MPI: no mpicxx on PATH, building with Gloo only (apt-get install libopenmpi-dev openmpi-bin for MPI)"
fi
export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
export CXXFLAGS="${CXXFLAGS:-} -I$TF_INC/external/highwayhash -I$TF_INC/external/farmhash_archive/src"
# Horovod's setup.py imports tensorflow from the venv: build without isolation so it sees it.
# --no-cache-dir: a wheel cached from a build against another TF would load with ABI errors.
# --force-reinstall --no-deps: replaces a Gloo-only build in place.
"$PY" -m pip install --no-build-isolation --no-cache-dir --force-reinstall --no-deps "horovod==0.28.1"
# --no-deps above skips Horovod's own small dependencies; install them without touching the rest.
"$PY" -m pip install -q "horovod==0.28.1"

"$PY" -c "import horovod.tensorflow as hvd; print('horovod', __import__('horovod').__version__, 'gloo built:', hvd.gloo_built(), 'mpi built:', hvd.mpi_built())"
if [ "$WANT_MPI" = 1 ]; then "$PY" -c "import horovod.tensorflow as hvd, sys; sys.exit(0 if hvd.mpi_built() else 'horovod built without MPI although mpicxx is present')"; fi
