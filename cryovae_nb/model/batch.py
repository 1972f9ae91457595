"""`Batch`: what the model needs of a batch of particles, from the loader to the loss.

One object instead of a positional ``(images, rotations, shifts)`` tuple, so that what a forward
model will need per particle (its CTF parameters in ``optics``) has a place to travel in without
changing every signature on the way. TensorFlow-free: the fields are whatever arrays the caller
has (numpy in the loader, tensors inside a compiled step).

tf.function traces a Batch as a nested structure (TensorFlow's ``__tf_flatten__`` protocol): its
fields that are not None are the tensors, and which fields are None is part of the structure, so a
known-pose batch and a learned-pose batch get their own traces, as the separate arguments did.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_FIELDS = ("images", "rotations", "shifts", "indices", "optics")


@dataclass(frozen=True)
class Batch:
    images: Any                 # (B, n, n) float32, normalised as in training
    rotations: Any = None       # (B, 3, 3) known poses; None: the model finds the poses
    shifts: Any = None          # (B, 2) px, with known rotations (None there: no shift)
    indices: Any = None         # (B,) particle rows of the data; None for images not from a dataset
    optics: Any = None          # per-particle CTF parameters (reserved for the CTF forward model)

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
