#!/usr/bin/env bash
# The GPU check (issue #13): training images/s at 64 and 128 px and the Horovod all-reduce time of
# their gradients, on a machine with NVIDIA GPUs. Not yet run on one (none here); run it as
#
#   pip install -e ".[gpu,test]" && bash scripts/install_horovod.sh .venv/bin/python   # once
#   bash benchmarks/gpu_check.sh             # PY=.venv/bin/python DECODER=dense BATCH=120 BOXES="64 128"
#
# Prints: the GPUs; for each box, train_throughput.py's table (the thesis' step and the step with
# the pose search, XLA on, TF32 matmuls on by the device policy) and its peak memory; then, with
# Horovod, the all-reduce of one step's gradients over all GPUs (horovodrun -np <GPUs>). The dense
# (seed) decoder has 200 x box^3 voxel weights (52 M at 64 px, 420 M at 128 px): DECODER= picks
# another one from model/decoders.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DECODER=${DECODER:-dense}
BATCH=${BATCH:-120}
BOXES=${BOXES:-64 128}
export TF_CPP_MIN_LOG_LEVEL=2

NGPU=$("$PY" -c 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))')
if [ "$NGPU" = 0 ]; then
  echo "gpu_check: TensorFlow sees no GPU (installed with .[gpu]? nvidia-smi below)" >&2
  nvidia-smi >&2 || true
  exit 1
fi
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
"$PY" -c 'import tensorflow as tf; print("TensorFlow", tf.__version__, "CUDA", tf.sysconfig.get_build_info().get("cuda_version"))'

for BOX in $BOXES; do
  echo
  echo "== box $BOX, batch $BATCH, decoder $DECODER, one GPU =="
  CUDA_VISIBLE_DEVICES=0 "$PY" benchmarks/train_throughput.py --box "$BOX" --batch "$BATCH" --decoder "$DECODER" \
    --projectors fourier,fourier+search --rounds 3 --steps 10
done

HVDRUN=$(dirname "$PY")/horovodrun
if [ ! -x "$HVDRUN" ]; then
  echo "gpu_check: no horovodrun next to $PY: all-reduce not timed (scripts/install_horovod.sh)" >&2
  exit 0
fi
echo
echo "== Horovod all-reduce of one step's gradients, $NGPU GPUs =="
# a file, not stdin: horovodrun does not hand its stdin to every rank
ALLREDUCE=$(mktemp --suffix=.py)
trap 'rm -f "$ALLREDUCE"' EXIT
cat > "$ALLREDUCE" <<'PY'
import sys
import time

import numpy as np
import tensorflow as tf

from cryovae_nb.model import ModelConfig, build_model
from cryovae_nb.training import horovod

ctx = horovod.init(use_horovod=True)
for box in map(int, sys.argv[2:]):
    model = build_model(ModelConfig().with_options(box=box, decoder=sys.argv[1]))
    grads = [tf.ones_like(v.value) for v in model.trainable_variables]
    reduce = tf.function(ctx.grad_reducer)
    reduce(grads)  # negotiation, buffers
    times = []
    for _ in range(10):
        t = time.perf_counter()
        out = reduce(grads)
        float(tf.reduce_sum(out[-1]))
        times.append(time.perf_counter() - t)
    if ctx.is_chief:
        nbytes = horovod.gradient_bytes(model)
        print(f"box {box}: {nbytes / 2**20:.0f} MiB of gradients over {ctx.size} GPUs: all-reduce "
              f"{1e3 * np.median(times):.1f} ms (median of 10), {nbytes / np.median(times) / 1e9:.1f} GB/s")
PY
"$HVDRUN" -np "$NGPU" "$PY" "$ALLREDUCE" "$DECODER" $BOXES
