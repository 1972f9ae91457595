"""Global pose search inside the training step, for learned (ab initio) poses.

Why: a pose head trained by gradient alone settles on the first views that roughly fit, and the
volume follows it into a blurred, mis-posed local minimum (benchmarks/quality_lshape.py: ~11 px at
FSC 0.5 after 10 min on the thesis' L, where known poses reach 2 px). So each step
(:func:`search_pose`):

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

With the CTF in the model (``ModelConfig.loss.ctf``) the local candidates are imaged through each
particle's CTF, as in the loss. The global stage cannot afford B x R filtered projections, so it
correlates in Fourier space over the band's components (:func:`ctf_correlation`): the numerator
<I, CTF P> = <CTF I, P> (the CTF is real) and the filtered projection's squared norm
sum_k CTF(k)^2 |P(k)|^2 are each one matrix product of (B, c) by (R, c). Why exact norms: with
the CTF near zero at the lowest frequencies, the projections' own norms (their low-frequency power)
would decide the ranking, and measured half the poses off by ~180 degrees.

No gradient flows through the search. Inference (``CryoVAE.encode``) runs the same search without
sampling. Scores are normalised cross-correlations inside the mask disc: cheap and indifferent to
the tanh contrast. One volume serves the batch: with heterogeneous particles the search matches
each image against the batch's consensus at low resolution, which is what it needs for the basin;
the per-particle volume then drives the loss and the head's fine pose.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import tensorflow as tf
from scipy.spatial.transform import Rotation

from cryovae_nb.errors import InputError
from cryovae_nb.geometry import grid_rotations, matrix_to_quaternion
from cryovae_nb.model.forward import forward_images, multiply_spectrum
from cryovae_nb.model.projectors import Projector, lowpass
from cryovae_nb.model.rotations import quaternion_multiply, quaternion_to_matrix


@lru_cache(maxsize=8)
def search_grid(step_deg: float) -> np.ndarray:
    """Float32 ``(R, 4)`` unit quaternions (scalar first): a near-uniform SO(3) grid (Fibonacci
    directions x in-plane angles, ``geometry.grid_rotations``); ~4,400 rotations at 15 degrees."""
    return matrix_to_quaternion(grid_rotations(float(step_deg))).astype(np.float32)


@lru_cache(maxsize=8)
def local_perturbations(step_deg: float) -> np.ndarray:
    """Float32 ``(27, 4)`` unit quaternions (scalar first): rotations by ``(-1, 0, 1) * step / 2``
    about x, y and z (all 27 combinations as rotation vectors, identity included): the
    neighbourhood of a grid point."""
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


@lru_cache(maxsize=16)
def band_components(n: int, band: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into the ``(n, n//2 + 1)`` rfft grid of the components within ``band`` cycles
    per box, the zero frequency left out (the normalised correlation ignores the mean), and each
    one's weight in a real image's inner product (2 for a component whose mirror is not stored)."""
    ky = np.fft.fftfreq(n) * n
    kx = np.fft.rfftfreq(n) * n
    inside = (ky[:, None] ** 2 + kx[None, :] ** 2 <= band * band) & ~((ky[:, None] == 0) & (kx[None, :] == 0))
    mirrored_stored = (kx == 0) | ((n % 2 == 0) & (kx == n // 2))
    weight = np.where(mirrored_stored[None, :], 1.0, 2.0) * np.ones_like(ky)[:, None]
    idx = np.flatnonzero(inside)
    return idx.astype(np.int32), weight.reshape(-1)[idx].astype(np.float32)


def ctf_correlation(images, projections, ctf, band: float) -> tf.Tensor:
    """Normalised correlations ``(B, R)`` of ``(B, n, n)`` images with ``(R, n, n)`` projections
    each imaged through the image's CTF ``(B, n, n//2 + 1)``, over the components within ``band``
    (cycles per box): <I, CTF P> / (|I| |CTF P|), two matrix products (module docstring)."""
    n = images.shape[-1]
    idx, weight = (tf.constant(a) for a in band_components(n, float(band)))

    def comps(x):  # (..., n, n) real -> (..., c) complex band components
        spec = tf.signal.rfft2d(x)
        return tf.gather(tf.reshape(spec, tf.concat([tf.shape(spec)[:-2], [-1]], 0)), idx, axis=-1)

    img = comps(images)
    p = comps(projections)
    c = tf.gather(tf.reshape(tf.cast(ctf, tf.float32), [tf.shape(ctf)[0], -1]), idx, axis=-1)
    wci = tf.cast(weight * c, tf.complex64) * img                                  # (B, c)
    num = (tf.matmul(tf.math.real(wci), tf.math.real(p), transpose_b=True)
           + tf.matmul(tf.math.imag(wci), tf.math.imag(p), transpose_b=True))
    den = tf.matmul(weight * tf.square(c), tf.square(tf.abs(p)), transpose_b=True)  # |CTF P|^2
    inorm = tf.reduce_sum(weight * tf.square(tf.abs(img)), axis=-1, keepdims=True)    # |I|^2
    return num / tf.sqrt(tf.maximum(den * inorm, 1e-30))


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


@dataclass(frozen=True)
class SearchGrids:
    """The rotations a search tries, built once per model: the global ``grid`` ``(R, 4)``, the
    local neighbourhoods ``local`` and ``local_fine`` ``(27, 4)`` (+-step/2, +-step/4) and
    ``dof``, the real degrees of freedom of the global band (the posterior's width)."""

    grid: tf.Tensor
    local: tf.Tensor
    local_fine: tf.Tensor
    dof: int

    @classmethod
    def for_config(cls, config) -> SearchGrids:
        """The grids of ``config.pose.search_deg`` and ``pose_search_band`` (a ModelConfig)."""
        step = config.pose.search_deg
        return cls(tf.constant(search_grid(step)), tf.constant(local_perturbations(step)),
                   tf.constant(local_perturbations(step / 2)),
                   band_dof(config.architecture.box, config.pose.search_band * config.architecture.box))


def search_pose(images, volumes, quaternion, shift, *, grids: SearchGrids, projector: Projector, disc,
                config, pose_noise=None, ctf=None):
    """Global pose search for ``(B, n, n)`` images, given their decoded ``volumes``, the head's
    ``quaternion`` ``(B, 4)`` and ``shift`` ``(B, 2)``, the model's ``projector``, its mask
    ``disc`` ``(n, n)`` and its ``config`` (a ModelConfig: bands, ``max_shift_px``,
    ``search_reference``).

    The grid rotation (images moved back by the head's shift) is the best one, or with
    ``pose_noise`` (uniform ``(B, R)``) drawn from its posterior; it is then refined locally,
    each candidate rotation at its best whole-pixel shift within ``max_shift``. Returns
    ``(B, 4)`` quaternions, ``(B, 2)`` shifts (px) and a ``(B,)`` bool: the head's own
    rotation won. ``ctf`` ``(B, n, n//2 + 1)``: each image's CTF (``forward.ctf_spectrum``), or None.
    No gradient flows through the search."""
    cfg = config
    n = cfg.architecture.box
    images, volumes, quaternion, shift = (tf.stop_gradient(tf.convert_to_tensor(x, tf.float32))
                                          for x in (images, volumes, quaternion, shift))
    if cfg.pose.search_reference == "own" and volumes.shape[0] is not None and images.shape[0] is not None \
            and volumes.shape[0] != images.shape[0]:
        raise InputError(f"search_pose: {images.shape[0]} images but {volumes.shape[0]} volumes "
                         "(search_reference='own' compares each image with its own volume)")
    ref = tf.reduce_mean(volumes, axis=0, keepdims=True)   # one volume serves every image

    def project_ref(quats, band):                          # (K, 4) -> (K, n^2) normalised
        rot = quaternion_to_matrix(quats)[None]
        return normalise(forward_images(ref, rot, projector=projector, band=band)[0], disc)

    def project_own(quats, band):                          # (B, K, 4) -> (B, K, n^2) normalised
        # Why each image's own volume: the batch mean blurs whatever moves, so on a flexible
        # particle it misplaces fine poses; the global stage keeps the mean (one volume for
        # thousands of rotations), where the low band hides the motion anyway.
        # quaternion_to_matrix flattens to (B*K, 3, 3): restore (B, K, 3, 3) for the projector
        rot = tf.reshape(quaternion_to_matrix(quats), [-1, quats.shape[1], 3, 3])
        return normalise(forward_images(volumes, rot, projector=projector, band=band), disc)

    # global: every grid rotation at the low band, the images moved back by the head's shift
    band = cfg.pose.search_band * n
    if ctf is None:
        imgs = normalise(lowpass(images, band, -shift), disc)                      # (B, n^2)
        corr = tf.matmul(imgs, project_ref(grids.grid, band), transpose_b=True)    # (B, R)
    else:  # each grid projection through each image's CTF (module docstring)
        grid_proj = forward_images(ref, quaternion_to_matrix(grids.grid)[None], projector=projector,
                                   band=band)[0]                                   # (R, n, n)
        corr = ctf_correlation(lowpass(images * disc, band, -shift), grid_proj, ctf, band)
    if pose_noise is not None:
        # Sampling rather than the best: early on the volume is wrong and the best pose often
        # too; a hard choice then locks the volume into what it already is (projection
        # matching's trap), a sample keeps every plausible pose in play (stochastic EM). The
        # posterior is that of Gaussian noise in the band's n_eff real Fourier components, the
        # projection scaled optimally: log p = -n_eff/2 (1 - c^2) / (1 - c_max^2) + const.
        c2 = tf.square(tf.nn.relu(corr))
        c2max = tf.reduce_max(c2, axis=1, keepdims=True)
        logp = 0.5 * grids.dof * (c2 - c2max) / tf.maximum(1.0 - c2max, 1e-3)
        corr = logp - tf.math.log(-tf.math.log(tf.clip_by_value(pose_noise, 1e-12, 1.0 - 1e-7)))
    q = tf.gather(grids.grid, tf.argmax(corr, axis=1, output_type=tf.int32))

    # local: +-step/2, then +-step/4, at the refinement band, with shifts by cross-correlation
    # (one FFT product per candidate); the head's rotation competes in the first round
    band = cfg.pose.refine_band * n
    img_spec = tf.signal.rfft2d(tf.reshape(normalise(lowpass(images, band), disc), [-1, n, n]))
    window = tf.constant(shift_window(n, cfg.architecture.max_shift_px))                        # (n, n) 0/1
    head_won = tf.zeros(tf.shape(q)[:1], tf.bool)
    shifts = tf.zeros(tf.shape(q)[:1] + [2])
    for level, local in enumerate((grids.local, grids.local_fine)):
        cand = quaternion_multiply(q[:, None], local[None])                        # (B, 27, 4)
        if level == 0:
            cand = tf.concat([quaternion[:, None], cand], axis=1)                  # head first
        k = cand.shape[1]
        if ctf is None:
            if cfg.pose.search_reference == "own":
                proj = tf.reshape(project_own(cand, band), [-1, k, n, n])
            else:
                proj = tf.reshape(project_ref(tf.reshape(cand, [-1, 4]), band), [-1, k, n, n])
        else:  # each image's candidates imaged through its CTF, then normalised as without
            rot = tf.reshape(quaternion_to_matrix(cand), [-1, k, 3, 3])
            own = cfg.pose.search_reference == "own"
            raw = forward_images(volumes if own else ref, rot if own else tf.reshape(rot, [1, -1, 3, 3]),
                                 projector=projector, band=band)
            proj = tf.reshape(normalise(multiply_spectrum(tf.reshape(raw, [-1, k, n, n]), ctf[:, None]),
                                        disc), [-1, k, n, n])
        # xcorr[s] = sum_x image(x) proj(x - s): the image is the projection moved by +s
        xcorr = tf.signal.irfft2d(img_spec[:, None] * tf.math.conj(tf.signal.rfft2d(proj)),
                                  fft_length=[n, n])
        xcorr = tf.reshape(tf.where(window > 0, xcorr, -2.0), [-1, k * n * n])
        best = tf.argmax(xcorr, axis=1, output_type=tf.int32)
        q = tf.gather(cand, best // (n * n), axis=1, batch_dims=1)
        sy, sx = (best // n) % n, best % n
        shifts = tf.cast(tf.stack([sx, sy], -1), tf.float32)
        shifts = tf.where(shifts > n // 2, shifts - n, shifts)                     # wrap to signed
        if level == 0:
            head_won = tf.equal(best // (n * n), 0)
    return q, shifts, head_won
