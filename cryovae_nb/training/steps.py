"""Compiled training and evaluation steps (the Trainer and the Horovod hooks build on these).

A step takes a `Batch` (images, known poses or None, particle rows) and a seed."""
from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from cryovae_nb.model.batch import Batch
from cryovae_nb.model.losses import LOSS_KEYS
from cryovae_nb.model.vae import CryoVAE, latent_noise, search_noise
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.precision import is_loss_scaled, make_loss_scaled


def kl_scale(model: CryoVAE, optimizer) -> tf.Tensor:
    """The KL warm-up factor of the coming update: ramps from 1/warmup to 1 over
    ``kl_warmup_steps`` (counted by the optimizer, so a resumed run continues the ramp)."""
    warmup = model.config.loss.kl_warmup_steps
    if not warmup:
        return tf.constant(1.0)
    return tf.minimum(1.0, (tf.cast(optimizer.iterations, tf.float32) + 1.0) / float(warmup))


def configure_threads(intra_op: int | None = None, inter_op: int | None = None) -> bool:
    """Set TensorFlow's thread pools (call before any op runs). Returns False if TF was already
    initialised, in which case nothing changes. On a few cores, ``inter_op=1`` avoids the
    pools fighting over them; ``intra_op=None`` keeps TF's default (all cores)."""
    try:
        if intra_op is not None:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        return True
    except RuntimeError:
        return False


def make_optimizer(model: CryoVAE, learning_rate: float = TrainConfig.learning_rate,
                   loss_scale: bool = False) -> keras.optimizers.Optimizer:
    """Adam at ``learning_rate`` (the trainer's, ``TrainConfig.learning_rate``), built on the model's
    variables; ``loss_scale``: behind dynamic loss scaling (``mixed_float16``, training/precision.py)."""
    opt = keras.optimizers.Adam(learning_rate=learning_rate)
    if loss_scale:
        opt = make_loss_scaled(opt)
    opt.build(model.trainable_variables)
    return opt


def _inputs(model, batch: Batch, seed):
    """(the batch as tensors, noise, pose noise) for a compiled step; the seed becomes the noise
    itself (drawn outside XLA)."""
    images = tf.convert_to_tensor(batch.images, tf.float32)
    rotations, shifts = batch.rotations, batch.shifts
    if rotations is not None:
        rotations = tf.convert_to_tensor(rotations, tf.float32)
        if shifts is None:
            shifts = tf.zeros([tf.shape(images)[0], 2], tf.float32)
    if shifts is not None:
        shifts = tf.convert_to_tensor(shifts, tf.float32)
    # the particle rows ride along as int64 (they do not enter the loss; a fixed dtype keeps one trace)
    indices = None if batch.indices is None else tf.convert_to_tensor(batch.indices, tf.int64)
    batch = batch.replace(images=images, rotations=rotations, shifts=shifts, indices=indices)
    noise = pose_noise = None
    if seed is not None:
        noise = latent_noise([images.shape[0], model.config.architecture.latent_dim], seed)
        if rotations is None and model.config.pose.search_deg is not None:
            # uniform draws for sampling the searched pose (model.search_pose), also outside XLA
            pose_noise = search_noise([images.shape[0], model.search_grid_size], seed)
    return batch, noise, pose_noise


def _start(start):
    """A pose cache's ``(B, 4)`` start quaternions as a tensor, or None (a full search): two traces."""
    return None if start is None else tf.convert_to_tensor(start, tf.float32)


