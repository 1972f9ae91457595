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


# Kaiser-Bessel shape parameter per kernel width, tuned at pad 1 on smooth masked volumes at random
# poses (tests/test_model.py, benchmarks/train_throughput.py --accuracy): larger beta narrows the
# kernel's real-space profile (less aliasing at the centre, more deapodisation gain at the edge).
KAISER_BESSEL_BETA = {3: 6.5, 4: 8.0, 5: 10.0, 6: 12.0}
KERNEL_WIDTHS = (2, *KAISER_BESSEL_BETA)


def kernel_profile(width: int, u: np.ndarray) -> np.ndarray:
    """The Fourier interpolation kernel at offsets ``u`` (grid units), zero for ``|u| >= width / 2``.

    ``width=2`` is the tent (trilinear interpolation); 3..6 a Kaiser-Bessel bump minus its edge
    value, so the interpolant stays continuous in the pose (pose gradients see no jumps).
    """
    u = np.asarray(u, dtype=np.float64)
    if width == 2:
        return np.clip(1.0 - np.abs(u), 0.0, None)
    from scipy.special import i0

    beta = KAISER_BESSEL_BETA[width]
    t = np.clip(1.0 - (2.0 * u / width) ** 2, 0.0, None)
    return np.where(t > 0, (i0(beta * np.sqrt(t)) - 1.0) / (i0(beta) - 1.0), 0.0)


def _check_width(width: int) -> None:
    if width not in KERNEL_WIDTHS:
        raise ValueError(f"Fourier kernel width must be one of {KERNEL_WIDTHS}, got {width!r}")


@lru_cache(maxsize=8)
def _tap_polynomials(width: int) -> np.ndarray:
    """``(9, width)`` power-series coefficients: the weight of tap ``j`` is ``sum_d c[d, j] t^d`` for
    the fractional offset ``t`` in [0, 1) (see project_fourier). The Kaiser-Bessel bump is an entire
    function of ``u``, so degree 8 fits it to ~1e-7 -- cheap to evaluate and to differentiate."""
    t = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, 64))
    out = np.zeros((9, width))
    for j in range(width):
        y = kernel_profile(width, t + width / 2 - 1 - j)
        out[:, j] = np.polynomial.polynomial.polyfit(t, y, 8)
    return out


def _kernel_transform(width: int, xi: np.ndarray) -> np.ndarray:
    """Fourier transform of the kernel at ``xi`` (cycles per grid spacing): the apodisation that
    interpolating with it imposes on real space (``sinc^2`` for the tent)."""
    if width == 2:
        return np.sinc(xi) ** 2
    u, w = np.polynomial.legendre.leggauss(64)
    u, w = u * width / 2, w * width / 2  # exact to ~1e-12 for this smooth, compact bump
    return (w * kernel_profile(width, u) * np.cos(2 * np.pi * np.outer(xi, u))).sum(-1)


@lru_cache(maxsize=16)
def gridding_correction(n: int, padded: int, width: int = 2) -> np.ndarray:
    """Float32 ``(n, n, n)``: the inverse, per axis, of the apodisation that interpolating a
    ``padded``-point Fourier grid with the kernel of ``width`` imposes (``1 / sinc^2`` for 2)."""
    _check_width(width)
    s = 1.0 / _kernel_transform(width, _centred(n) / padded)
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).astype(np.float32)


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


