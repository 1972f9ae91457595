"""The cryo-EM VAE: configuration, projectors, losses, the Keras model and its compiled steps."""
from cryovae_nb.model.config import ModelConfig
from cryovae_nb.model.losses import averaging_loss, kl_divergence, mirror, reconstruction_loss
from cryovae_nb.model.projectors import gridding_correction, project, project_fourier, project_real, rfft3d
from cryovae_nb.model.train_step import configure_threads, make_eval_step, make_optimizer, make_train_step
from cryovae_nb.model.vae import CryoVAE, build_model, quaternion_to_matrix

__all__ = [
    "ModelConfig", "CryoVAE", "build_model", "make_train_step", "make_eval_step", "make_optimizer",
    "configure_threads", "project", "project_fourier", "project_real", "rfft3d",
    "gridding_correction", "quaternion_to_matrix", "reconstruction_loss", "kl_divergence",
    "averaging_loss", "mirror",
]
