"""How a run uses the device it finds: XLA and reduced-precision matmuls where a GPU is present.

`device_policy(gpus)` is the decision, a pure function of the device list (a test fakes it);
`apply_device_policy(config)` reads TensorFlow's list and switches TensorFloat-32 as the
`TrainConfig` asks, or as the policy chooses where it leaves it open (``None``).

Why TensorFloat-32 and not Keras' float16 policy: TF32 runs the dense layers' matmuls (nearly all
of a step's FLOPs) on the tensor cores of Ampere and later GPUs with float32 storage and range, so
the loss, the FFT projector and the gradients stay float32 and no loss scaling is needed. Keras'
``mixed_float16`` would also need the model to accept float16 activations (it converts them to
float32 in several places today; see docs/design.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePolicy:
    kind: str           # "gpu" or "cpu"
    jit: bool           # XLA-compile the steps
    tf32_matmul: bool   # TensorFloat-32 matmuls (tensor cores); no effect on a CPU


# decoders that XLA makes slower on a CPU: it compiles 3D convolutions into a naive loop (9-170x
# slower than TensorFlow's own kernels, measured; model/decoders.py)
SLOW_UNDER_XLA_ON_CPU = ("conv3d",)


def device_policy(gpus: list, decoder: str = "dense") -> DevicePolicy:
    """The defaults for a process that sees ``gpus`` (``tf.config.list_physical_devices("GPU")``).

    XLA is on everywhere: on 2 CPU cores the compiled step measured 1.33x (known poses) and 1.27x
    (learned, with the search) the images/s of the un-compiled one (benchmarks/train_profile.py,
    README), and on a GPU it fuses the projector's gathers and FFT glue. TF32
    matmuls are on where a GPU is present. On a CPU, a ``decoder`` of :data:`SLOW_UNDER_XLA_ON_CPU`
    runs uncompiled."""
    if gpus:
        return DevicePolicy("gpu", jit=True, tf32_matmul=True)
    return DevicePolicy("cpu", jit=decoder not in SLOW_UNDER_XLA_ON_CPU, tf32_matmul=False)


def apply_device_policy(config) -> DevicePolicy:
    """Set TensorFlow's TensorFloat-32 switch for a run of ``config`` (a `TrainConfig`): its
    ``tf32_matmul``, or the device's choice when that is ``None``; XLA likewise (``jit``). Returns
    what is in effect (the
    config itself is left as written, so a run folder records what the user asked for)."""
    import tensorflow as tf  # heavy: only a process about to train gets here

    policy = device_policy(tf.config.list_physical_devices("GPU"), config.model.architecture.decoder)
    tf32 = policy.tf32_matmul if config.tf32_matmul is None else bool(config.tf32_matmul)
    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    jit = policy.jit if config.jit is None else bool(config.jit)
    return dataclasses.replace(policy, jit=jit, tf32_matmul=tf32)
