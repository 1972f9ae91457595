#!/usr/bin/env bash
# The GPU check (issue #13): training images/s at 64 and 128 px and the Horovod all-reduce time of
# their gradients, on a machine with NVIDIA GPUs. Not yet run on one (none here); run it as
#
#   pip install -e ".[gpu,test]" && bash scripts/install_horovod.sh .venv/bin/python   # once
#   bash benchmarks/gpu_check.sh             # PY=.venv/bin/python DECODER=dense BATCH=120 BOXES="64 128"
#
# Prints: the GPUs; for each box, train_throughput.py's table (the thesis' step and the step with
# the pose search, XLA on, TF32 matmuls on by the device policy) and its peak memory; the train
# step's images/s in float32 beside the device policy's mixed precision (training/devices.py:
# mixed_bfloat16 on compute capability >= 8.0, mixed_float16 on 7.x), alternating rounds; then, with
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

echo
echo "== float32 vs mixed precision (TrainConfig.precision), one GPU, batch $BATCH, decoder $DECODER =="
PRECISION=$(mktemp --suffix=.py)
trap 'rm -f "$PRECISION"' EXIT
cat > "$PRECISION" <<'PY'
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

from cryovae_nb.model import ModelConfig, build_model
from cryovae_nb.model.batch import Batch
from cryovae_nb.training.devices import device_policy, gpu_capabilities
from cryovae_nb.training.precision import needs_loss_scaling, set_precision
from cryovae_nb.training.steps import make_optimizer, make_train_step

decoder, batch_size, boxes = sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3:]]
gpus = tf.config.list_physical_devices("GPU")
mixed = device_policy(gpus, decoder, gpu_capabilities(gpus)).precision
if mixed == "float32":
    mixed = "mixed_float16"  # the policy keeps float32 here (no tensor cores): time float16 anyway
tf.config.experimental.enable_tensor_float_32_execution(True)
print(f"GPU compute capability {gpu_capabilities(gpus)}: the policy's mixed precision is {mixed}")
print(f"{'box':>4} {'step':>14} {'float32 img/s':>14} {mixed + ' img/s':>21} {'speed-up':>8}")
for box in boxes:
    rng = np.random.default_rng(0)
    images = rng.uniform(0.3, 0.7, (batch_size, box, box)).astype(np.float32)
    for label, search in (("pose head", None), ("+ pose search", 15.0)):
        steps, rates = {}, {"float32": [], mixed: []}
        for precision in rates:
            model = build_model(ModelConfig().with_options(box=box, decoder=decoder, pose_search_deg=search))
            set_precision(model, precision)
            opt = make_optimizer(model, 1e-5, loss_scale=needs_loss_scaling(precision))
            steps[precision] = make_train_step(model, opt, jit=True)
            float(steps[precision](Batch(images), tf.constant([0, 0]))["total"])  # compile
        for r in range(3):  # alternating rounds: both precisions see the same machine
            for precision, step in steps.items():
                t = time.perf_counter()
                for i in range(10):
                    out = step(Batch(images), tf.constant([r, i]))
                float(out["total"])
                rates[precision].append(10 * batch_size / (time.perf_counter() - t))
        a, b = statistics.median(rates["float32"]), statistics.median(rates[mixed])
        print(f"{box:4d} {label:>14} {a:14.0f} {b:21.0f} {b / a:7.2f}x", flush=True)
        del steps
PY
CUDA_VISIBLE_DEVICES=0 "$PY" "$PRECISION" "$DECODER" "$BATCH" $BOXES

HVDRUN=$(dirname "$PY")/horovodrun
if [ ! -x "$HVDRUN" ]; then
  echo "gpu_check: no horovodrun next to $PY: all-reduce not timed (scripts/install_horovod.sh)" >&2
  exit 0
fi
echo
echo "== Horovod all-reduce of one step's gradients, $NGPU GPUs =="
# a file, not stdin: horovodrun does not hand its stdin to every rank
ALLREDUCE=$(mktemp --suffix=.py)
trap 'rm -f "$ALLREDUCE" "$PRECISION"' EXIT
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
