"""cryovae_nb: continuous conformational landscapes from cryo-EM particle images with a VAE.

Heavy modules (TensorFlow, widgets) are imported lazily by the submodules that need them, so
``import cryovae_nb`` stays fast and headless.
"""
from cryovae_nb.errors import ConfigError, CryoVAEError, InputError, LaunchError, TrainingError

__version__ = "0.1.0"
__all__ = ["CryoVAEError", "InputError", "ConfigError", "TrainingError", "LaunchError", "__version__"]
