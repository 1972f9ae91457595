"""CTF against analytic zeros, an independently written reference form, and phase-flip identities."""
from __future__ import annotations

import numpy as np
import pytest

from cryovae_nb.ctf import apply_ctf, compute_ctf, electron_wavelength, phase_flip
from cryovae_nb.errors import InputError


def _reference_ctf(box, apix, du, dv, ang, kv, cs, w, ps=0.0, b=0.0):
    """cryoDRGN's published form (gamma with -phase_shift, sqrt(1-w^2) sin - w cos), written
    from scratch on the fftfreq grid with the relativistic wavelength from physical constants."""
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    v = kv * 1e3
    lam = h / np.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c))) * 1e10  # Å
    f = np.fft.fftfreq(box, apix)
    x, y = np.meshgrid(f, f)
    a = np.arctan2(y, x)
    s2 = x * x + y * y
    df = 0.5 * (du + dv + (du - dv) * np.cos(2 * (a - np.deg2rad(ang))))
    g = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * cs * 1e7 * lam ** 3 * s2 ** 2) - np.deg2rad(ps)
    return (np.sqrt(1 - w * w) * np.sin(g) - w * np.cos(g)) * np.exp(-b / 4 * s2)


def test_wavelength_matches_physical_constants():
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    v = np.array([80e3, 200e3, 300e3])
    lam = h / np.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c))) * 1e10
    np.testing.assert_allclose(electron_wavelength(v / 1e3), lam, rtol=2e-5)


def test_wavelength_known_values():
    # textbook relativistic wavelengths: 100 kV 0.0370 Å, 200 kV 0.0251 Å, 300 kV 0.0197 Å
    np.testing.assert_allclose(electron_wavelength([100, 200, 300]), [0.03701, 0.02508, 0.01969], atol=2e-5)


@pytest.mark.parametrize("params", [
    (15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, 0.0, 0.0),
    (12000.0, 9000.0, 33.0, 200.0, 2.0, 0.07, 0.0, 80.0),
    (20000.0, 18500.0, -160.4, 300.0, 0.01, 0.1, 45.0, 0.0),  # phase plate, relion31.star-like
])
def test_matches_independent_reference(params):
    box, apix = 64, 1.7
    got = compute_ctf(box, apix, *params)
    assert got.shape == (1, box, box) and got.dtype == np.float32
    # chi reaches ~100 rad here, so the 1e-5 relative difference between the wavelength
    # constants gives ~1e-3; a sign or convention error gives O(1)
    np.testing.assert_allclose(got[0], _reference_ctf(box, apix, *params), atol=5e-3)


def test_sign_convention_at_low_frequency():
    ctf = compute_ctf(128, 2.0, 20000, 20000, 0, 300, 2.7, 0.1)[0]
    assert ctf[0, 0] == pytest.approx(-0.1, abs=1e-6)  # CTF(0) = -amplitude contrast
    assert ctf[0, 1] < ctf[0, 0] < 0  # underfocus: more negative as s grows from 0


