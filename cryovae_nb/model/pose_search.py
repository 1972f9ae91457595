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

How candidates are scored (``ModelConfig.pose.search_scoring``). ``"real_space"`` (the default):
each candidate is projected, inverse-transformed, normalised inside the mask disc, transformed
again and cross-correlated with the image by FFT (its best whole-pixel shift). ``"fourier"``
(opt-in): the band's Fourier components are correlated directly -- by Parseval the zero-mean
inner product and the norms of band-limited images are sums over their components, and moving
the projection by s multiplies it by a phase, so every whole-pixel shift within ``max_shift`` is
one matrix product of ``I conj(P)`` (:func:`shifted_scores`), with no transform per candidate;
the global stage's slices are the projector's trilinear feature path (``project_features``); the second local
round tries 7 rotations (+-step/4 about each axis, :func:`axis_perturbations`) instead of 27; the
winner's shift is refined to a quarter pixel. With the CTF it multiplies the candidates' band
components, in both stages. Measured (README, Benchmarks; one loaded run each, old and new side by
side): the ab initio step 1.5x faster (56 -> 85 images/s), but the L-shape's FSC 0.5 after 10
minutes worse (8.30 vs 6.10 px; 0.143: 3.45 vs 3.83 px), so it stays opt-in.

Since stop 20 the ``"fourier"`` scoring reads each candidate's band components straight from its
volume's 3D spectrum (``Projector.spectrum`` / ``band_slices``), and ``start=`` (the Trainer's pose
cache, ``PoseConfig.global_every``) skips the global stage and the first local round: the last
searched rotation is refined by the fine round alone (README, Benchmarks: the step between global
searches 1.6x (real space) and 1.6x (Fourier) the full search's images/s; not yet better FSC per
minute, so both stay opt-in).

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
from cryovae_nb.model.projectors import Projector, band_components, band_spectrum, lowpass
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


def band_ctf(ctf, band: float) -> tf.Tensor | None:
    """``(B, n, n//2 + 1)`` CTFs -> ``(B, c)`` at the components of ``band`` (None stays None)."""
    if ctf is None:
        return None
    n = ctf.shape[-2]
    idx = tf.constant(band_components(n, float(band))[0])
    return tf.gather(tf.reshape(tf.cast(ctf, tf.float32), [tf.shape(ctf)[0], -1]), idx, axis=-1)


def spectral_correlation(img, proj, weight, ctf=None) -> tf.Tensor:
    """Normalised correlations ``(B, R)`` of images with projections from their band components
    (``img`` ``(B, c)``, ``proj`` ``(R, c)`` complex, ``weight`` ``(c,)``), each projection imaged
    through the image's CTF ``ctf`` ``(B, c)`` (None: none): <I, CTF P> / (|I| |CTF P|) by
    Parseval, two matrix products (module docstring)."""
    wci = tf.cast(weight if ctf is None else weight * ctf, tf.complex64) * img          # (B, c)
    num = (tf.matmul(tf.math.real(wci), tf.math.real(proj), transpose_b=True)
           + tf.matmul(tf.math.imag(wci), tf.math.imag(proj), transpose_b=True))
    p2 = tf.square(tf.abs(proj))
    if ctf is None:
        den = tf.reduce_sum(weight * p2, axis=-1)[None]                                  # (1, R)
    else:
        den = tf.matmul(weight * tf.square(ctf), p2, transpose_b=True)                    # |CTF P|^2
    inorm = tf.reduce_sum(weight * tf.square(tf.abs(img)), axis=-1, keepdims=True)       # |I|^2
    return num / tf.sqrt(tf.maximum(den * inorm, 1e-30))