def make_train_step(model: CryoVAE, optimizer: keras.optimizers.Optimizer | None = None, *,
                    jit: bool = True,
                    grad_reducer: Callable[[list], list] | None = None) -> Callable[..., dict]:
    """Return ``step(batch, seed=None, start=None) -> dict`` of the scalar losses (``LOSS_KEYS``)
    after one optimizer update, and with the learned-pose search the ``(B, 4)``
    ``searched_quaternion`` each image trained on; ``start`` ``(B, 4)``: cached poses the search
    only refines locally (``PoseConfig.global_every``, the Trainer's pose cache).

    The `Batch`'s ``rotations``/``shifts`` give known poses (``pose_mode="known"``); ``seed`` is an int ``[2]``
    for the reparameterisation noise (pass a different one each step; ``None`` = no noise).
    ``grad_reducer(list_of_grads) -> list_of_grads`` is applied between the gradient and the update
    (Horovod: ``hvd.grouped_allreduce``); then the gradient and the update are compiled separately
    so the reducer runs outside XLA. ``jit`` compiles with XLA (faster on CPU and GPU). The
    optimizer defaults to :func:`make_optimizer`. A new batch shape triggers one re-compile.
    """
    optimizer = optimizer or make_optimizer(model)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = model.trainable_variables

    def losses_and_gradients(batch, noise, pose_noise, start):  # traced inside both compiled paths below
        with tf.GradientTape() as tape:
            out = model.compute_losses(batch, training=True, noise=noise, pose_noise=pose_noise,
                                       kl_scale=kl_scale(model, optimizer), start=start)
            # float16: the gradient of the scaled loss; the optimizer's update unscales it
            loss = optimizer.scale_loss(out["total"]) if is_loss_scaled(optimizer) else out["total"]
        return out, tape.gradient(loss, variables)

    def returned(out):  # the logged losses, and the searched poses for a pose cache
        return {k: out[k] for k in (*LOSS_KEYS, "searched_quaternion") if k in out}

    if grad_reducer is None:
        @tf.function(jit_compile=jit, reduce_retracing=True)
        def fused(batch, noise, pose_noise, start):
            out, grads = losses_and_gradients(batch, noise, pose_noise, start)
            # with known poses the pose head gets no gradient: leave it out (static, per trace)
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            model.update_noise_variance(out["residual"])
            if "pc_update" in out:
                model.update_covariance(out["pc_update"], out["pc_variance"])
            return returned(out)

        def step(batch: Batch, seed=None, start=None):
            return fused(*_inputs(model, batch, seed), _start(start))

        return step

    used = {}  # known poses? -> indices of the variables that get a gradient (found while tracing)

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def compute(batch, noise, pose_noise, start):
        out, grads = losses_and_gradients(batch, noise, pose_noise, start)
        used[batch.known_poses] = [i for i, g in enumerate(grads) if g is not None]
        # the residual rides with the gradients through the reducer, so every rank keeps the same
        # noise variance (the mean of the ranks' batches, as one big batch would give)
        # (so do the principal-volume statistics of linearized latents)
        extra = [out["pc_update"], out["pc_variance"]] if "pc_update" in out else []
        return [g for g in grads if g is not None] + [out["residual"]] + extra, returned(out)

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def apply(grads, residual, extra, known):
        optimizer.apply_gradients([(g, variables[i]) for g, i in zip(grads, used[known])])
        model.update_noise_variance(residual)
        if extra:
            model.update_covariance(*extra)

    def step(batch: Batch, seed=None, start=None):
        grads, losses = compute(*_inputs(model, batch, seed), _start(start))
        reduced = list(grad_reducer(list(grads)))
        k = len(used[batch.known_poses])
        apply(reduced[:k], reduced[k], reduced[k + 1:], batch.known_poses)
        return losses

    return step


def make_eval_step(model: CryoVAE, *, jit: bool = True) -> Callable[..., dict]:
    """Return ``step(batch, seed=None) -> dict`` of losses without
    updating weights (``seed=None``: z = z_mean). Includes ``recon_per_sample`` ``(B,)`` and
    ``kl_per_dim`` ``(latent,)``."""

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def evaluate(batch, noise, pose_noise):
        return model.compute_losses(batch, training=False, noise=noise, pose_noise=pose_noise)

    def step(batch: Batch, seed=None):
        return evaluate(*_inputs(model, batch, seed))

    return step
