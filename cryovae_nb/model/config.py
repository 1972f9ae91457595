"""ModelConfig: every architectural and loss hyper-parameter of the VAE (thesis §3.3)."""
from __future__ import annotations

from dataclasses import dataclass

from cryovae_nb.config import check_fields
from cryovae_nb.errors import ConfigError

KERNEL_WIDTHS = (2, 3, 4, 5, 6)  # = projectors.KERNEL_WIDTHS (kept import-free of TensorFlow)

# the keys of the registries projectors.PROJECTORS and decoders.DECODERS (kept free of TensorFlow)
PROJECTORS = ("fourier", "real")
DECODERS = ("dense",)
POSE_MODES = ("learned", "known")
LIKELIHOODS = ("gaussian", "bernoulli")
LINKS = ("sigmoid", "identity")
POSE_INPUTS = ("hidden", "latent")
SEARCH_REFERENCES = ("own", "mean")
LATENT_INFERENCES = ("auto", "linearized", "encoder")
OUTPUT_ACTIVATIONS = ("leaky_relu", "linear")


@dataclass
class ModelConfig:
    """Hyper-parameters of the cryo-EM VAE; defaults are the thesis' (§3.3.1-3.3.3).

    Round-trips through ``cryovae_nb.config`` (JSON/YAML); ``validate()`` rejects bad values.
    """

    box: int = 40                    # image side n; the decoder emits n^3 voxels
    latent_dim: int = 8              # the thesis used 21 (preset "seed")
    encoder_layers: int = 10
    encoder_units: int = 512
    decoder_layers: int = 20
    decoder_units: int = 200
    decoder: str = "dense"           # the decoder architecture (model/decoders.py); "dense": the seed's MLP
    leaky_slope: float = 0.2         # negative slope of every leaky ReLU (tf.nn.leaky_relu default)
    output_activation: str = "leaky_relu"   # on the n^3 voxel layer; the thesis uses leaky ReLU
    volume_mask: float | None = 0.95  # spherical mask diameter as a fraction of the box; None = off
    max_shift: float | None = None   # bound of the in-plane shift head in px; None = 0.1 * box
    projector: str = "fourier"       # "fourier" (central slice, fast) or "real" (reference)
    fourier_pad: float = 1.0         # zero-padding factor of the 3D FFT (>= 1; ~pad^3 the FFT cost)
    fourier_kernel_width: int = 3    # Fourier interpolation: 3..6 Kaiser-Bessel taps/axis, 2 trilinear
    gridding_correction: bool = True  # pre-divide by the interpolation kernel's apodisation
    pose_mode: str = "learned"       # "learned" (pose head) or "known" (poses from a STAR file)
    likelihood: str = "gaussian"     # "gaussian": white noise, its variance estimated from the
                                     # residuals as training goes (ELBO in nats); "bernoulli": the
                                     # seed's sigmoid cross-entropy
    link: str = "sigmoid"            # model image = link(projection + offset): "sigmoid" for [0, 1]
                                     # (tanh-normalised) images, "identity" for standardised ones
    noise_ema: float = 0.99          # decay of the running residual variance (gaussian likelihood)
    beta: float = 1.0                # weight of the KL term
    kl_warmup_steps: int = 0         # beta (and the averaging weight) ramp up from 0 over these steps
    free_bits: float = 0.0           # nats per latent dimension the KL term does not charge
    averaging_factor: float = 1e4    # averaging loss weight, relative to beta
    averaging_mirror: bool = False   # mirrored volumes in the averaging loss (True: the seed's)
    image_offset: bool = True        # per-image logit offset inside the mask disc (False: the seed's)
    loss_in_mask: bool = True        # score only pixels inside the mask disc (False: all, the seed's)
    symmetrized_loss: bool = False   # learned poses: min of the loss over the projection and its
                                     # 180-degree in-plane rotation (cryoAI); False: the seed's
    pose_search_deg: float | None = 15.0  # learned poses: each step also searches an SO(3) grid
                                     # this fine (degrees) against the batch's mean volume and trains
                                     # on the better of that and the head's pose; None: the seed's
                                     # (pose head alone)
    pose_search_band: float = 0.15   # the search compares images low-passed to this (cycles/px)
    pose_refine_band: float = 0.25   # ... and refines the grid pose locally against this band
    pose_distill: float = 100.0      # weight pulling the pose head towards a searched pose that won
    pose_input: str = "hidden"       # the pose head reads the encoder's last hidden layer, so the
                                     # latent need not carry the pose; "latent": the seed's (z)
    latent_inference: str = "auto"   # "linearized" (known poses): each latent solved from the
                                     # decoder linearised at z = 0 at the known pose, the decoder
                                     # adding principal volumes estimated from the data (vae.py);
                                     # "encoder": the encoder's heads (the seed's); "auto":
                                     # linearized with known poses, the encoder with learned ones
    latent_band: float = 0.25        # linearized latents compare images up to this (cycles/px)
    covariance_ema: float = 0.95     # linearized: running-mean decay of the principal-volume estimate
    search_reference: str = "own"    # local pose refinement against each image's own decoded volume;
                                     # "mean": the batch's mean volume (the global stage always is)
    learning_rate: float = 1e-5
    batch_size: int = 120
    seed: int = 0                    # weight initialisation

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> ModelConfig:
        """A named configuration, with ``overrides`` on top.

        ``"default"``: this class' defaults. ``"seed"``: the loss as the seed (thesis §3.3.2) wrote
        it -- every pixel scored, no image offset, mirrored volumes in the averaging loss, no
        symmetrised loss -- kept for comparison (benchmarks/quality_lshape.py --preset seed).
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown ModelConfig preset {name!r}; choose one of {tuple(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def max_shift_px(self) -> float:
        return 0.1 * self.box if self.max_shift is None else float(self.max_shift)

    @property
    def padded_box(self) -> int:
        """Side of the zero-padded grid used by the Fourier projector."""
        return max(self.box, int(round(self.fourier_pad * self.box)))

    def validate(self) -> None:
        check_fields(self)

        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {v!r}")

        for name in ("box", "latent_dim", "encoder_units", "decoder_units", "batch_size"):
            positive_int(name)
        for name in ("encoder_layers", "decoder_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"ModelConfig.{name} must be an integer >= 0, got {v!r}")
        if self.box < 4:
            raise ConfigError(f"ModelConfig.box must be at least 4 pixels, got {self.box}")
        if self.projector not in PROJECTORS:
            raise ConfigError(f"ModelConfig.projector must be one of {PROJECTORS}, got {self.projector!r}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"ModelConfig.decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.pose_mode not in POSE_MODES:
            raise ConfigError(f"ModelConfig.pose_mode must be one of {POSE_MODES}, got {self.pose_mode!r}")
        for name, allowed in (("likelihood", LIKELIHOODS), ("link", LINKS), ("pose_input", POSE_INPUTS),
                              ("search_reference", SEARCH_REFERENCES),
                              ("latent_inference", LATENT_INFERENCES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.latent_inference == "linearized" and self.pose_mode != "known":
            raise ConfigError("ModelConfig.latent_inference='linearized' needs pose_mode='known' "
                              "(use 'auto' or 'encoder' for learned poses)")
        if self.likelihood == "bernoulli" and self.link != "sigmoid":
            raise ConfigError("ModelConfig: the bernoulli likelihood needs link='sigmoid' (its logits)")
        if not 0 <= self.covariance_ema < 1:
            raise ConfigError(f"ModelConfig.covariance_ema must lie in [0, 1), got {self.covariance_ema!r}")
        if not 0 <= self.noise_ema < 1:
            raise ConfigError(f"ModelConfig.noise_ema must lie in [0, 1), got {self.noise_ema!r}")
        if isinstance(self.kl_warmup_steps, bool) or not isinstance(self.kl_warmup_steps, int) \
                or self.kl_warmup_steps < 0:
            raise ConfigError(f"ModelConfig.kl_warmup_steps must be an integer >= 0, got {self.kl_warmup_steps!r}")
        if not self.free_bits >= 0:
            raise ConfigError(f"ModelConfig.free_bits must be >= 0 nats, got {self.free_bits!r}")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ConfigError(f"ModelConfig.output_activation must be one of {OUTPUT_ACTIVATIONS}, "
                              f"got {self.output_activation!r}")
        if self.volume_mask is not None and not 0 < self.volume_mask <= 1:
            raise ConfigError(f"ModelConfig.volume_mask is a diameter fraction in (0, 1] "
                              f"(or None for no mask), got {self.volume_mask!r}")
        if self.max_shift is not None and not self.max_shift >= 0:
            raise ConfigError(f"ModelConfig.max_shift must be >= 0 px (or None), got {self.max_shift!r}")
        if self.fourier_kernel_width not in KERNEL_WIDTHS:
            raise ConfigError(f"ModelConfig.fourier_kernel_width must be one of {KERNEL_WIDTHS}, "
                              f"got {self.fourier_kernel_width!r}")
        if self.fourier_kernel_width > self.box:
            raise ConfigError(f"ModelConfig.fourier_kernel_width ({self.fourier_kernel_width}) must not "
                              f"exceed the box ({self.box})")
        if self.pose_search_deg is not None and self.symmetrized_loss:
            raise ConfigError("ModelConfig: symmetrized_loss and pose_search_deg do not combine (the "
                              "search already tries every in-plane angle)")
        if self.pose_search_deg is not None and not 1 <= self.pose_search_deg <= 90:
            raise ConfigError(f"ModelConfig.pose_search_deg is a grid step in degrees in [1, 90] "
                              f"(or None: no search), got {self.pose_search_deg!r}")
        if not 0 < self.pose_search_band <= 0.5:
            raise ConfigError(f"ModelConfig.pose_search_band is a frequency in cycles/px in (0, 0.5], "
                              f"got {self.pose_search_band!r}")
        if not 0 < self.latent_band <= 0.5:
            raise ConfigError(f"ModelConfig.latent_band is a frequency in cycles/px in (0, 0.5], "
                              f"got {self.latent_band!r}")
        if not 0 < self.pose_refine_band <= 0.5:
            raise ConfigError(f"ModelConfig.pose_refine_band is a frequency in cycles/px in (0, 0.5], "
                              f"got {self.pose_refine_band!r}")
        if not self.pose_distill >= 0:
            raise ConfigError(f"ModelConfig.pose_distill must be >= 0, got {self.pose_distill!r}")
        if not self.fourier_pad >= 1:
            raise ConfigError(f"ModelConfig.fourier_pad must be >= 1, got {self.fourier_pad!r}")
        for name in ("leaky_slope", "beta", "averaging_factor"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"ModelConfig.learning_rate must be > 0, got {self.learning_rate!r}")


PRESETS = {
    "default": {},
    "seed": {"averaging_mirror": True, "image_offset": False, "loss_in_mask": False,
             "symmetrized_loss": False, "pose_search_deg": None, "likelihood": "bernoulli",
             "pose_input": "latent", "latent_inference": "encoder", "latent_dim": 21,
             "learning_rate": 1e-5},
}
