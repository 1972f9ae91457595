"""Contrast transfer function (thesis §2.4.4, eq. 2.55-2.58) and CTF correction by phase flipping.

The thesis writes CTF = sin(W) with W the Scherzer aberration phase (eq. 2.57) and an envelope
exp(-2B theta^2) (eq. 2.56). We implement the form RELION, CTFFIND and cryoDRGN use, because the
defocus/Cs/amplitude-contrast numbers users bring come from those programs:

    s          spatial frequency (1/Å), at angle a from the image x axis
    lambda     = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))   electron wavelength in Å, V in volts
                 (relativistically corrected)
    df(a)      = (du + dv)/2 + (du - dv)/2 * cos(2 (a - angle))        astigmatic defocus, Å
    chi(s)     = pi lambda df s^2 - pi/2 Cs lambda^3 s^4 + phase_shift + atan(w / sqrt(1 - w^2))
    CTF(s)     = -sin(chi(s)) * exp(-B s^2 / 4)

Sign: CTF(0) = -w (minus the amplitude contrast), and at small s an underfocused image (df > 0)
has a negative CTF. This equals cryoDRGN's ``sqrt(1-w^2) sin(g) - w cos(g)`` with
``g = -chi + atan(w / sqrt(1-w^2))`` (tests/test_ctf.py checks it): the contrast of an image as
recorded (protein dark), which the simulator writes and the CTF model (model/forward.py) expects.
RELION writes ``-sin(gamma)`` too, but its gamma is -chi (it negates the defocus internally), so
its CTF is ours negated, matching its extracted particles, whose contrast it inverts (protein
white): such particles are inverted for the CTF model, which preprocessing detects (contrast.py).
Defocus is positive for underfocus (RELION's rlnDefocusU/V), Cs in mm, phase shift and the
astigmatism angle in degrees, B in Å^2.

Grids are on the *unshifted* FFT layout (np.fft.fftfreq order), shape (box, box) indexed [y, x];
``half=True`` gives the (box, box//2 + 1) rfft layout, which is all a real image needs because the
CTF is centrosymmetric (CTF(-s) = CTF(s)).
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from cryovae_nb.errors import InputError


def electron_wavelength(voltage_kv) -> np.ndarray:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def _freq_grid(box: int, pixel_size: float, half: bool):
    """(s^2, cos 2a, sin 2a) on the FFT grid; a = angle of (sx, sy) from the x axis."""
    fy = np.fft.fftfreq(box, d=pixel_size)
    fx = np.fft.rfftfreq(box, d=pixel_size) if half else fy
    sx, sy = np.meshgrid(fx, fy)  # [y, x]
    s2 = sx * sx + sy * sy
    a = np.arctan2(sy, sx)
    return s2, np.cos(2 * a), np.sin(2 * a)


def compute_ctf(box: int, pixel_size: float, defocus_u, defocus_v, defocus_angle, voltage, cs,
                amp_contrast, phase_shift=0.0, bfactor=0.0, *, half: bool = False) -> np.ndarray:
    """CTF for k particles -> float32 (k, box, box) (or (k, box, box//2+1) with ``half``).

    Every parameter may be a scalar or a length-k array (they broadcast); see the module
    docstring for units and the sign convention.
    """
    if box < 1 or not np.isfinite(pixel_size) or pixel_size <= 0:
        raise InputError(f"compute_ctf: need box >= 1 and a positive pixel size, got box={box}, "
                         f"pixel_size={pixel_size}")
    params = np.broadcast_arrays(*(np.atleast_1d(np.asarray(p, dtype=np.float64)) for p in
                                   (defocus_u, defocus_v, defocus_angle, voltage, cs, amp_contrast,
                                    phase_shift, bfactor)))
    du, dv, ang, kv, cs_mm, w, ps, b = (p.reshape(-1) for p in params)
    if np.any((w < 0) | (w >= 1)):
        raise InputError("compute_ctf: amplitude contrast must lie in [0, 1)")
    lam = electron_wavelength(kv)
    s2, c2a, s2a = _freq_grid(box, float(pixel_size), half)
    # Per-particle scalars, then one fused pass over the grid (float64: chi reaches ~100 rad).
    mean_df = 0.5 * (du + dv)
    half_ast = 0.5 * (du - dv)
    th = np.deg2rad(ang)
    k1 = np.pi * lam                              # * df * s^2
    k2 = -0.5 * np.pi * cs_mm * 1e7 * lam ** 3    # * s^4 (Cs mm -> Å)
    k0 = np.deg2rad(ps) + np.arctan2(w, np.sqrt(1 - w * w))
    col = (slice(None), None, None)
    df = mean_df[col] + half_ast[col] * (c2a * np.cos(2 * th)[col] + s2a * np.sin(2 * th)[col])
    chi = k1[col] * df * s2 + k2[col] * (s2 * s2) + k0[col]
    ctf = -np.sin(chi)
    if np.any(b != 0):
        ctf *= np.exp(-b[col] / 4.0 * s2)
    return ctf.astype(np.float32)


def _as_half(ctf: np.ndarray, box: int) -> np.ndarray:
    """Accept a CTF on the full (box, box) or the rfft (box, box//2+1) grid; return the rfft one.

    For an even box the last rfft column holds x frequency +-1/2 at once, and a real image needs
    its values at ky and -ky to be complex conjugates. An astigmatic CTF differs there, which
    would silently drop those bins; we use the ky >= 0 values for both halves so a filter keeps
    real images real and two filters compose (phase flip twice = identity).
    """
    ctf = np.asarray(ctf, dtype=np.float32)
    if ctf.shape[-2:] == (box, box):
        ctf = ctf[..., : box // 2 + 1]
    elif ctf.shape[-2:] != (box, box // 2 + 1):
        raise InputError(f"CTF grid of shape {ctf.shape} does not match images of box {box}")
    if box % 2 == 0 and box > 2:
        ctf = ctf.copy()
        ctf[..., box // 2 + 1:, box // 2] = ctf[..., 1: box // 2, box // 2][..., ::-1]
    return ctf


def _filter(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    box = images.shape[-1]
    f = scipy.fft.rfft2(images)
    f *= _as_half(kernel, box)
    return scipy.fft.irfft2(f, s=images.shape[-2:]).astype(np.float32, copy=False)


def apply_ctf(images: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    """Multiply the images' Fourier transforms by the CTF (what the microscope does)."""
    return _filter(images, ctf)


def phase_flip(images: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    """Flip the sign of the Fourier components where the CTF is negative (bins with CTF = 0 -> 0).

    The simplest CTF correction: phases come out right, amplitudes keep the |CTF| modulation.
    """
    return _filter(images, np.sign(np.asarray(ctf, dtype=np.float32)))
