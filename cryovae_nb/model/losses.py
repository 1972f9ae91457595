"""The three loss terms of the cryo-EM VAE (thesis §3.3.2), as TensorFlow functions."""
from __future__ import annotations

import tensorflow as tf


def reconstruction_loss(images, projections) -> tf.Tensor:
    """Per-image sigmoid cross-entropy, summed over pixels: ``(B,)``.

    ``images`` are tanh-normalised targets in [0, 1]; ``projections`` are used as logits.
    """
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=images, logits=projections)
    return tf.reduce_sum(ce, axis=[1, 2])


def kl_divergence(z_mean, z_logvar) -> tf.Tensor:
    """Per-sample KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dimensions: ``(B,)``."""
    return -0.5 * tf.reduce_sum(1.0 + z_logvar - tf.square(z_mean) - tf.exp(z_logvar), axis=-1)


def mirror(volumes) -> tf.Tensor:
    """Point reflection of ``(B, n, n, n)`` volumes through the centre voxel ``n // 2``.

    Index ``i`` maps to ``(2 * (n // 2) - i) mod n`` on every axis, so the centre stays put; for even
    ``n`` the first plane (outside any mask) maps onto itself.
    """
    n = volumes.shape[-1]
    flipped = tf.reverse(volumes, axis=[1, 2, 3])
    return tf.roll(flipped, [1, 1, 1], axis=[1, 2, 3]) if n % 2 == 0 else flipped


def averaging_loss(volumes) -> tf.Tensor:
    """Mean squared deviation of the set S = {V_i} u {mirror(V_i)} from its mean M.

    M = (A + mirror(A)) / 2 with A the batch mean, so M is mirror-symmetric; as the mirror is a
    permutation of voxels, each mirrored member deviates from M exactly as much as its original.
    The mean over S therefore equals the mean over the batch alone: no mirrored copies are built.
    """
    a = tf.reduce_mean(volumes, axis=0, keepdims=True)
    m = 0.5 * (a + mirror(a))
    return tf.reduce_mean(tf.square(volumes - m))
