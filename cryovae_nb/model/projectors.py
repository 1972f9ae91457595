"""Differentiable projectors: volume batch + pose batch -> image batch (TensorFlow).

Both follow the convention of ``cryovae_nb.geometry`` (read its docstring): volumes ``V[z, y, x]``
with coordinates centred on voxel ``n // 2``; the image in pose ``(R, s)`` is
``I(x, y) = sum_z V(R @ (x - sx, y - sy, z))``.

* :func:`project_real` -- the reference: rotate the sampling grid, trilinear gather (zero outside
  the box), sum over z. Exact to trilinear interpolation and slow (8 n^3 gathers per image).
* :func:`project_fourier` -- the fast path, by the central slice theorem: the projection's 2D
  spectrum is the 3D spectrum sampled on the plane ``R @ (kx, ky, 0)``. One rfft3d per volume,
  trilinear interpolation of ``n * (n//2 + 1)`` complex samples (Hermitian symmetry covers
  ``kx < 0``), the shift as a phase ramp, one irfft2d. Frequencies beyond ``n/2`` are dropped.
  Linear interpolation in Fourier space multiplies real space by ``sinc^2`` per axis, which
  :func:`gridding_correction` divides out beforehand; zero padding (``pad``) shrinks what remains.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import tensorflow as tf


def _centred(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) - n // 2


@lru_cache(maxsize=16)
def spherical_mask(n: int, diameter_fraction: float) -> np.ndarray:
    """Float32 ``(n, n, n)`` mask: 1 within ``diameter_fraction * n / 2`` of the centre voxel, else 0."""
    c = _centred(n)
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    return (r2 <= (diameter_fraction * n / 2) ** 2).astype(np.float32)


@lru_cache(maxsize=16)
def gridding_correction(n: int, padded: int) -> np.ndarray:
    """Float32 ``(n, n, n)``: ``1 / prod_axes sinc^2(r / padded)``, the inverse apodisation of
    trilinear interpolation on a ``padded``-point Fourier grid."""
    s = np.sinc(_centred(n) / padded) ** 2
    return (1.0 / (s[:, None, None] * s[None, :, None] * s[None, None, :])).astype(np.float32)


def _as_inputs(volumes, rotations, shifts):
    volumes = tf.convert_to_tensor(volumes, tf.float32)
    rotations = tf.convert_to_tensor(rotations, tf.float32)
    n = volumes.shape[-1]
    if n is None or volumes.shape.rank != 4 or volumes.shape[1:] != (n, n, n):
        raise ValueError(f"volumes must have shape (B, n, n, n), got {volumes.shape}")
    if shifts is None:
        shifts = tf.zeros(tf.stack([tf.shape(volumes)[0], 2]), tf.float32)
    shifts = tf.convert_to_tensor(shifts, tf.float32)
    return volumes, rotations, shifts, n


def project_real(volumes, rotations, shifts=None) -> tf.Tensor:
    """Reference projector: ``(B, n, n, n)`` volumes, ``(B, 3, 3)`` rotations, ``(B, 2)`` shifts (px)
    -> ``(B, n, n)`` images. Trilinear interpolation, zero outside the box."""
    volumes, rotations, shifts, n = _as_inputs(volumes, rotations, shifts)
    b = tf.shape(volumes)[0]
    c = _centred(n)
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    grid = tf.constant(np.stack([xx, yy, zz], -1).reshape(-1, 3), tf.float32)  # (n^3, 3) in z,y,x order
    shift3 = tf.pad(shifts, [[0, 0], [0, 1]])[:, None, :]
    # sample points in index units of the volume padded by one zero voxel on every side
    p = tf.einsum("bij,bmj->bmi", rotations, grid[None] - shift3) + (n // 2 + 1)
    p0 = tf.floor(p)
    f = p - p0
    i0 = tf.cast(p0, tf.int32)
    m = n + 2
    flat = tf.reshape(tf.pad(volumes, [[0, 0], [1, 1], [1, 1], [1, 1]]), [-1])
    base = (tf.range(b) * m**3)[:, None]
    out = 0.0
    for dz in (0, 1):  # eight corners, one gather each, to keep the peak memory down
        for dy in (0, 1):
            for dx in (0, 1):
                # indices outside [0, m-1] are clipped onto the zero border
                ix = tf.clip_by_value(i0[..., 0] + dx, 0, m - 1)
                iy = tf.clip_by_value(i0[..., 1] + dy, 0, m - 1)
                iz = tf.clip_by_value(i0[..., 2] + dz, 0, m - 1)
                w = ((f[..., 0] if dx else 1 - f[..., 0]) * (f[..., 1] if dy else 1 - f[..., 1])
                     * (f[..., 2] if dz else 1 - f[..., 2]))
                out += w * tf.gather(flat, base + (iz * m + iy) * m + ix)
    return tf.reduce_sum(tf.reshape(out, [b, n, n, n]), axis=1)


@lru_cache(maxsize=16)
def _slice_frequencies(n: int):
    """The ``(n, n//2 + 1)`` half-plane of image frequencies (ky in FFT order, kx >= 0), flattened
    to ``(P, 2)`` as (kx, ky) in cycles per box, and the mask of those within radius n/2."""
    ky, kx = np.meshgrid(np.fft.fftfreq(n) * n, np.arange(n // 2 + 1, dtype=np.float64), indexing="ij")
    k = np.stack([kx.ravel(), ky.ravel()], -1)
    band = (k**2).sum(-1) <= (n / 2) ** 2
    return k.astype(np.float32), band.astype(np.float32)


@tf.custom_gradient
def rfft3d(x):
    """``tf.signal.rfft3d`` with a gradient (TensorFlow registers none for RFFT3D).

    For a real loss L, dL/dx_n = Re sum_{k in half-space} g_k exp(+2 pi i k.n / N), with ``g`` the
    incoming complex gradient. ``irfft3d`` counts the interior kx columns twice (their Hermitian
    mirrors) and takes the real part of the kx = 0 and Nyquist columns, so halving the interior
    columns and scaling by N^3 gives exactly that sum (checked in tests/test_model.py).
    """
    shape = x.shape[-3:]
    spec = tf.signal.rfft3d(x)

    def grad(g):
        nx = shape[-1]
        w = np.full(nx // 2 + 1, 0.5, np.float32)
        w[0] = 1.0
        if nx % 2 == 0:
            w[-1] = 1.0
        scale = float(np.prod(shape))
        return tf.signal.irfft3d(g * tf.constant(w, tf.complex64), fft_length=list(shape)) * scale

    return spec, grad


def project_fourier(volumes, rotations, shifts=None, *, pad: float = 1.0,
                    correction: bool = True) -> tf.Tensor:
    """Fast projector by the central slice theorem; same arguments and result as :func:`project_real`.

    ``pad`` >= 1 zero-pads the volume to ``round(pad * n)`` before the 3D FFT (finer Fourier grid,
    smaller interpolation error, ~pad^3 the FFT cost); ``correction`` applies the gridding
    correction (pass ``False`` if the volumes were already multiplied by it).
    """
    volumes, rotations, shifts, n = _as_inputs(volumes, rotations, shifts)
    b = tf.shape(volumes)[0]
    big = max(n, int(round(pad * n)))
    if correction:
        volumes = volumes * gridding_correction(n, big)
    if big > n:
        lo = big // 2 - n // 2  # keeps the centre voxel on the padded grid's centre
        volumes = tf.pad(volumes, [[0, 0]] + [[lo, big - n - lo]] * 3)
    # move the centre voxel to index 0 so the spectrum is smooth (no (-1)^k checkerboard)
    spec = rfft3d(tf.roll(volumes, [-(big // 2)] * 3, axis=[1, 2, 3]))
    half = big // 2 + 1
    spec = tf.pad(spec, [[0, 0], [0, 0], [0, 0], [0, 1]])  # room for the x+1 corner at kx = big/2

    k_np, band_np = _slice_frequencies(n)
    k2 = tf.constant(k_np)                                  # (P, 2)
    k3 = tf.pad(k2, [[0, 0], [0, 1]]) * (big / n)           # plane points in padded-grid units
    q = tf.einsum("bij,pj->bpi", rotations, k3)             # (B, P, 3) as (x, y, z)
    flip = q[..., 0] < 0
    q = tf.where(flip[..., None], -q, q)                    # F(-q) = conj(F(q)) for a real volume
    q0 = tf.floor(q)
    f = q - q0
    i0 = tf.cast(q0, tf.int32)
    x0 = tf.clip_by_value(i0[..., 0], 0, half - 1)          # beyond the band only; masked below
    y0, z0 = i0[..., 1], i0[..., 2]
    corner_idx, corner_w = [], []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                z = tf.math.floormod(z0 + dz, big)
                y = tf.math.floormod(y0 + dy, big)
                corner_idx.append((z * big + y) * (half + 1) + x0 + dx)
                corner_w.append((f[..., 0] if dx else 1 - f[..., 0]) * (f[..., 1] if dy else 1 - f[..., 1])
                                * (f[..., 2] if dz else 1 - f[..., 2]))
    idx = tf.stack(corner_idx, -1) + (tf.range(b) * (big * big * (half + 1)))[:, None, None]
    w = tf.stack(corner_w, -1)
    vals = tf.gather(tf.reshape(spec, [-1]), idx)           # (B, P, 8) complex
    sl = tf.complex(tf.reduce_sum(tf.math.real(vals) * w, -1), tf.reduce_sum(tf.math.imag(vals) * w, -1))
    sl = tf.where(flip, tf.math.conj(sl), sl)
    # shift by +s is the phase ramp exp(-2 pi i k.s / n); drop frequencies beyond n/2
    phase = -2 * np.pi / n * tf.einsum("bj,pj->bp", shifts, k2)
    sl = sl * tf.complex(tf.cos(phase) * band_np, tf.sin(phase) * band_np)
    img = tf.signal.irfft2d(tf.reshape(sl, [b, n, n // 2 + 1]), fft_length=[n, n])
    return tf.roll(img, [n // 2, n // 2], axis=[1, 2])


def project(volumes, rotations, shifts=None, *, method: str = "fourier", pad: float = 1.0,
            correction: bool = True) -> tf.Tensor:
    """Dispatch to :func:`project_fourier` (``method="fourier"``) or :func:`project_real`."""
    if method == "fourier":
        return project_fourier(volumes, rotations, shifts, pad=pad, correction=correction)
    if method == "real":
        return project_real(volumes, rotations, shifts)
    raise ValueError(f"unknown projector {method!r}; use 'fourier' or 'real'")
