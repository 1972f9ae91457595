"""The cryo-EM VAE: configuration, its batch, decoders, projectors, the forward model, losses and
the Keras model.

The names below are loaded when first used (PEP 562), so that ``cryovae_nb.model.config`` and
``cryovae_nb.model.batch`` -- which a TrainConfig or a loader needs -- import without TensorFlow.
The compiled training steps are in ``cryovae_nb.training.steps``.
"""
from __future__ import annotations

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    "ModelConfig": "config", "Batch": "batch",
    "CryoVAE": "vae", "build_model": "vae",
    "DECODERS": "decoders", "make_decoder": "decoders",
    "PROJECTORS": "projectors", "make_projector": "projectors", "project_fourier": "projectors",
    "project_real": "projectors", "rfft3d": "projectors", "gridding_correction": "projectors",
    "forward_images": "forward", "quaternion_to_matrix": "rotations",
    "reconstruction_loss": "losses", "kl_divergence": "losses", "averaging_loss": "losses",
    "mirror_through_point": "losses", "LOSS_KEYS": "losses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
