"""Global pose search inside the training step, for learned (ab initio) poses.

Why: a pose head trained by gradient alone settles on the first views that roughly fit, and the
volume follows it into a blurred, mis-posed local minimum (benchmarks/quality_lshape.py: ~11 px at
FSC 0.5 after 10 min on the thesis' L, where known poses reach 2 px). So each step
(``CryoVAE.search_pose``):

1. projects the batch's mean decoded volume at every rotation of a near-uniform SO(3) grid
   (``pose_search_deg``, 15 degrees: ~4,400 rotations), low-passed (``pose_search_band``), and
   correlates them with the images (moved back by the head's shift): one matrix product;
2. draws each image's grid rotation from the posterior those correlations imply (Gaussian noise in
   the band's Fourier components) -- not the best one: early on the volume is wrong, and hard
   choices lock it into its first guess (projection matching's trap; sampling is stochastic EM);
3. refines it twice locally (+-step/2, +-step/4; 27 rotations each) at a higher band
   (``pose_refine_band``), each candidate at its best whole-pixel shift by FFT cross-correlation;
   the head's own rotation competes in the first round;
4. trains on the winner: where the head's rotation won, its gradient refines the head; elsewhere the
   head is pulled towards the searched pose (``pose_distill``), so the encoder learns what the
   search finds (the thesis' amortised pose) while the search keeps it out of local minima.

No gradient flows through the search. Inference (``CryoVAE.encode``) runs the same search without
sampling. Scores are normalised cross-correlations inside the mask disc: cheap and indifferent to
the tanh contrast. One volume serves the batch: with heterogeneous particles the search matches
each image against the batch's consensus at low resolution, which is what it needs for the basin;
the per-particle volume then drives the loss and the head's fine pose.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import tensorflow as tf


@lru_cache(maxsize=8)
def search_grid(step_deg: float) -> np.ndarray:
    """Float32 ``(R, 4)`` unit quaternions (scalar first): a near-uniform SO(3) grid (Fibonacci
    directions x in-plane angles, ``geometry.grid_rotations``); ~4,400 rotations at 15 degrees."""
    from cryovae_nb.geometry import grid_rotations, matrix_to_quaternion

    return matrix_to_quaternion(grid_rotations(float(step_deg))).astype(np.float32)


@lru_cache(maxsize=8)
def local_perturbations(step_deg: float) -> np.ndarray:
    """Float32 ``(27, 4)`` unit quaternions (scalar first): rotations by ``(-1, 0, 1) * step / 2``
    about x, y and z (all 27 combinations as rotation vectors, identity included): the
    neighbourhood of a grid point."""
    from scipy.spatial.transform import Rotation

    d = np.deg2rad(step_deg) / 2
    a = np.array(np.meshgrid(*([(-d, 0.0, d)] * 3), indexing="ij")).reshape(3, -1).T
    xyzw = Rotation.from_rotvec(a).as_quat()
    return np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1).astype(np.float32)


def normalise(images, disc) -> tf.Tensor:
    """``(..., n, n)`` -> ``(..., n*n)`` zero-mean, unit-norm vectors over the ``disc`` pixels."""
    n = images.shape[-1]
    count = float(np.sum(disc))
    x = images * disc
    x = (x - tf.reduce_sum(x, axis=[-2, -1], keepdims=True) / count) * disc
    x = tf.reshape(x, tf.concat([tf.shape(x)[:-2], [n * n]], 0))
    return x / tf.maximum(tf.norm(x, axis=-1, keepdims=True), 1e-12)


def band_dof(n: int, band: float) -> int:
    """Real degrees of freedom of an ``n x n`` image low-passed to ``band`` cycles per box: the
    number of Fourier components within the band (Hermitian pairs count one complex = two reals)."""
    k = np.fft.fftfreq(n) * n
    return int(np.sum(k[:, None] ** 2 + k[None, :] ** 2 <= band * band))


@lru_cache(maxsize=16)
def shift_window(n: int, max_shift: float) -> np.ndarray:
    """Float32 ``(n, n)``: 1 at the whole-pixel shifts (stored mod n, ``[y, x]``) within
    ``max_shift`` px of zero, else 0 -- the shifts the search may choose."""
    s = np.fft.fftfreq(n) * n
    return (s[:, None] ** 2 + s[None, :] ** 2 <= max_shift**2 + 1e-9).astype(np.float32)
