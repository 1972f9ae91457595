"""ModelConfig: every architectural and loss hyper-parameter of the VAE (thesis §3.3), in sections.

``ModelConfig(architecture=..., loss=..., pose=..., latent=...)``; each section checks its own
fields, ModelConfig the rules that span sections. The optimiser's learning rate, the batch size and
the seed are the trainer's (``TrainConfig``); ``build_model(config, seed=...)`` takes the seed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cryovae_nb.config import check_fields
from cryovae_nb.errors import ConfigError

KERNEL_WIDTHS = (2, 3, 4, 5, 6)  # = projectors.KERNEL_WIDTHS (kept import-free of TensorFlow)

# the keys of the registries projectors.PROJECTORS and decoders.DECODERS (kept free of TensorFlow)
PROJECTORS = ("fourier", "real")
DECODERS = ("dense", "conv3d")
POSE_MODES = ("learned", "known")
LIKELIHOODS = ("gaussian", "bernoulli")
LINKS = ("sigmoid", "identity")
POSE_INPUTS = ("hidden", "latent")
POSE_ENCODERS = ("dense", "conv")
# The convolutional pose encoder (model/pose_encoder.py): (channels, kernel) per conv + 2x pool
# stage, then a dense layer. Here, free of TensorFlow, so the memory model counts it from the
# config. The sizes of benchmarks/pose_head_capacity.py's reference CNN (56 deg at SNR 0.1).
CONV_POSE_STAGES = ((32, 5), (64, 3), (128, 3))
CONV_POSE_UNITS = 256
SEARCH_REFERENCES = ("own", "mean")
SEARCH_SCORINGS = ("real_space", "fourier")
LATENT_INFERENCES = ("auto", "linearized", "encoder")
OUTPUT_ACTIVATIONS = ("leaky_relu", "linear")


def conv_pose_sides(box: int) -> list[int]:
    """The image side entering each conv stage of the conv pose encoder, then the side its dense
    layer flattens (each 2x average pool rounds down, as Keras' "valid" pooling does)."""
    sides = [box]
    for _ in CONV_POSE_STAGES:
        sides.append(sides[-1] // 2)
    return sides


def _positive_int(where: str, v, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{where} must be {what}, got {v!r}")


def _band(where: str, v) -> None:
    if not 0 < v <= 0.5:
        raise ConfigError(f"{where} is a frequency in cycles/px in (0, 0.5], got {v!r}")


def _one_of(where: str, v, allowed) -> None:
    if v not in allowed:
        raise ConfigError(f"{where} must be one of {allowed}, got {v!r}")


@dataclass
class ArchitectureConfig:
    """The networks and the forward model: what the weights are and how a volume becomes an image."""

    box: int = 40                    # image side n; the decoder emits n^3 voxels
    latent_dim: int = 8              # the thesis used 21 (preset "seed")
    encoder_layers: int = 10
    encoder_units: int = 512
    decoder_layers: int = 20
    decoder_units: int = 200
    decoder: str = "dense"           # the decoder architecture (model/decoders.py); "dense": the seed's MLP
                                     # (decoder_layers x decoder_units, then 200 n^3 weights); "conv3d":
                                     # a consensus voxel grid + z through upsampling 3D convolutions (for >= 64 px)
    decoder_grid: int = 8            # conv: side g of the coarsest grid z is mapped to
    decoder_channels: int = 32       # conv: its channels (halved per upsampling, >= 4)
    decoder_upsamplings: int = 2     # conv: x2 upsamplings to the side g 2^L of z's part (then
                                     # interpolated to the box; the consensus grid is n^3)
    leaky_slope: float = 0.2         # negative slope of every leaky ReLU (tf.nn.leaky_relu default)
    output_activation: str = "leaky_relu"   # on the n^3 voxel layer; the thesis uses leaky ReLU
    volume_mask: float | None = 0.95  # spherical mask diameter as a fraction of the box; None = off
    max_shift: float | None = None   # bound of the in-plane shift head in px; None = 0.1 * box
    projector: str = "fourier"       # "fourier" (central slice, fast) or "real" (reference)
    fourier_pad: float = 1.0         # zero-padding factor of the 3D FFT (>= 1; ~pad^3 the FFT cost)
    fourier_kernel_width: int = 3    # Fourier interpolation: 3..6 Kaiser-Bessel taps/axis, 2 trilinear
    gridding_correction: bool = True  # pre-divide by the interpolation kernel's apodisation

    @property
    def max_shift_px(self) -> float:
        return 0.1 * self.box if self.max_shift is None else float(self.max_shift)

    @property
    def padded_box(self) -> int:
        """Side of the zero-padded grid used by the Fourier projector."""
        return max(self.box, int(round(self.fourier_pad * self.box)))

    def validate(self) -> None:
        check_fields(self)
        w = "ArchitectureConfig"
        for name in ("box", "latent_dim", "encoder_units", "decoder_units"):
            _positive_int(f"{w}.{name}", getattr(self, name))
        _positive_int(f"{w}.decoder_grid", self.decoder_grid)
        _positive_int(f"{w}.decoder_channels", self.decoder_channels)
        _positive_int(f"{w}.decoder_upsamplings", self.decoder_upsamplings, minimum=0)
        side = self.decoder_grid * 2 ** min(self.decoder_upsamplings, 16)
        if self.decoder == "conv3d" and side > 2 * self.box:
            raise ConfigError(f"{w}: the conv decoder's grid ({self.decoder_grid} x 2^{self.decoder_upsamplings}"
                              f" = {side}) must not exceed twice the box ({self.box}): lower "
                              f"decoder_grid or decoder_upsamplings")
        for name in ("encoder_layers", "decoder_layers"):
            _positive_int(f"{w}.{name}", getattr(self, name), minimum=0)
        if self.box < 4:
            raise ConfigError(f"{w}.box must be at least 4 pixels, got {self.box}")
        _one_of(f"{w}.projector", self.projector, PROJECTORS)
        _one_of(f"{w}.decoder", self.decoder, DECODERS)
        _one_of(f"{w}.output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        if self.volume_mask is not None and not 0 < self.volume_mask <= 1:
            raise ConfigError(f"{w}.volume_mask is a diameter fraction in (0, 1] "
                              f"(or None for no mask), got {self.volume_mask!r}")
        if self.max_shift is not None and not self.max_shift >= 0:
            raise ConfigError(f"{w}.max_shift must be >= 0 px (or None), got {self.max_shift!r}")
        _one_of(f"{w}.fourier_kernel_width", self.fourier_kernel_width, KERNEL_WIDTHS)
        if self.fourier_kernel_width > self.box:
            raise ConfigError(f"{w}.fourier_kernel_width ({self.fourier_kernel_width}) must not "
                              f"exceed the box ({self.box})")
        if not self.fourier_pad >= 1:
            raise ConfigError(f"{w}.fourier_pad must be >= 1, got {self.fourier_pad!r}")
        if not self.leaky_slope >= 0:
            raise ConfigError(f"{w}.leaky_slope must be >= 0, got {self.leaky_slope!r}")


@dataclass
class LossConfig:
    """What a step minimises: the likelihood, the KL and averaging terms and their weights."""

    likelihood: str = "gaussian"     # "gaussian": white noise, its variance estimated from the
                                     # residuals as training goes (ELBO in nats); "bernoulli": the
                                     # seed's sigmoid cross-entropy
    link: str = "sigmoid"            # model image = link(projection + offset): "sigmoid" for [0, 1]
                                     # (tanh-normalised) images, "identity" for standardised ones
    ctf: bool = False                # multiply each projection by its particle's CTF (Batch.optics,
                                     # from the STAR file) before the offset; needs standardised
                                     # images (preprocess normalise="standardise") and link="identity"
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

    def validate(self) -> None:
        check_fields(self)
        w = "LossConfig"
        _one_of(f"{w}.likelihood", self.likelihood, LIKELIHOODS)
        _one_of(f"{w}.link", self.link, LINKS)
        if self.likelihood == "bernoulli" and self.link != "sigmoid":
            raise ConfigError(f"{w}: the bernoulli likelihood needs link='sigmoid' (its logits)")
        if self.ctf and (self.likelihood != "gaussian" or self.link != "identity"):
            # a CTF-modulated projection is signed and zero-mean in the band: it is a standardised
            # image's expectation, not a logit of a [0, 1] one
            raise ConfigError(f"{w}.ctf needs likelihood='gaussian' and link='identity' "
                              f"(standardised images), got {self.likelihood!r} and {self.link!r}")
        if not 0 <= self.noise_ema < 1:
            raise ConfigError(f"{w}.noise_ema must lie in [0, 1), got {self.noise_ema!r}")
        _positive_int(f"{w}.kl_warmup_steps", self.kl_warmup_steps, minimum=0)
        if not self.free_bits >= 0:
            raise ConfigError(f"{w}.free_bits must be >= 0 nats, got {self.free_bits!r}")
        for name in ("beta", "averaging_factor"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{w}.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass
class PoseConfig:
    """Where each image's pose comes from: a STAR file, or the pose head helped by a grid search."""

    mode: str = "learned"            # "learned" (pose head) or "known" (poses from a STAR file)
    search_deg: float | None = 15.0  # learned poses: each step also searches an SO(3) grid this
                                     # fine (degrees) against the batch's mean volume and trains on
                                     # the better of that and the head's pose; None: the seed's
                                     # (pose head alone)
    search_band: float = 0.15        # the search compares images low-passed to this (cycles/px)
    refine_band: float = 0.25        # ... and refines the grid pose locally against this band
    distill: float = 100.0           # weight pulling the pose head towards a searched pose that won
    input: str = "hidden"            # the pose head reads the encoder's last hidden layer, so the
                                     # latent need not carry the pose; "latent": the seed's (z)
    encoder: str = "dense"           # what the pose head reads: "dense", the encoder's stack (per
                                     # `input`); "conv": its own small convolutional network on the
                                     # images (model/pose_encoder.py): the dense one memorises the
                                     # noise at SNR 0.1 even from the true poses (README)
    search_reference: str = "own"    # local pose refinement against each image's own decoded volume;
                                     # "mean": the batch's mean volume (the global stage always is)
    search_scoring: str = "real_space"  # how the search scores a candidate (model/pose_search.py):
                                     # "real_space": images normalised inside the mask disc, shifts by
                                     # FFT cross-correlation; "fourier": the band's Fourier
                                     # components correlated directly (Parseval), quarter-pixel
                                     # shifts: 1.5x the step's speed, not yet the quality (README)
    global_every: int = 1            # epochs between a particle's global searches: in between, the
                                     # Trainer's pose cache starts the search at the particle's last
                                     # pose and only refines it locally (1: every visit is global)

    def validate(self) -> None:
        check_fields(self)
        w = "PoseConfig"
        _one_of(f"{w}.mode", self.mode, POSE_MODES)
        _one_of(f"{w}.input", self.input, POSE_INPUTS)
        _one_of(f"{w}.encoder", self.encoder, POSE_ENCODERS)
        if self.encoder == "conv" and self.input != "hidden":
            raise ConfigError(f"{w}.encoder='conv' reads the images itself, so input must be 'hidden' "
                              f"(the default), got input={self.input!r}")
        _one_of(f"{w}.search_reference", self.search_reference, SEARCH_REFERENCES)
        _one_of(f"{w}.search_scoring", self.search_scoring, SEARCH_SCORINGS)
        if self.search_deg is not None and not 1 <= self.search_deg <= 90:
            raise ConfigError(f"{w}.search_deg is a grid step in degrees in [1, 90] "
                              f"(or None: no search), got {self.search_deg!r}")
        _band(f"{w}.search_band", self.search_band)
        _band(f"{w}.refine_band", self.refine_band)
        if not self.distill >= 0:
            raise ConfigError(f"{w}.distill must be >= 0, got {self.distill!r}")
        _positive_int(f"{w}.global_every", self.global_every)


@dataclass
class LatentConfig:
    """How each image's latent is inferred."""

    inference: str = "auto"          # "linearized" (known poses): each latent solved from the
                                     # decoder linearised at z = 0 at the known pose, the decoder
                                     # adding principal volumes estimated from the data (vae.py);
                                     # "encoder": the encoder's heads (the seed's); "auto":
                                     # linearized with known poses, the encoder with learned ones
    band: float = 0.25               # linearized latents compare images up to this (cycles/px)
    covariance_ema: float = 0.95     # linearized: running-mean decay of the principal-volume estimate

    def validate(self) -> None:
        check_fields(self)
        w = "LatentConfig"
        _one_of(f"{w}.inference", self.inference, LATENT_INFERENCES)
        _band(f"{w}.band", self.band)
        if not 0 <= self.covariance_ema < 1:
            raise ConfigError(f"{w}.covariance_ema must lie in [0, 1), got {self.covariance_ema!r}")


SECTIONS = {"architecture": ArchitectureConfig, "loss": LossConfig, "pose": PoseConfig,
            "latent": LatentConfig}

# the flat option names (those of config files written before the sections, of presets and of
# ModelConfig.with_options) -> (section, field)
OPTION_NAMES = {
    **{f.name: ("architecture", f.name) for f in dataclasses.fields(ArchitectureConfig)},
    **{f.name: ("loss", f.name) for f in dataclasses.fields(LossConfig)},
    "pose_mode": ("pose", "mode"), "pose_search_deg": ("pose", "search_deg"),
    "pose_search_band": ("pose", "search_band"), "pose_refine_band": ("pose", "refine_band"),
    "pose_distill": ("pose", "distill"), "pose_input": ("pose", "input"),
    "pose_encoder": ("pose", "encoder"),
    "search_reference": ("pose", "search_reference"), "pose_search_scoring": ("pose", "search_scoring"),
    "pose_global_every": ("pose", "global_every"),
    "latent_inference": ("latent", "inference"), "latent_band": ("latent", "band"),
    "covariance_ema": ("latent", "covariance_ema"),
}
# in flat model dicts written before the sections; the trainer's now (TrainConfig)
TRAINER_OPTIONS = ("learning_rate", "batch_size", "seed")


@dataclass
class ModelConfig:
    """Hyper-parameters of the cryo-EM VAE; defaults are the thesis' (§3.3.1-3.3.3).

    Round-trips through ``cryovae_nb.config`` (JSON/YAML); ``validate()`` rejects bad values.
    Files written before the sections (one flat dict) still load (``migrate``).
    """

    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)

    @classmethod
    def preset(cls, name: str = "default", **options) -> ModelConfig:
        """A named configuration, with ``options`` (flat names, see ``with_options``) on top.

        ``"default"``: this class' defaults. ``"ctf"``: the CTF in the forward model with the
        identity link, for standardised images of data with CTF columns. ``"seed"``: the loss as the seed (thesis §3.3.2) wrote
        it -- every pixel scored, no image offset, mirrored volumes in the averaging loss, no
        symmetrised loss -- kept for comparison (benchmarks/quality_lshape.py --preset seed).
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown ModelConfig preset {name!r}; choose one of {tuple(PRESETS)}")
        return cls().with_options(**{**PRESETS[name], **options})

    def with_options(self, **options) -> ModelConfig:
        """A copy with options given by their flat names (``box=16, pose_mode="known"``: see
        ``OPTION_NAMES``) set in their sections; presets and notebooks spell options this way."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ConfigError(f"ModelConfig: unknown option(s) {unknown}; known: {sorted(OPTION_NAMES)}")
        changes: dict[str, dict] = {}
        for name, value in options.items():
            section, key = OPTION_NAMES[name]
            changes.setdefault(section, {})[key] = value
        return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **kw)
                                            for s, kw in changes.items()})

    @staticmethod
    def migrate(data: dict) -> dict:
        """A model dict of a file written before the sections (flat option names, and the trainer's
        learning_rate / batch_size / seed, which TrainConfig holds now and are dropped here) in
        the sectioned form; a sectioned dict is returned as it is."""
        if not isinstance(data, dict) or not set(data) & (set(OPTION_NAMES) | set(TRAINER_OPTIONS)):
            return data
        out: dict[str, dict] = {}
        rest = {}
        for name, value in data.items():
            if name in OPTION_NAMES:
                section, key = OPTION_NAMES[name]
                out.setdefault(section, {})[key] = value
            elif name not in TRAINER_OPTIONS:
                rest[name] = value  # sections, or unknown keys from_dict reports
        for section, kw in out.items():
            if section in rest:
                raise ConfigError(f"ModelConfig: both the section {section!r} and flat options of it given")
            rest[section] = kw
        return rest

    def validate(self) -> None:
        check_fields(self)
        for name in SECTIONS:
            getattr(self, name).validate()
        if self.latent.inference == "linearized" and self.pose.mode != "known":
            raise ConfigError("ModelConfig.latent.inference='linearized' needs pose.mode='known' "
                              "(use 'auto' or 'encoder' for learned poses)")
        if self.pose.encoder == "conv" and conv_pose_sides(self.architecture.box)[-1] < 1:
            raise ConfigError(f"ModelConfig: pose.encoder='conv' halves the image {len(CONV_POSE_STAGES)} times: "
                              f"it needs a box of at least {2 ** len(CONV_POSE_STAGES)} px, got "
                              f"{self.architecture.box}")
        if self.pose.search_deg is not None and self.loss.symmetrized_loss:
            raise ConfigError("ModelConfig: loss.symmetrized_loss and pose.search_deg do not combine "
                              "(the search already tries every in-plane angle)")


PRESETS = {
    "default": {},
    # data with CTF columns, standardised by preprocessing (what training picks for such data)
    "ctf": {"ctf": True, "link": "identity"},
    "seed": {"averaging_mirror": True, "image_offset": False, "loss_in_mask": False,
             "symmetrized_loss": False, "pose_search_deg": None, "likelihood": "bernoulli",
             "pose_input": "latent", "latent_inference": "encoder", "latent_dim": 21},
}
