"""Differentiable projectors: volume batch + pose batch -> image batch (TensorFlow).

Both follow the convention of ``cryovae_nb.geometry`` (read its docstring): volumes ``V[z, y, x]``
with coordinates centred on voxel ``n // 2``; the image in pose ``(R, s)`` is
``I(x, y) = sum_z V(R @ (x - sx, y - sy, z))``.

* :func:`project_real` -- the real-space path: rotate the sampling grid, trilinear gather (zero
  outside the box), sum over z. Exact to trilinear interpolation and slow (8 n^3 gathers per image).
* :func:`project_fourier` -- the fast path, by the central slice theorem: the projection's 2D
  spectrum is the 3D spectrum sampled on the plane ``R @ (kx, ky, 0)``. One rfft3d per volume,
  interpolation of the ~pi n^2 / 8 complex samples of the half plane within radius n/2 (Hermitian
  symmetry covers ``kx < 0``; frequencies beyond n/2 are dropped), the shift as a phase ramp, one
  irfft2d. The interpolation kernel is a Kaiser-Bessel bump ``width`` taps wide per axis (default
  3; 2 = trilinear). Interpolating in Fourier space multiplies real space by the kernel's
  transform, which :func:`gridding_correction` divides out beforehand; what remains is aliasing.

  Accuracy (relative L2 over smooth masked volumes at random poses, n = 32..40; see
  tests/test_model.py and ``benchmarks/train_throughput.py --accuracy``): vs the exact projection,
  project_real is 2.3 % off; trilinear Fourier 8.5-10 % (pad 1), 2-3.5 % (pad 2, 8x the FFT);
  Kaiser-Bessel width 3: 0.8-1 %, width 4: 0.2 % at pad 1 -- which leaves the fast projector
  ~2.4 % from project_real, i.e. project_real's own interpolation error.

The model picks one through the registry :data:`PROJECTORS` (``ModelConfig.projector``):
:func:`make_projector` gives an object with the :class:`Projector` interface. (The numpy ground
truth these are tested against is ``cryovae_nb.projection.project_reference``.)
"""
from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np
import tensorflow as tf

from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.geometry import centred_coords


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
        raise ConfigError(f"Fourier kernel width must be one of {KERNEL_WIDTHS}, got {width!r}")


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
    s = 1.0 / _kernel_transform(width, centred_coords(n) / padded)
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).astype(np.float32)


def _as_inputs(volumes, rotations, shifts):
    volumes = tf.convert_to_tensor(volumes, tf.float32)
    rotations = tf.convert_to_tensor(rotations, tf.float32)
    n = volumes.shape[-1]
    if n is None or volumes.shape.rank != 4 or volumes.shape[1:] != (n, n, n):
        raise InputError(f"volumes must have shape (B, n, n, n), got {volumes.shape}")
    if shifts is None:
        shifts = tf.zeros(tf.stack([tf.shape(volumes)[0], 2]), tf.float32)
    shifts = tf.convert_to_tensor(shifts, tf.float32)
    return volumes, rotations, shifts, n


