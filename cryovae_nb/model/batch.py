"""`Batch`: what the model needs of a batch of particles, from the loader to the loss, and
`Optics`, the per-particle CTF parameters it carries for the CTF-aware forward model.

One object instead of a positional ``(images, rotations, shifts)`` tuple, so that what the forward
model needs per particle (its CTF parameters in ``optics``) travels without changing every
signature on the way. TensorFlow-free: the fields are whatever arrays the caller has (numpy in the
loader, tensors inside a compiled step).

Why parameters rather than a precomputed ``(B, n, n)`` CTF image: nine numbers per particle move
through the loader, the prefetch queue and Horovod instead of n^2 floats, and the model computes
the CTF on its own grid (``model/forward.py: ctf_spectrum``), where it broadcasts over the K poses
the search projects per image.

tf.function traces a Batch as a nested structure (TensorFlow's ``__tf_flatten__`` protocol): its
fields that are not None are the tensors, and which fields are None is part of the structure, so a
known-pose batch and a learned-pose batch get their own traces, as the separate arguments did.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_FIELDS = ("images", "rotations", "shifts", "indices", "optics")
# Optics' fields, in RELION's units (cryovae_nb/ctf.py's docstring has the formula and the signs)
OPTICS_FIELDS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast",
                 "phase_shift", "bfactor", "pixel_size")


@dataclass(frozen=True)
class Optics:
    """Per-particle CTF parameters, each a ``(B,)`` array (float32 in the loader): defocus U/V
    (Å, positive underfocus), astigmatism angle (degrees), voltage (kV), Cs (mm), amplitude
    contrast, phase shift (degrees), B-factor (Å^2) and the pixel size (Å) of the images as the
    model sees them (after preprocessing's Fourier crop)."""

    defocus_u: Any
    defocus_v: Any
    defocus_angle: Any
    voltage: Any
    cs: Any
    amp_contrast: Any
    phase_shift: Any
    bfactor: Any
    pixel_size: Any

    def __getitem__(self, idx) -> "Optics":
        """The particles at ``idx`` (numpy fields)."""
        return Optics(*(getattr(self, name)[idx] for name in OPTICS_FIELDS))

    def __len__(self) -> int:
        return len(self.defocus_u)

    def __tf_flatten__(self):
        return (), tuple(getattr(self, name) for name in OPTICS_FIELDS)

    @classmethod
    def __tf_unflatten__(cls, metadata, components):
        return cls(*components)



@dataclass(frozen=True)
class Batch:
    images: Any                 # (B, n, n) float32, normalised as in training
    rotations: Any = None       # (B, 3, 3) known poses; None: the model finds the poses
    shifts: Any = None          # (B, 2) px, with known rotations (None there: no shift)
    indices: Any = None         # (B,) particle rows of the data; None for images not from a dataset
    optics: Any = None          # `Optics` (B,) each: the CTF of each particle; None: no CTF

    @property
    def known_poses(self) -> bool:
        return self.rotations is not None

    def replace(self, **changes) -> "Batch":
        return dataclasses.replace(self, **changes)

    # -- TensorFlow's nest protocol (tf.nest, tf.function) -----------------------------------------
    def __tf_flatten__(self):
        present = tuple(name for name in _FIELDS if getattr(self, name) is not None)
        return present, tuple(getattr(self, name) for name in present)

    @classmethod
    def __tf_unflatten__(cls, present, components):
        return cls(**dict(zip(present, components)))
