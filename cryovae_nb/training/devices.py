"""How a run uses the device it finds: XLA, reduced-precision matmuls and mixed precision.

`device_policy(gpus, decoder, capabilities)` is the decision, a pure function of the device list
(a test fakes it); `apply_device_policy(config)` reads TensorFlow's list, switches TensorFloat-32
and resolves the compute precision as the `TrainConfig` asks, or as the policy chooses where it
leaves them open (``None`` / ``"auto"``). `training/precision.py` applies the precision to a model.

What runs where (``TrainConfig.precision = "auto"``):

- a GPU of compute capability >= 8.0 (A100, H100, L4, RTX 30xx and later): ``mixed_bfloat16``.
  The dense layers (nearly all of a step's FLOPs) run on the tensor cores at float16's rate, and
  bfloat16 has float32's exponent range, so gradients neither under- nor overflow: no loss scaling.
- a GPU of 7.x (V100, T4): ``mixed_float16`` with dynamic loss scaling. Their tensor cores take
  float16 only; float16's range (6e-5 .. 65504) loses small gradients unless the loss is scaled.
- an older or unknown GPU, or a CPU: ``float32`` (no tensor cores: the casts would cost and buy
  nothing; on a CPU bfloat16 matmuls are emulated or no faster).

Whatever the precision, weights, optimizer state and checkpoints stay float32, and the numerically
delicate parts (the volume handed to the projector, the FFT projector, CTF, pose search, losses,
noise variance, linearised posterior) compute in float32 (precision.py). TensorFloat-32 stays on
where a GPU is present for the float32 matmuls left.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePolicy:
    kind: str           # "gpu" or "cpu"
    jit: bool           # XLA-compile the steps
    tf32_matmul: bool   # TensorFloat-32 matmuls (tensor cores); no effect on a CPU
    precision: str = "float32"  # the dense layers' compute precision (TrainConfig.precision's values)


# decoders that XLA makes slower on a CPU: it compiles 3D convolutions into a naive loop (9-170x
# slower than TensorFlow's own kernels, measured; model/decoders.py)
SLOW_UNDER_XLA_ON_CPU = ("conv3d",)


def device_precision(capabilities) -> str:
    """The compute precision for GPUs of ``capabilities`` (``(major, minor)`` each, None where
    unknown; empty: no GPU): the oldest GPU decides (see the module docstring for why)."""
    if not capabilities or any(c is None for c in capabilities):
        return "float32"
    oldest = min(tuple(c) for c in capabilities)
    if oldest >= (8, 0):
        return "mixed_bfloat16"
    if oldest >= (7, 0):
        return "mixed_float16"
    return "float32"


def device_policy(gpus: list, decoder: str = "dense", capabilities=None) -> DevicePolicy:
    """The defaults for a process that sees ``gpus`` (``tf.config.list_physical_devices("GPU")``)
    of compute ``capabilities`` (``(major, minor)`` per GPU, None where unknown; None: unknown).

    XLA is on everywhere: on 2 CPU cores the compiled step measured 1.33x (known poses) and 1.27x
    (learned, with the search) the images/s of the un-compiled one (benchmarks/train_profile.py,
    README), and on a GPU it fuses the projector's gathers and FFT glue. TF32
    matmuls are on where a GPU is present, and mixed precision where its tensor cores take it
    (:func:`device_precision`). On a CPU, a ``decoder`` of :data:`SLOW_UNDER_XLA_ON_CPU`
    runs uncompiled."""
    if gpus:
        caps = [None] * len(gpus) if capabilities is None else list(capabilities)
        return DevicePolicy("gpu", jit=True, tf32_matmul=True, precision=device_precision(caps))
    return DevicePolicy("cpu", jit=decoder not in SLOW_UNDER_XLA_ON_CPU, tf32_matmul=False)


def gpu_capabilities(gpus) -> list:
    """``(major, minor)`` compute capability of each of ``gpus`` as TensorFlow reports it (None
    where it does not)."""
    import tensorflow as tf

    out = []
    for gpu in gpus:
        try:
            cap = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        except (ValueError, RuntimeError, TypeError):
            cap = None
        out.append(None if cap is None else tuple(int(x) for x in cap))
    return out


def apply_device_policy(config) -> DevicePolicy:
    """Set TensorFlow's TensorFloat-32 switch for a run of ``config`` (a `TrainConfig`): its
    ``tf32_matmul``, or the device's choice when that is ``None``; XLA likewise (``jit``), and the
    precision (``"auto"``: the device's). Returns what is in effect (the
    config itself is left as written, so a run folder records what the user asked for)."""
    import tensorflow as tf  # heavy: only a process about to train gets here

    gpus = tf.config.list_physical_devices("GPU")
    policy = device_policy(gpus, config.model.architecture.decoder, gpu_capabilities(gpus))
    tf32 = policy.tf32_matmul if config.tf32_matmul is None else bool(config.tf32_matmul)
    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    jit = policy.jit if config.jit is None else bool(config.jit)
    precision = policy.precision if config.precision == "auto" else config.precision
    return dataclasses.replace(policy, jit=jit, tf32_matmul=tf32, precision=precision)