def project_real(volumes, rotations, shifts=None) -> tf.Tensor:
    """Real-space projector: ``(B, n, n, n)`` volumes, ``(B, 3, 3)`` rotations, ``(B, 2)`` shifts (px)
    -> ``(B, n, n)`` images. Trilinear interpolation, zero outside the box."""
    volumes, rotations, shifts, n = _as_inputs(volumes, rotations, shifts)
    b = tf.shape(volumes)[0]
    c = centred_coords(n)
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
def _slice_frequencies(n: int, radius: float | None = None):
    """Image frequencies (kx, ky) in cycles per box on the rfft2 half plane (kx >= 0) within
    ``radius`` (default n/2; beyond it the slice is dropped) as ``(P, 2)``, and for every cell of the
    ``(n, n//2 + 1)`` rfft2 grid its row in that list, or ``P`` (a zero) outside the band."""
    ky, kx = np.meshgrid(np.fft.fftfreq(n) * n, np.arange(n // 2 + 1, dtype=np.float64), indexing="ij")
    k = np.stack([kx.ravel(), ky.ravel()], -1)
    radius = n / 2 if radius is None else radius
    band = (k**2).sum(-1) <= radius * radius
    where = np.full(len(k), band.sum(), np.int32)
    where[band] = np.arange(band.sum())
    return k[band].astype(np.float32), where


@lru_cache(maxsize=8)
def _tap_assembly(width: int) -> np.ndarray:
    """0/1 matrix ``(width + 2 width^2, width^3)``: tap (tz, ty, tx) (flattened in that order) sums
    the x part of tx, the y part of (tx, ty) and the z part of (tx, tz) -- see project_fourier."""
    w = width
    out = np.zeros((w + 2 * w * w, w, w, w))
    for tz in range(w):
        for ty in range(w):
            for tx in range(w):
                out[tx, tz, ty, tx] = 1
                out[w + tx * w + ty, tz, ty, tx] = 1
                out[w + w * w + tx * w + tz, tz, ty, tx] = 1
    return out.reshape(w + 2 * w * w, -1)


def project_fourier(volumes, rotations, shifts=None, *, pad: float = 1.0, correction: bool = True,
                    width: int = 3, band: float | None = None) -> tf.Tensor:
    """Fast projector by the central slice theorem; same arguments and result as :func:`project_real`.

    ``band`` (cycles per box, default n/2) low-passes the projections: only the frequencies within
    it are sliced, so a low band costs a fraction of the full one (~(2 band / n)^2).

    ``rotations`` may also be ``(B, K, 3, 3)`` (with ``shifts`` ``(B, 2)`` or ``(B, K, 2)``): K poses
    of each volume, ``(B, K, n, n)`` images, one 3D FFT per volume.

    ``width`` is the interpolation kernel in Fourier space: 2 = trilinear (8 taps per frequency),
    3..6 = Kaiser-Bessel (``width^3`` taps), far more accurate at the same FFT cost. ``pad`` >= 1
    zero-pads the volume to ``round(pad * n)`` before the 3D FFT (finer Fourier grid, ~pad^3 the FFT
    cost). ``correction`` divides out the kernel's apodisation first (pass ``False`` if the volumes
    were already multiplied by :func:`gridding_correction` ``(n, padded, width)``).
    """
    volumes, rotations, shifts, n = _as_inputs(volumes, rotations, shifts)
    per_volume = None
    if rotations.shape.rank == 4:
        per_volume = rotations.shape[1] or tf.shape(rotations)[1]  # unknown when traced loosely
        if shifts.shape.rank == 2:
            shifts = tf.repeat(shifts[:, None], per_volume, axis=1)
        shifts = tf.reshape(shifts, [-1, 2])
    spectrum = volume_spectrum(volumes, pad=pad, correction=correction, width=width)
    sl = tf.reshape(sample_slices(spectrum, rotations, n, width=width, band=band), [tf.shape(shifts)[0], -1])
    b = tf.shape(sl)[0]
    # onto the (n, n//2 + 1) rfft2 grid (zero beyond the band); shift by +s is the phase ramp
    # exp(-2 pi i k.s / n), separable in kx and ky
    _, where = _slice_frequencies(n, band)
    plane = tf.reshape(tf.gather(tf.pad(sl, [[0, 0], [0, 1]]), where, axis=1), [b, n, n // 2 + 1])
    img = tf.signal.irfft2d(plane * shift_phase(n, shifts), fft_length=[n, n])
    img = tf.roll(img, [n // 2, n // 2], axis=[1, 2])
    return img if per_volume is None else tf.reshape(img, [-1, per_volume, n, n])


def volume_spectrum(volumes, *, pad: float = 1.0, correction: bool = True, width: int = 3) -> tf.Tensor:
    """What :func:`sample_slices` reads: the rfft3d ``(B, m, m, m//2 + 1)`` of ``(B, n, n, n)``
    volumes zero-padded to ``m = round(pad * n)`` (divided by the kernel's apodisation first with
    ``correction``; rolled to the centre voxel for odd m). One per volume, however many slices."""
    _check_width(width)
    volumes = tf.convert_to_tensor(volumes, tf.float32)
    n = volumes.shape[-1]
    m = max(n, int(round(pad * n)))
    if width > m:  # the Hermitian mirror in sample_slices assumes a footprint narrower than the grid
        raise ConfigError(f"Fourier kernel width {width} exceeds the {m}-point grid")
    if correction:
        volumes = volumes * gridding_correction(n, m, width)
    if m > n:
        lo = m // 2 - n // 2  # keeps the centre voxel on the padded grid's centre
        volumes = tf.pad(volumes, [[0, 0]] + [[lo, m - n - lo]] * 3)
    # The slice needs the spectrum of the volume about its centre voxel c = m // 2: the DFT of the
    # volume rolled by -c. For even m that is the plain DFT times (-1)^(kx + ky + kz), applied to
    # the interpolation taps in sample_slices instead of rolling the whole volume.
    return rfft3d(volumes if m % 2 == 0 else tf.roll(volumes, [-(m // 2)] * 3, axis=[1, 2, 3]))


def sample_slices(spectrum, rotations, n: int, *, width: int = 3, band: float | None = None) -> tf.Tensor:
    """The central slices of volumes at ``rotations``: ``(B, 3, 3)`` -> ``(B, P)`` complex, or
    ``(B, K, 3, 3)`` (K poses of each volume) -> ``(B, K, P)``, read from their
    :func:`volume_spectrum` ``spectrum`` (box ``n``) at the ``P`` frequencies of
    ``_slice_frequencies(n, band)`` (the rfft2 half plane within ``band`` cycles per box, in rfft2
    order, the zero frequency first). They are the spectra of the projections centred on pixel 0
    (:func:`project_fourier` adds the shift and the roll to pixel n // 2).

    Why apart from :func:`project_fourier`: the pose search scores candidates on these components
    directly (Parseval), so it needs neither the inverse transform per candidate nor the transform
    back, and reuses one spectrum per volume over its rounds."""
    _check_width(width)
    rotations = tf.convert_to_tensor(rotations, tf.float32)
    m = spectrum.shape[1]
    per_volume = None
    if rotations.shape.rank == 4:
        per_volume = rotations.shape[1] or tf.shape(rotations)[1]
        rotations = tf.reshape(rotations, [-1, 3, 3])
    b = tf.shape(rotations)[0]
    even = m % 2 == 0
    k_np, _ = _slice_frequencies(n, band)
    p = k_np.shape[0]
    k3 = np.pad(k_np, [[0, 0], [0, 1]]) * (m / n)           # plane points in m-grid units
    q = [tf.einsum("bj,pj->bp", rotations[:, i], k3) for i in range(3)]  # x, y, z: (B, P) each
    flip = q[0] < 0
    q = tf.stack(q, -1) * tf.where(flip, -1.0, 1.0)[..., None]  # F(-q) = conj F(q): qx >= 0
    # taps g0 .. g0 + width - 1 on each axis, t = fractional position in [0, 1)
    g0 = tf.floor(q - width / 2) + 1
    t = q - g0 - (width / 2 - 1)
    # tap weights (B, P, 3, width) = powers of t times the polynomial coefficients: as a matmul,
    # XLA keeps the result instead of re-evaluating the polynomial inside each of the width^3 taps
    coef = _tap_polynomials(width)
    if even:
        coef = coef * (-1.0) ** np.arange(width)            # the (-1)^k of the tap's offset ...
    powers = tf.stack([tf.ones_like(t)] + [t**d for d in range(1, 9)], -1)
    wts = tf.einsum("bpad,dj->bpaj", powers, coef.astype(np.float32))
    # Tap coordinates. rfft3d holds kx = 0 .. m//2; a tap at kx < 0 or kx > m//2 reads the
    # Hermitian mirror F(k) = conj F(-k) (indices mod m), so no extended copy is ever built.
    taps = np.arange(width, dtype=np.float32)
    gx = g0[..., 0, None] + taps                            # (B, P, width)
    mirror = (gx < 0) | (gx > m // 2)
    sx = tf.where(mirror, -1.0, 1.0)
    x = tf.where(gx < 0, -gx, tf.where(gx > m // 2, m - gx, gx))
    y = tf.math.floormod(sx[..., :, None] * (g0[..., 1, None, None] + taps), m)  # (B, P, tap x, tap y)
    z = tf.math.floormod(sx[..., :, None] * (g0[..., 2, None, None] + taps), m)
    # The flat offset of every tap, x + half * (y + m * z), assembled by a matmul with a 0/1
    # matrix: XLA then computes it once, instead of redoing the modular arithmetic inside the
    # gather and again inside its gradient (exact: integers below 2^24 in float32).
    half = m // 2 + 1
    parts = tf.concat([x, tf.reshape(y * half, [b, p, -1]), tf.reshape(z * (m * half), [b, p, -1])], -1)
    dtype = tf.float32 if m * m * half < 2**24 else tf.float64
    idx = tf.einsum("bpf,ft->bpt", tf.cast(parts, dtype), _tap_assembly(width).astype(dtype.as_numpy_dtype))
    volume_of = tf.range(b) if per_volume is None else tf.range(b) // per_volume
    idx = tf.cast(idx, tf.int32) + (volume_of * (m * m * half))[:, None, None]
    w3 = tf.reshape(wts[..., 2, :, None, None] * wts[..., 1, None, :, None] * wts[..., 0, None, None, :],
                    [b, p, width**3])
    w3_im = w3 * tf.tile(sx, [1, 1, width * width])          # conj on mirrored taps
    vals = tf.gather(tf.reshape(spectrum, [-1]), idx)       # (B, P, width^3) complex
    sl = tf.complex(tf.reduce_sum(tf.math.real(vals) * w3, -1), tf.reduce_sum(tf.math.imag(vals) * w3_im, -1))
    if even:                                                # ... and of the footprint's first tap
        sl = sl * tf.complex(1 - 2 * tf.math.floormod(tf.reduce_sum(g0, -1), 2), 0.0)
    sl = tf.where(flip, tf.math.conj(sl), sl)
    return sl if per_volume is None else tf.reshape(sl, [-1, per_volume, p])


def shift_phase(n: int, shifts) -> tf.Tensor:
    """``(B, n, n//2 + 1)`` complex: the rfft2 phase ramp exp(-2 pi i k.s / n) that moves ``n x n``
    images by ``shifts`` ``(B, 2)`` px (x, y); separable in kx and ky."""
    def ramp(freqs, s):
        a = (-2 * np.pi / n) * s[:, None] * freqs.astype(np.float32)
        return tf.complex(tf.cos(a), tf.sin(a))

    return (ramp(np.fft.fftfreq(n) * n, shifts[:, 1])[:, :, None]
            * ramp(np.arange(n // 2 + 1), shifts[:, 0])[:, None, :])


@lru_cache(maxsize=16)
def _band_mask(n: int, band: float) -> np.ndarray:
    """``(n, n//2 + 1)`` complex 0/1: the rfft2 cells within ``band`` (those project_fourier slices)."""
    k, where = _slice_frequencies(n, band)
    return (where < len(k)).reshape(n, n // 2 + 1).astype(np.complex64)


def lowpass(images, band: float, shifts=None) -> tf.Tensor:
    """``(..., n, n)`` images keeping only the frequencies within ``band`` cycles per box (a sharp
    disc, as ``project_fourier(..., band=band)`` does to its projections); ``shifts`` ``(B, 2)`` px
    (for ``(B, n, n)`` images) also moves each image by that much (periodically)."""
    images = tf.convert_to_tensor(images, tf.float32)
    n = images.shape[-1]
    spec = tf.signal.rfft2d(images) * _band_mask(n, float(band))
    if shifts is not None:
        spec = spec * shift_phase(n, tf.convert_to_tensor(shifts, tf.float32))
    return tf.signal.irfft2d(spec, fft_length=[n, n])


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


def band_spectrum(images, band: float) -> tf.Tensor:
    """``(..., n, n)`` real images -> ``(..., c)`` complex: their Fourier components within ``band``
    cycles per box (``band_components``' order; the zero frequency left out)."""
    n = images.shape[-1]
    idx = tf.constant(band_components(n, float(band))[0])
    spec = tf.signal.rfft2d(tf.cast(images, tf.float32))
    return tf.gather(tf.reshape(spec, tf.concat([tf.shape(spec)[:-2], [-1]], 0)), idx, axis=-1)


class Projector(Protocol):
    """What the model needs of a projector (built from a :class:`ModelConfig` by :func:`make_projector`).

    ``projector(volumes, rotations, shifts=None, band=None)``: ``(B, n, n, n)`` volumes at ``(B, 3, 3)``
    rotations and ``(B, 2)`` shifts (px) -> ``(B, n, n)`` images, moved by the shifts (the shift is
    part of the projection: a phase ramp in Fourier space, a moved grid in real space);
    ``(B, K, 3, 3)`` rotations (``shifts`` ``(B, 2)`` or ``(B, K, 2)``) give ``(B, K, n, n)``: K
    poses of each volume. ``band`` (cycles per box) low-passes the images to the sharp disc
    :func:`lowpass` keeps (the pose search compares images at low bands).

    ``projector.project_features(volumes, rotations, shifts, band=...)``: the same, band-limited,
    where speed matters more than accuracy (the linearised latent posterior's d + 1 projections
    per image).
    """

    def __call__(self, volumes, rotations, shifts=None, *, band: float | None = None) -> tf.Tensor: ...

    def project_features(self, volumes, rotations, shifts=None, *, band: float) -> tf.Tensor: ...

    def spectrum(self, volumes, *, features: bool = False): ...

    def band_slices(self, spectrum, rotations, *, band: float, features: bool = False) -> tf.Tensor: ...


@lru_cache(maxsize=16)
def _band_slice_layout(n: int, band: float) -> tuple[float, np.ndarray, np.ndarray]:
    """How :meth:`FourierProjector.band_slices` reads :func:`band_components`' cells from
    :func:`sample_slices`: the radius to slice at (a hair above ``band``: the two lists decide a
    cell on the band's edge by float rounding of different frequency tables), each cell's row in
    that slice list, and exp(-2 pi i k.(n//2) / n) there, what moving a projection centred on
    pixel 0 to pixel ``n // 2`` multiplies its spectrum by ((-1)^(kx + ky) for even n)."""
    radius = band + 1e-6
    k, where = _slice_frequencies(n, radius)
    rows = where[band_components(n, band)[0]]
    if np.any(rows >= len(k)):
        raise ConfigError(f"band {band} of a {n}-px box: its components are not all sliced")
    kk = k[rows].astype(np.float64)
    phase = np.exp(-2j * np.pi * (kk[:, 0] + kk[:, 1]) * (n // 2) / n).astype(np.complex64)
    return radius, rows.astype(np.int32), phase


class FourierProjector:
    """:func:`project_fourier` with the configured padding, kernel and gridding correction."""

    def __init__(self, config):
        self.box = config.architecture.box
        self.pad, self.width = config.architecture.fourier_pad, config.architecture.fourier_kernel_width
        self.correction = config.architecture.gridding_correction

    def __call__(self, volumes, rotations, shifts=None, *, band: float | None = None) -> tf.Tensor:
        return project_fourier(volumes, rotations, shifts, pad=self.pad, correction=self.correction,
                               width=self.width, band=band)

    def project_features(self, volumes, rotations, shifts=None, *, band: float) -> tf.Tensor:
        # trilinear taps on the unpadded grid: these are features, not the loss
        return project_fourier(volumes, rotations, shifts, pad=1.0, width=2, band=band)

    def spectrum(self, volumes, *, features: bool = False):
        """What :meth:`band_slices` reads for ``(B, n, n, n)`` volumes: their 3D spectra (one FFT
        each, however many poses are sliced); ``features``: for the trilinear feature path."""
        if features:
            return volume_spectrum(volumes, pad=1.0, width=2)
        return volume_spectrum(volumes, pad=self.pad, correction=self.correction, width=self.width)

    def band_slices(self, spectrum, rotations, *, band: float, features: bool = False) -> tf.Tensor:
        """The band's Fourier components (zero frequency left out, ``pose_search.band_components``'
        order) of the projections at ``(B, 3, 3)`` or ``(B, K, 3, 3)`` ``rotations``, unshifted:
        ``(B, c)`` / ``(B, K, c)`` complex, equal to the rfft2 of :meth:`__call__`'s images at those
        components, without forming the images (the pose search scores these directly)."""
        radius, rows, phase = _band_slice_layout(self.box, float(band))
        sl = sample_slices(spectrum, rotations, self.box, width=2 if features else self.width, band=radius)
        return tf.gather(sl, rows, axis=-1) * tf.constant(phase)


class RealProjector:
    """:func:`project_real` (the slow reference); a band low-passes its images by :func:`lowpass`."""

    def __init__(self, config):
        self.box = config.architecture.box

    def __call__(self, volumes, rotations, shifts=None, *, band: float | None = None) -> tf.Tensor:
        if band is not None:
            return lowpass(self(volumes, rotations, shifts), band)
        rotations = tf.convert_to_tensor(rotations, tf.float32)
        if rotations.shape.rank == 4:  # K poses per volume: one real-space projection each
            k = rotations.shape[1] or tf.shape(rotations)[1]
            shifts = (tf.zeros([tf.shape(volumes)[0], 2]) if shifts is None
                      else tf.convert_to_tensor(shifts, tf.float32))
            shifts = tf.repeat(shifts[:, None], k, 1) if shifts.shape.rank == 2 else shifts
            proj = project_real(tf.repeat(volumes, k, axis=0), tf.reshape(rotations, [-1, 3, 3]),
                                tf.reshape(shifts, [-1, 2]))
            return tf.reshape(proj, [-1, k, self.box, self.box])
        return project_real(volumes, rotations, shifts)

    def project_features(self, volumes, rotations, shifts=None, *, band: float) -> tf.Tensor:
        return self(volumes, rotations, shifts, band=band)

    def spectrum(self, volumes, *, features: bool = False):
        return tf.convert_to_tensor(volumes, tf.float32)  # real space has no spectrum to share

    def band_slices(self, spectrum, rotations, *, band: float, features: bool = False) -> tf.Tensor:
        return band_spectrum(self(spectrum, rotations, band=band), band)


# ModelConfig.projector -> projector class (config.PROJECTORS lists the same names without TensorFlow)
PROJECTORS = {"fourier": FourierProjector, "real": RealProjector}


def make_projector(config) -> Projector:
    """The projector ``config.architecture.projector`` names, set up from ``config`` (a :class:`ModelConfig`)."""
    if config.architecture.projector not in PROJECTORS:
        raise ConfigError(f"unknown projector {config.architecture.projector!r}; use one of {tuple(PROJECTORS)}")
    return PROJECTORS[config.architecture.projector](config)