def ctf_correlation(images, projections, ctf, band: float) -> tf.Tensor:
    """Normalised correlations ``(B, R)`` of ``(B, n, n)`` images with ``(R, n, n)`` projections
    each imaged through the image's CTF ``(B, n, n//2 + 1)``, over the components within ``band``
    (cycles per box): :func:`spectral_correlation` of their band components."""
    weight = tf.constant(band_components(images.shape[-1], float(band))[1])
    return spectral_correlation(band_spectrum(images, band), band_spectrum(projections, band), weight,
                                band_ctf(ctf, band))


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


@lru_cache(maxsize=16)
def shift_list(n: int, max_shift: float) -> np.ndarray:
    """Float32 ``(S, 2)``: the whole-pixel shifts ``(x, y)`` within ``max_shift`` px of zero (those
    of :func:`shift_window`, signed)."""
    s = np.fft.fftfreq(n) * n
    y, x = np.nonzero(shift_window(n, max_shift))
    return np.stack([s[x], s[y]], -1).astype(np.float32)


# quarter-pixel offsets tried around the best whole-pixel shift (the "fourier" scoring's last step)
SUBPIXEL_OFFSETS = np.stack(np.meshgrid(np.arange(-2, 3) / 4, np.arange(-2, 3) / 4, indexing="xy"),
                            -1).reshape(-1, 2).astype(np.float32)


