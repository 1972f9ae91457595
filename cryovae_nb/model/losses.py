"""The three loss terms of the cryo-EM VAE (thesis §3.3.2), as TensorFlow functions."""
from __future__ import annotations

import math

import tensorflow as tf

# the scalar losses of `CryoVAE.compute_losses` that training logs, averages over ranks and checks
# for NaN: every consumer reads this tuple (cryovae_nb.training), so a new term is added once.
# "head_won" is no loss but the fraction of images whose pose-head rotation the search kept (0
# without a search): what `Inference.encode(pose="auto")` reads to skip the search at inference
LOSS_KEYS = ("recon", "kl", "averaging", "pose", "total", "noise_var", "head_won")


def reconstruction_loss(images, projections, pixel_mask=None) -> tf.Tensor:
    """Per-image sigmoid cross-entropy, summed over pixels (those where ``pixel_mask`` ``(n, n)``
    is 1, if given): ``(B,)``.

    ``images`` are tanh-normalised targets in [0, 1]; ``projections`` are used as logits.
    """
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=images, logits=projections)
    if pixel_mask is not None:
        ce = ce * pixel_mask
    return tf.reduce_sum(ce, axis=[1, 2])


def gaussian_nll(images, predictions, noise_var, pixel_mask=None) -> tf.Tensor:
    """Per-image negative log-likelihood in nats of ``images`` under white Gaussian noise of
    variance ``noise_var`` (scalar) about ``predictions``, summed over pixels (those where
    ``pixel_mask`` is 1, if given): ``(B,)``.

    Why a calibrated likelihood: the ELBO's two terms must be in the same unit for beta = 1 to mean
    a VAE. The seed's cross-entropy on [0, 1] images at SNR 0.1 is ~10x flatter than the noise
    allows, so a nat of KL outweighed what knowing the conformation saved, and the posterior
    collapsed (benchmarks/quality_heterogeneity.py).
    """
    sq = tf.square(images - predictions)
    n_pix = float(images.shape[-1] * images.shape[-2])
    if pixel_mask is not None:
        sq = sq * pixel_mask
        n_pix = tf.reduce_sum(pixel_mask)
    noise_var = tf.cast(noise_var, tf.float32)
    return (0.5 * tf.reduce_sum(sq, axis=[1, 2]) / noise_var
            + 0.5 * n_pix * tf.math.log(2.0 * math.pi * noise_var))


def kl_divergence(z_mean, z_logvar) -> tf.Tensor:
    """Per-sample KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dimensions: ``(B,)``."""
    return tf.reduce_sum(kl_per_dimension(z_mean, z_logvar), axis=-1)


def kl_per_dimension(z_mean, z_logvar) -> tf.Tensor:
    """Per-sample, per-dimension KL(N(mean, exp(logvar)) || N(0, 1)): ``(B, latent)``."""
    return -0.5 * (1.0 + z_logvar - tf.square(z_mean) - tf.exp(z_logvar))


def mirror_through_point(volumes) -> tf.Tensor:
    """Point reflection of ``(B, n, n, n)`` volumes through the centre voxel ``n // 2``.

    Index ``i`` maps to ``(2 * (n // 2) - i) mod n`` on every axis, so the centre stays put; for even
    ``n`` the first plane (outside any mask) maps onto itself.
    """
    n = volumes.shape[-1]
    flipped = tf.reverse(volumes, axis=[1, 2, 3])
    return tf.roll(flipped, [1, 1, 1], axis=[1, 2, 3]) if n % 2 == 0 else flipped


def rotate180(images) -> tf.Tensor:
    """``(B, n, n)`` images rotated by 180 degrees in-plane about pixel ``n // 2`` (as :func:`mirror_through_point`).

    For a projection this is the projection of the same volume at the pose turned by 180 degrees
    about the viewing axis (and the shift negated): the in-plane flip an encoder most easily confuses.
    """
    n = images.shape[-1]
    flipped = tf.reverse(images, axis=[1, 2])
    return tf.roll(flipped, [1, 1], axis=[1, 2]) if n % 2 == 0 else flipped


def symmetrized_reconstruction_loss(images, projections, pixel_mask=None) -> tf.Tensor:
    """Per-image ``min`` of :func:`reconstruction_loss` for the projection and its 180-degree
    in-plane rotation (cryoAI's symmetrised loss): ``(B,)``. The gradient flows through the better one.
    ``pixel_mask`` must be symmetric under that rotation (a centred disc is)."""
    return tf.minimum(reconstruction_loss(images, projections, pixel_mask),
                      reconstruction_loss(images, rotate180(projections), pixel_mask))


def averaging_loss(volumes, with_mirror: bool = True) -> tf.Tensor:
    """Mean squared deviation of the set S = {V_i} u {mirror(V_i)} from its mean M (the seed's).

    M = (A + mirror(A)) / 2 with A the batch mean, so M is mirror-symmetric; as the mirror is a
    permutation of voxels, each mirrored member deviates from M exactly as much as its original.
    The mean over S therefore equals the mean over the batch alone: no mirrored copies are built.

    Note the cost of the mirror: even a batch of identical volumes V pays mean((V - mirror V)^2) / 4,
    a penalty on everything chiral -- it pulls a chiral particle towards its centrosymmetric blur.
    ``with_mirror=False`` drops it: the plain batch variance, mean((V_i - A)^2), which only asks
    the volumes of a batch to agree.
    """
    a = tf.reduce_mean(volumes, axis=0, keepdims=True)
    m = 0.5 * (a + mirror_through_point(a)) if with_mirror else a
    return tf.reduce_mean(tf.square(volumes - m))
