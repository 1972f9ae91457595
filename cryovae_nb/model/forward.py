"""The forward model: volumes and poses -> the images the model predicts (one function, used by
the loss, the pose search and the model's reconstructions of images).

    project (and shift)  ->  [CTF]  ->  + offset inside the mask disc  ->  link

The projector (model/projectors.py, ``ModelConfig.projector``) projects and shifts in one go (the
shift is a phase ramp of the Fourier slice). The CTF goes between the shift and the offset: each
particle's CTF (:func:`ctf_spectrum` of the Batch's ``Optics``, computed once per batch on the
rfft grid) multiplies its projections' spectra (:func:`multiply_spectrum`), before the offset (a
constant background, not imaged by the microscope) and the link. ``ctf=None`` applies none (CTF-free
or phase-flipped data). The simulator (``synthetic.py``) forms its images with the independent
numpy reference projector and ``ctf.apply_ctf`` on purpose: it is the ground truth this model is
tested against (tests/test_ctf_model.py).
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from cryovae_nb.errors import ConfigError

# ModelConfig.link -> the map from logits (projection + offset) to the model's image, in the data's
# units: sigmoid for tanh-normalised [0, 1] images, identity for standardised ones
LINKS = {"sigmoid": tf.sigmoid, "identity": tf.identity}


def apply_link(logits, link: str) -> tf.Tensor:
    """The model's images (the data's units) from its logits (projections plus offset)."""
    if link not in LINKS:
        raise ConfigError(f"unknown link {link!r}; use one of {tuple(LINKS)}")
    return LINKS[link](logits)


def add_offset(images, offset, disc) -> tf.Tensor:
    """``(..., B, n, n)`` images plus the per-image ``offset`` ``(B,)`` inside ``disc`` ``(n, n)``."""
    return images + offset[:, None, None] * disc


def _ctf_grid(n: int):
    """(s^2, cos 2a, sin 2a) on the ``(n, n//2 + 1)`` rfft grid in cycles per pixel (a: the angle
    from the x axis). For an even box the x-Nyquist column takes its ky >= 0 values for ky < 0 too,
    as ``ctf._as_half`` does, so a filter keeps real images real (the column is its own mirror)."""
    f = np.fft.fftfreq(n)
    sx, sy = (g[:, : n // 2 + 1] for g in np.meshgrid(f, f))   # the full grid's first half, as ctf.py
    if n % 2 == 0 and n > 2:
        sx, sy = sx.copy(), sy.copy()
        sy[n // 2 + 1:, n // 2] = sy[1: n // 2, n // 2][::-1]
    a = np.arctan2(sy, sx)
    return tuple(tf.constant(x, tf.float32) for x in (sx * sx + sy * sy, np.cos(2 * a), np.sin(2 * a)))


def ctf_spectrum(optics, n: int) -> tf.Tensor:
    """Each particle's CTF on the ``(n, n//2 + 1)`` rfft grid of an ``n``-pixel image: ``(B, n,
    n//2 + 1)`` float32, from an `Optics` of ``(B,)`` parameters (its pixel size sets the grid's
    scale). The formula, units and signs of ``cryovae_nb.ctf.compute_ctf`` (tests check the two
    agree), written in TensorFlow so it is computed in the step, on the model's box."""
    f = {name: tf.cast(tf.reshape(getattr(optics, name), [-1, 1, 1]), tf.float32)
         for name in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast",
                      "phase_shift", "bfactor", "pixel_size")}
    s2_px, c2a, s2a = _ctf_grid(n)
    s2 = s2_px / tf.square(f["pixel_size"])                                    # 1/Å^2
    volts = f["voltage"] * 1e3
    lam = 12.2643247 / tf.sqrt(volts * (1.0 + 0.978466e-6 * volts))           # Å, relativistic
    theta = f["defocus_angle"] * (math.pi / 180.0)
    df = 0.5 * (f["defocus_u"] + f["defocus_v"]) + 0.5 * (f["defocus_u"] - f["defocus_v"]) * (
        c2a * tf.cos(2.0 * theta) + s2a * tf.sin(2.0 * theta))
    w = f["amp_contrast"]
    chi = (math.pi * lam * df * s2 - 0.5 * math.pi * f["cs"] * 1e7 * lam ** 3 * tf.square(s2)
           + f["phase_shift"] * (math.pi / 180.0) + tf.atan2(w, tf.sqrt(1.0 - w * w)))
    return -tf.sin(chi) * tf.exp(-0.25 * f["bfactor"] * s2)


def multiply_spectrum(images, ctf) -> tf.Tensor:
    """Real ``(..., n, n)`` images with their spectra multiplied by ``ctf`` ``(..., n, n//2 + 1)``
    (broadcast against the images' leading axes): what the microscope does to a projection."""
    n = images.shape[-1]
    spec = tf.signal.rfft2d(tf.cast(images, tf.float32)) * tf.cast(ctf, tf.complex64)
    return tf.signal.irfft2d(spec, fft_length=[n, n])


def forward_images(volumes, rotations, shifts=None, *, projector, offset=None, disc=None,
                   link: str | None = None, ctf=None, band: float | None = None) -> tf.Tensor:
    """The model's images of ``(B, n, n, n)`` volumes at ``(B, 3, 3)`` rotations and ``(B, 2)``
    shifts (px): ``(B, n, n)`` (``(B, K, 3, 3)`` rotations: ``(B, K, n, n)``, see
    ``projectors.Projector``).

    ``projector``: a ``projectors.Projector``; ``band`` low-passes the projections (cycles per box).
    ``ctf``: each particle's CTF ``(B, n, n//2 + 1)`` (:func:`ctf_spectrum`; broadcast over the
    K rotations of each), or None for none. ``offset`` ``(B,)`` is added
    inside ``disc`` ``(n, n)`` (None: no offset). ``link`` (a key of :data:`LINKS`) maps the
    result to the data's units; None returns the logits (the Bernoulli likelihood scores those).
    """
    images = projector(volumes, rotations, shifts, band=band)
    if ctf is not None:
        ctf = tf.convert_to_tensor(ctf)
        images = multiply_spectrum(images, ctf[:, None] if images.shape.rank == 4 else ctf)
    if offset is not None:
        images = add_offset(images, offset, disc)
    return images if link is None else apply_link(images, link)