@lru_cache(maxsize=16)
def _slice_frequencies(n: int):
    """Image frequencies (kx, ky) in cycles per box on the half plane kx >= 0 within radius n/2
    (beyond it the slice is dropped) as ``(P, 2)``, and for every cell of the ``(n, n//2 + 1)``
    rfft2 grid its row in that list, or ``P`` (a zero) outside the band."""
    ky, kx = np.meshgrid(np.fft.fftfreq(n) * n, np.arange(n // 2 + 1, dtype=np.float64), indexing="ij")
    k = np.stack([kx.ravel(), ky.ravel()], -1)
    band = (k**2).sum(-1) <= (n / 2) ** 2
    where = np.full(len(k), band.sum(), np.int32)
    where[band] = np.arange(band.sum())
    return k[band].astype(np.float32), where


@lru_cache(maxsize=16)
def _extended_columns(m: int, width: int):
    """The kx columns ``lo..hi`` the kernel can touch (kx >= 0 plane points, |k| <= m/2 on the
    ``m``-grid) and, for those outside the rfft range 0..m//2, the column they mirror:
    F(kx, ky, kz) = conj F(-kx, -ky, -kz), and -kx is taken modulo m."""
    lo = int(np.floor(-width / 2)) + 1
    hi = int(np.floor(m / 2 + width / 2))
    low = [-e for e in range(lo, 0)]                 # kx = lo..-1  <-  -kx
    high = [m - e for e in range(m // 2 + 1, hi + 1)]  # kx beyond m//2  <-  m - kx
    return lo, hi - lo + 1, low, high


def project_fourier(volumes, rotations, shifts=None, *, pad: float = 1.0, correction: bool = True,
                    width: int = 3) -> tf.Tensor:
    """Fast projector by the central slice theorem; same arguments and result as :func:`project_real`.

    ``width`` is the interpolation kernel in Fourier space: 2 = trilinear (8 taps per frequency),
    3..6 = Kaiser-Bessel (``width^3`` taps), far more accurate at the same FFT cost. ``pad`` >= 1
    zero-pads the volume to ``round(pad * n)`` before the 3D FFT (finer Fourier grid, ~pad^3 the FFT
    cost). ``correction`` divides out the kernel's apodisation first (pass ``False`` if the volumes
    were already multiplied by :func:`gridding_correction` ``(n, padded, width)``).
    """
    _check_width(width)
    volumes, rotations, shifts, n = _as_inputs(volumes, rotations, shifts)
    b = tf.shape(volumes)[0]
    m = max(n, int(round(pad * n)))
    if correction:
        volumes = volumes * gridding_correction(n, m, width)
    if m > n:
        lo = m // 2 - n // 2  # keeps the centre voxel on the padded grid's centre
        volumes = tf.pad(volumes, [[0, 0]] + [[lo, m - n - lo]] * 3)
    # move the centre voxel to index 0 so the spectrum is smooth (no (-1)^k checkerboard)
    spec = rfft3d(tf.roll(volumes, [-(m // 2)] * 3, axis=[1, 2, 3]))   # (B, m, m, m//2 + 1)

    # extend the kx axis to every column a kernel footprint can reach, from the Hermitian mirror
    x_lo, ncols, low, high = _extended_columns(m, width)
    neg = (-np.arange(m)) % m
    mirrored = tf.math.conj(tf.gather(tf.gather(tf.gather(spec, low + high, axis=3), neg, axis=1), neg, axis=2))
    ext = tf.concat([mirrored[..., :len(low)], spec, mirrored[..., len(low):]], axis=-1)  # (B, m, m, ncols)

    k_np, where = _slice_frequencies(n)
    k2 = tf.constant(k_np)                                  # (P, 2)
    k3 = tf.pad(k2, [[0, 0], [0, 1]]) * (m / n)             # plane points in m-grid units
    q = tf.einsum("bij,pj->bpi", rotations, k3)             # (B, P, 3) as (x, y, z)
    flip = q[..., 0] < 0
    q = tf.where(flip[..., None], -q, q)                    # F(-q) = conj(F(q)) for a real volume
    # taps g0 .. g0 + width - 1 on each axis, t = fractional position in [0, 1)
    g0 = tf.floor(q - width / 2) + 1
    t = q - g0 - (width / 2 - 1)
    coef = _tap_polynomials(width).astype(np.float32)
    wts = tf.zeros_like(t)[..., None] + coef[-1]
    for c in coef[-2::-1]:                                  # Horner: (B, P, 3, width)
        wts = wts * t[..., None] + c
    g0 = tf.cast(g0, tf.int32)
    taps = tf.range(width)
    gx = g0[..., 0:1] + taps - x_lo                         # column in ext
    gy = tf.math.floormod(g0[..., 1:2] + taps, m)
    gz = tf.math.floormod(g0[..., 2:3] + taps, m)
    zb = gz + (tf.range(b) * m)[:, None, None]
    idx = ((zb[..., :, None, None] * m + gy[..., None, :, None]) * ncols + gx[..., None, None, :])
    w3 = wts[..., 2, :, None, None] * wts[..., 1, None, :, None] * wts[..., 0, None, None, :]
    p = k_np.shape[0]
    idx = tf.reshape(idx, [b, p, width**3])
    w3 = tf.reshape(w3, [b, p, width**3])
    vals = tf.gather(tf.reshape(ext, [-1]), idx)            # (B, P, width^3) complex
    sl = tf.complex(tf.reduce_sum(tf.math.real(vals) * w3, -1), tf.reduce_sum(tf.math.imag(vals) * w3, -1))
    sl = tf.where(flip, tf.math.conj(sl), sl)
    # shift by +s is the phase ramp exp(-2 pi i k.s / n)
    phase = -2 * np.pi / n * tf.einsum("bj,pj->bp", shifts, k2)
    sl = sl * tf.complex(tf.cos(phase), tf.sin(phase))
    plane = tf.gather(tf.pad(sl, [[0, 0], [0, 1]]), where, axis=1)  # onto the rfft2 grid, 0 off band
    img = tf.signal.irfft2d(tf.reshape(plane, [b, n, n // 2 + 1]), fft_length=[n, n])
    return tf.roll(img, [n // 2, n // 2], axis=[1, 2])


def project(volumes, rotations, shifts=None, *, method: str = "fourier", pad: float = 1.0,
            correction: bool = True, width: int = 3) -> tf.Tensor:
    """Dispatch to :func:`project_fourier` (``method="fourier"``) or :func:`project_real`."""
    if method == "fourier":
        return project_fourier(volumes, rotations, shifts, pad=pad, correction=correction, width=width)
    if method == "real":
        return project_real(volumes, rotations, shifts)
    raise ValueError(f"unknown projector {method!r}; use 'fourier' or 'real'")
