"""Which way up a stack's particles are: whether their contrast must be inverted for the model.

The model's convention (model/forward.py, the simulator): an image as recorded, ``CTF * P`` with
the CTF of ``ctf.py`` (CTF(0) = -w, so protein is dark), or a projection ``P`` (protein bright) for
data without CTF parameters or already phase flipped. RELION's extraction usually inverts the
contrast (protein white); other pipelines do not; STAR files do not say which. So we look:
multiplied by the sign of its CTF (phase flipped), a particle of the model's convention is
brighter in its centre than in its background, because every low frequency then carries the
projection with a positive weight |CTF|. The statistic per image is the centre's mean minus the
background's, in units of the background's standard deviation; over a sample of images its mean
and standard error give a z-score, and only a clear one (|z| >= ``Z_DECISIVE``) decides.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cryovae_nb.ctf import compute_ctf, phase_flip
from cryovae_nb.volumes import as_images, radius_grid

Z_DECISIVE = 4.0        # a wrong verdict at this z needs a ~3e-5 one-sided chance
CENTRE_RADIUS = 0.25    # fractions of the box: the particle's core and the background beyond
BACKGROUND_RADIUS = 0.45


@dataclass(frozen=True)
class ContrastCheck:
    """The verdict: ``invert`` True/False, or None when ``n`` images could not tell (|z| small)."""

    invert: bool | None
    z: float
    n: int

    def describe(self) -> str:
        if self.invert is None:
            return (f"contrast undetermined from {self.n} image(s) (z = {self.z:+.1f}, need |z| >= "
                    f"{Z_DECISIVE:g}); pass --invert or --no-invert")
        way = ("inverted: the particles are the other way up from the model's convention" if self.invert
               else "kept: the particles already follow the model's convention")
        return f"contrast {way} (z = {self.z:+.1f} from {self.n} images)"


def centre_contrast(images, ctf_half=None) -> np.ndarray:
    """Per image: centre mean minus background mean over the background's standard deviation,
    after phase flipping by ``ctf_half`` (rfft layout, one per image; None: images as they are)."""
    x = as_images(images)
    if ctf_half is not None:
        x = phase_flip(x, ctf_half)
    box = x.shape[-1]
    r = radius_grid(box, 2)
    centre, background = x[..., r < CENTRE_RADIUS * box], x[..., r > BACKGROUND_RADIUS * box]
    sd = background.std(axis=-1, dtype=np.float64)
    d = centre.mean(axis=-1, dtype=np.float64) - background.mean(axis=-1, dtype=np.float64)
    return d / np.where(sd > 0, sd, 1.0)


def contrast_check(scores) -> ContrastCheck:
    """The verdict from ``centre_contrast`` scores of a sample of images."""
    d = np.asarray(scores, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return ContrastCheck(None, 0.0, int(d.size))
    se = d.std(ddof=1) / np.sqrt(d.size)
    z = float(d.mean() / se) if se > 0 else float(np.sign(d.mean()) * np.inf)
    invert = None if not abs(z) >= Z_DECISIVE else bool(z < 0)
    return ContrastCheck(invert, z, int(d.size))


def detect_contrast(particles, *, already_flipped: bool | None = None, sample: int = 512,
                    chunk: int = 64) -> ContrastCheck:
    """Look at up to ``sample`` images spread evenly over ``particles`` (an ``io.Particles``).
    ``already_flipped``: the images were phase flipped before (default: the STAR file's
    ``rlnCtfDataArePhaseFlipped``), so they are judged as they are."""
    n = len(particles)
    if already_flipped is None:
        already_flipped = particles.phase_flipped
    rows = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64)) if n else np.zeros(0, int)
    scores = []
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk]
        x = np.asarray(particles.images[idx], dtype=np.float32)
        ctf = None
        if particles.ctf is not None and not already_flipped:
            c = particles.ctf[idx]
            params = {f.name: np.asarray(getattr(c, f.name), dtype=np.float64) for f in dataclasses.fields(c)}
            if all(np.isfinite(v).all() for v in params.values()):
                ctf = compute_ctf(x.shape[-1], particles.pixel_size, **params, half=True)
        scores.append(centre_contrast(x, ctf))
    return contrast_check(np.concatenate(scores) if scores else [])