def test_zeros_at_analytic_frequencies():
    # Cs = 0, w = 0: CTF = -sin(pi lambda dz s^2), zero at s_k = sqrt(k / (lambda dz))
    box, apix, dz = 512, 1.0, 25000.0
    ctf = compute_ctf(box, apix, dz, dz, 0, 300, 0.0, 0.0)[0, 0, : box // 2 + 1]  # along +x
    s = np.arange(box // 2 + 1) / (box * apix)
    lam = electron_wavelength(300)
    zeros = np.sqrt(np.arange(1, 200) / (lam * dz))
    zeros = zeros[zeros < s[-1]]
    change = np.flatnonzero(np.sign(ctf[1:]) != np.sign(ctf[:-1])) + 1  # sign flips after s[0]
    change = change[change > 1]
    assert len(change) == len(zeros) >= 10
    for i, z in zip(change, zeros):  # each analytic zero lies in the bracket of a sign change
        assert s[i - 1] <= z <= s[i]


def test_astigmatism_rotates_with_the_angle():
    box, apix, kv, lam = 257, 1.0, 300.0, electron_wavelength(300.0)
    du, dv = 30000.0, 18000.0
    c = box // 2
    k = np.arange(1, c)
    s = k * np.sqrt(2) / (box * apix)  # diagonal grid points (k, k) and (k, -k)

    def first_zero(line):
        i = np.flatnonzero(np.sign(line[1:]) != np.sign(line[:-1]))[0]
        return s[i], s[i + 1]

    for ang, along_u, along_v in [(45.0, (1, 1), (1, -1)), (-45.0, (1, -1), (1, 1))]:
        ctf = np.fft.fftshift(compute_ctf(box, apix, du, dv, ang, kv, 0.0, 0.0)[0])
        for (sx, sy), d in ((along_u, du), (along_v, dv)):
            line = ctf[c + sy * k, c + sx * k]  # [y, x]
            lo, hi = first_zero(line)
            assert lo <= 1 / np.sqrt(lam * d) <= hi
    # rotating the angle by 90 degrees rotates the whole pattern by 90 degrees (odd box: exact grid)
    a = np.fft.fftshift(compute_ctf(box, apix, du, dv, 20.0, kv, 2.7, 0.1)[0])
    b = np.fft.fftshift(compute_ctf(box, apix, du, dv, 110.0, kv, 2.7, 0.1)[0])
    np.testing.assert_allclose(np.rot90(a), b, atol=1e-5)
    assert np.abs(a - b).max() > 0.5
    # swapping U and V is the same as turning the angle by 90 degrees
    np.testing.assert_allclose(compute_ctf(box, apix, dv, du, 110.0, kv, 2.7, 0.1),
                               compute_ctf(box, apix, du, dv, 20.0, kv, 2.7, 0.1), atol=1e-5)


def test_bfactor_envelope_and_batch_broadcast():
    box, apix = 48, 2.0
    du = np.array([10000.0, 15000.0, 22000.0])
    batch = compute_ctf(box, apix, du, du * 0.95, [0, 30, 60], 300, 2.7, 0.1, 0, [0, 50, 200])
    assert batch.shape == (3, box, box)
    for i in range(3):
        one = compute_ctf(box, apix, du[i], du[i] * 0.95, [0, 30, 60][i], 300, 2.7, 0.1, 0, [0, 50, 200][i])
        np.testing.assert_allclose(batch[i], one[0], atol=1e-6)
    plain = compute_ctf(box, apix, 15000, 15000, 0, 300, 2.7, 0.1)[0]
    damped = compute_ctf(box, apix, 15000, 15000, 0, 300, 2.7, 0.1, bfactor=100)[0]
    f = np.fft.fftfreq(box, apix)
    s2 = f[None, :] ** 2 + f[:, None] ** 2
    np.testing.assert_allclose(damped, plain * np.exp(-100 / 4 * s2), atol=1e-6)
    half = compute_ctf(box, apix, du, du, 0, 300, 2.7, 0.1, half=True)
    np.testing.assert_array_equal(half, compute_ctf(box, apix, du, du, 0, 300, 2.7, 0.1)[..., : box // 2 + 1])


def test_phase_flip_twice_is_identity_and_flip_gives_abs_ctf():
    rng = np.random.default_rng(0)
    box = 64
    images = rng.normal(size=(3, box, box)).astype(np.float32)
    ctf = compute_ctf(box, 1.5, [9000, 14000, 21000], [8000, 14000, 20000], 10, 300, 2.7, 0.1)
    assert np.all(ctf != 0)  # so "identity on |CTF| > 0 bins" is the identity here
    twice = phase_flip(phase_flip(images, ctf), ctf)
    np.testing.assert_allclose(twice, images, atol=1e-4)
    once = phase_flip(images, ctf)
    assert np.abs(once - images).max() > 0.5
    # flipping a CTF-modulated image leaves |CTF| in Fourier space: phases corrected
    corrupted = apply_ctf(images, ctf)
    np.testing.assert_allclose(phase_flip(corrupted, ctf), apply_ctf(images, np.abs(ctf)), atol=1e-4)
    # direct check of apply_ctf in Fourier space (off the Nyquist row/column, where +-1/2 alias)
    keep = np.arange(box) != box // 2
    np.testing.assert_allclose(np.fft.fft2(corrupted)[:, keep][..., keep],
                               (np.fft.fft2(images) * ctf)[:, keep][..., keep], atol=2e-3)


def test_zero_ctf_bins_are_removed():
    images = np.random.default_rng(1).normal(size=(1, 32, 32)).astype(np.float32)
    ctf = np.ones((1, 32, 32), np.float32)
    ctf[0, 0, 0] = 0  # kill the mean
    out = phase_flip(images, ctf)
    assert abs(out.mean()) < 1e-6 and abs(images.mean()) > 1e-3


def test_bad_inputs():
    with pytest.raises(InputError, match="box 32"):
        phase_flip(np.zeros((1, 32, 32)), np.ones((1, 16, 16)))
    with pytest.raises(InputError, match="pixel size"):
        compute_ctf(32, 0.0, 1e4, 1e4, 0, 300, 2.7, 0.1)
    with pytest.raises(InputError, match="amplitude contrast"):
        compute_ctf(32, 1.0, 1e4, 1e4, 0, 300, 2.7, 1.5)
