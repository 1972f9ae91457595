"""The forward model: volumes and poses -> the images the model predicts (one function, used by
the loss, the pose search and the model's reconstructions of images).

    project (and shift)  ->  [CTF]  ->  + offset inside the mask disc  ->  link

The projector (model/projectors.py, ``ModelConfig.projector``) projects and shifts in one go (the
shift is a phase ramp of the Fourier slice). The CTF goes between the shift and the offset, in the
``optics`` slot: per-particle CTF parameters (from the Batch) multiply the projection's spectrum
there, before the offset (a constant background, not imaged by the microscope) and the link.
``optics=None`` (the only value today) applies none. The simulator (``synthetic.py``) forms its
images with the independent numpy reference projector and ``ctf.apply_ctf`` on purpose: it is the
ground truth this model is tested against.
"""
from __future__ import annotations

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


def forward_images(volumes, rotations, shifts=None, *, projector, offset=None, disc=None,
                   link: str | None = None, optics=None, band: float | None = None) -> tf.Tensor:
    """The model's images of ``(B, n, n, n)`` volumes at ``(B, 3, 3)`` rotations and ``(B, 2)``
    shifts (px): ``(B, n, n)`` (``(B, K, 3, 3)`` rotations: ``(B, K, n, n)``, see
    ``projectors.Projector``).

    ``projector``: a ``projectors.Projector``; ``band`` low-passes the projections (cycles per box).
    ``optics``: the CTF slot (module docstring); must be None for now. ``offset`` ``(B,)`` is added
    inside ``disc`` ``(n, n)`` (None: no offset). ``link`` (a key of :data:`LINKS`) maps the
    result to the data's units; None returns the logits (the Bernoulli likelihood scores those).
    """
    images = projector(volumes, rotations, shifts, band=band)
    if optics is not None:
        raise NotImplementedError("the forward model has no CTF yet (optics must be None)")
    if offset is not None:
        images = add_offset(images, offset, disc)
    return images if link is None else apply_link(images, link)
