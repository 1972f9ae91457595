"""The cryo-EM VAE: configuration, decoders, projectors, the forward model, losses, the Keras model
and its compiled steps."""
from cryovae_nb.model.config import ModelConfig
from cryovae_nb.model.decoders import DECODERS, make_decoder
from cryovae_nb.model.forward import forward_images
from cryovae_nb.model.losses import averaging_loss, kl_divergence, mirror, reconstruction_loss
from cryovae_nb.model.projectors import (PROJECTORS, gridding_correction, make_projector, project_fourier,
                                         project_real, rfft3d)
from cryovae_nb.model.rotations import quaternion_to_matrix
from cryovae_nb.model.train_step import configure_threads, make_eval_step, make_optimizer, make_train_step
from cryovae_nb.model.vae import CryoVAE, build_model

__all__ = [
    "ModelConfig", "CryoVAE", "build_model", "make_train_step", "make_eval_step", "make_optimizer",
    "configure_threads", "DECODERS", "make_decoder", "PROJECTORS", "make_projector", "forward_images",
    "project_fourier", "project_real", "rfft3d", "gridding_correction",
    "quaternion_to_matrix", "reconstruction_loss", "kl_divergence", "averaging_loss", "mirror",
]