@lru_cache(maxsize=16)
def _band_frequencies(n: int, band: float) -> np.ndarray:
    """Float32 ``(c, 2)``: the ``(kx, ky)`` (cycles per box) of the components of ``band_components``."""
    ky, kx = np.meshgrid(np.fft.fftfreq(n) * n, np.arange(n // 2 + 1), indexing="ij")
    idx = band_components(n, float(band))[0]
    return np.stack([kx.reshape(-1)[idx], ky.reshape(-1)[idx]], -1).astype(np.float32)


def shifted_scores(products, freqs, shifts, n: int) -> tf.Tensor:
    """``sum_k Re(products_k exp(+2 pi i k.s / n))`` for each shift ``s``: the inner product of an
    image with a projection moved by ``s``, from ``products = w I conj(P)`` ``(..., c)``.
    ``shifts`` ``(S, 2)`` -> ``(..., S)`` (one matrix product); ``(..., S, 2)`` -> ``(..., S)``."""
    if shifts.shape.rank == 2:
        a = (2 * np.pi / n) * tf.matmul(freqs, shifts, transpose_b=True)                 # (c, S)
        return (tf.matmul(tf.math.real(products), tf.cos(a))
                - tf.matmul(tf.math.imag(products), tf.sin(a)))
    a = (2 * np.pi / n) * tf.einsum("cj,...sj->...cs", freqs, shifts)                    # (..., c, S)
    return (tf.reduce_sum(tf.math.real(products)[..., None] * tf.cos(a), -2)
            - tf.reduce_sum(tf.math.imag(products)[..., None] * tf.sin(a), -2))


@lru_cache(maxsize=8)
def axis_perturbations(step_deg: float) -> np.ndarray:
    """Float32 ``(7, 4)`` unit quaternions (scalar first): the identity and rotations by
    ``+-step / 2`` about x, y and z -- a cheaper neighbourhood than :func:`local_perturbations`'
    27, for the last local round, where the pose is already within ~step / 2."""
    d = np.deg2rad(step_deg) / 2
    a = np.concatenate([np.zeros((1, 3)), d * np.eye(3), -d * np.eye(3)])
    xyzw = Rotation.from_rotvec(a).as_quat()
    return np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1).astype(np.float32)


@dataclass(frozen=True)
class SearchGrids:
    """The rotations a search tries, built once per model: the global ``grid`` ``(R, 4)``, the
    local neighbourhoods ``local`` ``(27, 4)`` (+-step/2) and ``local_fine`` (+-step/4: ``(27,
    4)``, or ``(7, 4)`` along the axes with ``search_scoring="fourier"``) and ``dof``, the real
    degrees of freedom of the global band (the posterior's width)."""

    grid: tf.Tensor
    local: tf.Tensor
    local_fine: tf.Tensor
    dof: int

    @classmethod
    def for_config(cls, config) -> SearchGrids:
        """The grids of ``config.pose.search_deg`` and ``pose_search_band`` (a ModelConfig)."""
        step = config.pose.search_deg
        fine = axis_perturbations if config.pose.search_scoring == "fourier" else local_perturbations
        return cls(tf.constant(search_grid(step)), tf.constant(local_perturbations(step)),
                   tf.constant(fine(step / 2)),
                   band_dof(config.architecture.box, config.pose.search_band * config.architecture.box))


def search_pose(images, volumes, quaternion, shift, *, grids: SearchGrids, projector: Projector, disc,
                config, pose_noise=None, ctf=None, start=None):
    """Global pose search for ``(B, n, n)`` images, given their decoded ``volumes``, the head's
    ``quaternion`` ``(B, 4)`` and ``shift`` ``(B, 2)``, the model's ``projector``, its mask
    ``disc`` ``(n, n)`` and its ``config`` (a ModelConfig: bands, ``max_shift_px``,
    ``search_reference``).

    The grid rotation (images moved back by the head's shift) is the best one, or with
    ``pose_noise`` (uniform ``(B, R)``) drawn from its posterior; it is then refined locally,
    each candidate rotation at its best whole-pixel shift within ``max_shift``. Returns
    ``(B, 4)`` quaternions, ``(B, 2)`` shifts (px) and a ``(B,)`` bool: the head's own
    rotation won. ``ctf`` ``(B, n, n//2 + 1)``: each image's CTF (``forward.ctf_spectrum``), or None.
    ``start`` ``(B, 4)``: each image's cached pose (its last search, ``PoseConfig.global_every``;
    a zero row: none, the head's rotation stands in): the global stage and the first local round
    are skipped, and only the fine round (``grids.local_fine``) looks around it, the head's
    rotation competing.
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
    own = cfg.pose.search_reference == "own"
    fourier = cfg.pose.search_scoring == "fourier"

    def candidates(quats, band):                           # (B, K, 4) -> (B, K, n, n) projections
        # Why each image's own volume: the batch mean blurs whatever moves, so on a flexible
        # particle it misplaces fine poses; the global stage keeps the mean (one volume for
        # thousands of rotations), where the low band hides the motion anyway.
        # quaternion_to_matrix flattens to (B*K, 3, 3): restore (B, K, 3, 3) for the projector
        k = quats.shape[1]
        rot = tf.reshape(quaternion_to_matrix(quats), [-1, k, 3, 3])
        if own:
            return forward_images(volumes, rot, projector=projector, band=band)
        return tf.reshape(forward_images(ref, tf.reshape(rot, [1, -1, 3, 3]), projector=projector, band=band),
                          [-1, k, n, n])

    # global: every grid rotation at the low band, the images moved back by the head's shift.
    # Why the projector's feature path (trilinear taps) there with "fourier" scoring: thousands of
    # slices are a large part of the search's cost, and at the global band the kernel's error is
    # far below the noise (the local rounds keep the projector's kernel: with trilinear taps there
    # the median pose error on the L at SNR 0.1, true map, went 8.9 -> 9.8 degrees)
    band = cfg.pose.search_band * n
    grid_rot = quaternion_to_matrix(grids.grid)[None]
    if fourier:
        # Why the in-disc mean goes first: tanh-normalised images sit on a background of ~0.5
        # inside the disc and 0 outside it; left in, that disc's edge dominates their low band
        # and measured the poses off by a median 120 degrees on the L at SNR 0.1
        count = float(np.sum(disc))
        images = (images - tf.reduce_sum(images * disc, axis=[-2, -1], keepdims=True) / count) * disc
    if start is not None:
        # a cached pose: a particle searched globally on an earlier visit is refined locally
        # around where it was (as cryoSPARC's and cryoDRGN-AI's later iterations do), at a
        # fraction of the cost; the coarse stages would mostly find it again
        q = tf.stop_gradient(tf.convert_to_tensor(start, tf.float32))
        q = tf.where(tf.norm(q, axis=-1, keepdims=True) > 0.5, q, quaternion)  # none cached: the head's
        local_rounds = (grids.local_fine,)
    elif fourier:  # Parseval: the band's components, the shift a phase (module docstring)
        weight, freqs = tf.constant(band_components(n, band)[1]), tf.constant(_band_frequencies(n, band))
        a = (2 * np.pi / n) * tf.matmul(shift, freqs, transpose_b=True)            # (B, c)
        img = band_spectrum(images, band) * tf.complex(tf.cos(a), tf.sin(a))
        grid_proj = projector.band_slices(projector.spectrum(ref, features=True), grid_rot, band=band,
                                          features=True)[0]                        # (R, c)
        corr = spectral_correlation(img, grid_proj, weight, band_ctf(ctf, band))
    else:
        grid_proj = forward_images(ref, grid_rot, projector=projector, band=band)[0]  # (R, n, n)
        if ctf is None:
            imgs = normalise(lowpass(images, band, -shift), disc)                  # (B, n^2)
            corr = tf.matmul(imgs, normalise(grid_proj, disc), transpose_b=True)   # (B, R)
        else:  # each grid projection through each image's CTF (module docstring)
            corr = ctf_correlation(lowpass(images * disc, band, -shift), grid_proj, ctf, band)
    if start is None and pose_noise is not None:
        # Sampling rather than the best: early on the volume is wrong and the best pose often
        # too; a hard choice then locks the volume into what it already is (projection
        # matching's trap), a sample keeps every plausible pose in play (stochastic EM). The
        # posterior is that of Gaussian noise in the band's n_eff real Fourier components, the
        # projection scaled optimally: log p = -n_eff/2 (1 - c^2) / (1 - c_max^2) + const.
        c2 = tf.square(tf.nn.relu(corr))
        c2max = tf.reduce_max(c2, axis=1, keepdims=True)
        logp = 0.5 * grids.dof * (c2 - c2max) / tf.maximum(1.0 - c2max, 1e-3)
        corr = logp - tf.math.log(-tf.math.log(tf.clip_by_value(pose_noise, 1e-12, 1.0 - 1e-7)))
    if start is None:
        q = tf.gather(grids.grid, tf.argmax(corr, axis=1, output_type=tf.int32))
        local_rounds = (grids.local, grids.local_fine)

    # local: +-step/2, then +-step/4, at the refinement band, each candidate at its best shift
    # within max_shift; the head's rotation competes in the first round
    band = cfg.pose.refine_band * n
    if fourier:
        # one 3D spectrum per volume serves both rounds; candidates are sliced at the band's
        # components only (no image formed, no transform back)
        spectrum = projector.spectrum(volumes if own else ref)

        def candidate_spectra(quats):                      # (B, K, 4) -> (B, K, c)
            k = quats.shape[1]
            rot = tf.reshape(quaternion_to_matrix(quats), [-1, k, 3, 3])
            if own:
                return projector.band_slices(spectrum, rot, band=band)
            return tf.reshape(projector.band_slices(spectrum, tf.reshape(rot, [1, -1, 3, 3]), band=band),
                              [tf.shape(rot)[0], k, -1])
        return _refine_fourier(images, q, quaternion, local_rounds, candidate_spectra, band,
                               cfg.architecture.max_shift_px, band_ctf(ctf, band))
    img_spec = tf.signal.rfft2d(tf.reshape(normalise(lowpass(images, band), disc), [-1, n, n]))
    window = tf.constant(shift_window(n, cfg.architecture.max_shift_px))           # (n, n) 0/1
    head_won = tf.zeros(tf.shape(q)[:1], tf.bool)
    shifts = tf.zeros(tf.shape(q)[:1] + [2])
    for level, local in enumerate(local_rounds):
        cand = quaternion_multiply(q[:, None], local[None])                        # (B, 27, 4)
        if level == 0:
            cand = tf.concat([quaternion[:, None], cand], axis=1)                  # head first
        k = cand.shape[1]
        proj = candidates(cand, band)
        if ctf is not None:  # each image's candidates imaged through its CTF, then normalised
            proj = multiply_spectrum(proj, ctf[:, None])
        proj = tf.reshape(normalise(proj, disc), [-1, k, n, n])
        # one FFT product per candidate: xcorr[s] = sum_x image(x) proj(x - s), the image being
        # the projection moved by +s
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


def _refine_fourier(images, q, quaternion, local_rounds, candidate_spectra, band: float, max_shift: float,
                    ctf=None):
    """The local rounds of :func:`search_pose` scored in Fourier space (``search_scoring="fourier"``):
    each candidate's band components against the image's, <I, P_s> / (|I| |P|) for every whole-pixel
    shift s within ``max_shift`` by one matrix product (:func:`shifted_scores`), no inverse
    transform per candidate; then the winner's shift to a quarter pixel. ``images`` ``(B, n, n)``
    (masked), ``q`` the global stage's ``(B, 4)``, ``quaternion`` the head's, ``candidate_spectra(quats)``
    ``(B, K, 4)`` -> their projections' band components ``(B, K, c)``, ``ctf`` ``(B, c)`` at the band's components or None. Returns what
    :func:`search_pose` does."""
    n = images.shape[-1]
    weight = tf.constant(band_components(n, band)[1])
    freqs = tf.constant(_band_frequencies(n, band))
    whole = tf.constant(shift_list(n, max_shift))                                  # (S, 2)
    img = band_spectrum(images, band)                                              # (B, c)
    inorm = tf.sqrt(tf.reduce_sum(weight * tf.square(tf.abs(img)), -1))            # (B,)
    wimg = tf.cast(weight, tf.complex64) * img
    head_won = None
    for level, local in enumerate(local_rounds):
        cand = quaternion_multiply(q[:, None], local[None])                        # (B, 27, 4)
        if level == 0:
            cand = tf.concat([quaternion[:, None], cand], axis=1)                  # head first
        k = cand.shape[1]
        p = candidate_spectra(cand)                                                # (B, K, c)
        if ctf is not None:
            p = p * tf.cast(ctf[:, None], tf.complex64)
        pnorm = tf.sqrt(tf.reduce_sum(weight * tf.square(tf.abs(p)), -1))         # (B, K)
        prod = wimg[:, None] * tf.math.conj(p)                                     # (B, K, c)
        score = shifted_scores(prod, freqs, whole, n) / tf.maximum(
            (inorm[:, None] * pnorm)[..., None], 1e-30)                            # (B, K, S)
        best = tf.argmax(tf.reshape(score, [-1, k * whole.shape[0]]), axis=1, output_type=tf.int32)
        which = best // whole.shape[0]
        q = tf.gather(cand, which, axis=1, batch_dims=1)
        shifts = tf.gather(whole, best % whole.shape[0])
        prod = tf.gather(prod, which, axis=1, batch_dims=1)                        # (B, c) the winner's
        if level == 0:
            head_won = tf.equal(which, 0)
    # Why sub-pixel: a whole-pixel shift is up to 0.7 px off, which at the refinement band blurs
    # what the volume learns from each image; the winner's score at quarter-pixel offsets is cheap
    offsets = shifts[:, None] + tf.constant(SUBPIXEL_OFFSETS)[None]                # (B, 25, 2)
    score = shifted_scores(prod, freqs, offsets, n)
    inside = tf.reduce_sum(tf.square(offsets), -1) <= max_shift**2 + 1e-6
    best = tf.argmax(tf.where(inside, score, -np.inf), axis=1, output_type=tf.int32)
    return q, tf.gather(offsets, best, axis=1, batch_dims=1), head_won
