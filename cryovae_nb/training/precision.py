"""Mixed precision for a CryoVAE: which layers compute in bfloat16 or float16, and loss scaling.

The precision is set on the chosen layers of a built model (:func:`set_precision`), never through
Keras' global dtype policy: that one is process-wide, and every model built after it (a resumed
run, a test, a notebook's inference) would inherit it. A Keras "mixed" layer keeps float32
variables, casts its input and weights to the low precision and returns low-precision output.

What computes in low precision: the encoder's hidden layers and the dense decoder's layers, the
voxel layer included (together nearly all of a step's FLOPs). What stays float32: the heads (z
mean and log-variance, pose, offset: a few units each, and their outputs are exponentiated,
normalised and searched), the volume handed to the projector (the decoder casts its output), the
FFT projector, CTF, pose search, losses, KL, noise variance, linearised posterior and covariance
statistics (all written in float32 TensorFlow ops, model/vae.py), and every weight, optimizer slot
and checkpoint: a run trained mixed resumes in float32 and vice versa. The conv3d decoder stays
float32 (its convolutions are raw ``tf.nn.conv3d`` on float32 weights), and so does the conv pose
encoder (``PoseConfig.encoder = "conv"``: a small share of the step, and it feeds the pose heads).

float16 (``mixed_float16``) also needs loss scaling (:func:`make_loss_scaled`): gradients below
float16's smallest normal (6e-5) would flush to zero. bfloat16 has float32's range and needs none.
"""
from __future__ import annotations

import keras

from cryovae_nb.errors import ConfigError
from cryovae_nb.model.decoders import DenseDecoder
from cryovae_nb.training.config import PRECISIONS

MIXED = tuple(p for p in PRECISIONS if p.startswith("mixed_"))


def low_precision_layers(model) -> list:
    """The layers of a `CryoVAE` that compute in the low precision under a mixed policy."""
    layers = list(model.encoder_layers)
    if isinstance(model.decoder, DenseDecoder):
        layers += [*model.decoder.hidden_layers, model.decoder.voxel_layer]
    return layers


def set_precision(model, precision: str) -> None:
    """Make ``model``'s :func:`low_precision_layers` compute in ``precision`` (``"float32"`` or a
    key of :data:`MIXED`); call before its steps are traced (a traced step keeps the dtypes it
    was traced with)."""
    if precision not in ("float32", *MIXED):
        raise ConfigError(f"precision must be one of {('float32', *MIXED)}, got {precision!r}")
    for layer in low_precision_layers(model):
        layer.dtype_policy = precision


def model_precision(model) -> str:
    """The precision :func:`set_precision` gave ``model`` (``"float32"`` if none)."""
    names = {layer.dtype_policy.name for layer in low_precision_layers(model)}
    return names.pop() if len(names) == 1 else "float32"


def needs_loss_scaling(precision: str) -> bool:
    return precision == "mixed_float16"


def make_loss_scaled(optimizer):
    """``optimizer`` behind Keras' dynamic loss scaling (the train step scales the loss before the
    gradient; the update unscales, and skips a step whose gradients overflowed)."""
    return keras.optimizers.LossScaleOptimizer(optimizer)


def is_loss_scaled(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def base_optimizer(optimizer):
    """The optimizer that holds the slots (the loss-scaled one's inner optimizer): checkpoints keep
    its variables only, so they do not depend on the precision."""
    return optimizer.inner_optimizer if is_loss_scaled(optimizer) else optimizer


def loss_scale_state(optimizer) -> dict | None:
    """A loss-scaled optimizer's scale and steps since it last changed (for a checkpoint's
    state, so a resumed float16 run continues with the same scale); None for any other."""
    if not is_loss_scaled(optimizer):
        return None
    return {"scale": float(optimizer.dynamic_scale.numpy()), "steps": int(optimizer.step_counter.numpy())}


def restore_loss_scale(optimizer, state: dict | None) -> None:
    """Set a loss-scaled optimizer's scale from :func:`loss_scale_state`'s dict; a checkpoint of a
    run without loss scaling (None) leaves the initial scale; any other optimizer ignores it."""
    if is_loss_scaled(optimizer) and state:
        optimizer.dynamic_scale.assign(float(state["scale"]))
        optimizer.step_counter.assign(int(state["steps"]))
