"""`TrainConfig`: what a training run does, as saved in its run folder (config.json / .yaml).

Light on purpose (no TensorFlow): notebooks, the command line and the launcher build and check
configs before any model exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cryovae_nb.config import check_fields
from cryovae_nb.errors import ConfigError
from cryovae_nb.model.config import OPTION_NAMES, TRAINER_OPTIONS, ModelConfig

# TrainConfig.precision: "auto" (the device policy's choice, training/devices.py) or a Keras policy
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclass
class TrainConfig:
    data: str = ""                      # preprocessed particles: RELION .star or a bare .mrcs/.mrc
    datadir: str | None = None          # where the STAR file's image paths are relative to
    run_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 120               # also the averaging loss' set of volumes
    learning_rate: float = 1e-5         # Adam's (thesis §3.3.3)
    max_steps: int = 100_000
    max_time_s: float | None = None     # wall-clock budget of one train() call
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    test_fraction: float = 0.1
    split_file: str | None = None       # .npz with 'train' and 'test' indices (from preprocessing)
    n_test_eval: int = 480              # held-out images scored at every log
    n_samples: int = 10                 # test images shown in the sample grid
    n_sample_volumes: int = 2           # of those, how many volumes are written as MRC
    seed: int = 0                       # the split, the epoch order and the model's initial weights
    prefetch: int = 4                   # batches read ahead by the loader thread
    jit: bool | None = None             # XLA-compile the steps; None: the device policy's choice
                                        # (devices.py: on, ~1.3x the images/s on 2 CPU cores, but off
                                        # for the conv3d decoder on a CPU); resume stays bit-exact
    deterministic: bool = True          # tf.config.experimental.enable_op_determinism()
    tf32_matmul: bool | None = None     # TensorFloat-32 matmuls; None: on where a GPU is present (devices.py)
    check_memory: bool = True           # refuse to start when the memory model's estimate exceeds the device
    precision: str = "auto"             # the dense layers' compute dtype (PRECISIONS); "auto": mixed
                                        # bfloat16/float16 on a GPU, float32 on a CPU (devices.py);
                                        # weights and checkpoints stay float32 whatever it is

    def validate(self) -> None:
        check_fields(self)
        positive = ("batch_size", "max_steps", "log_every", "sample_every", "checkpoint_every",
                    "keep_checkpoints", "prefetch")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"TrainConfig.test_fraction must be in [0, 1), got {self.test_fraction}")
        if not self.learning_rate > 0:
            raise ConfigError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"TrainConfig.max_time_s must be > 0, got {self.max_time_s}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.n_test_eval < 0 or self.n_samples < 0 or self.n_sample_volumes < 0:
            raise ConfigError("TrainConfig.n_test_eval, n_samples and n_sample_volumes must be >= 0")

    @staticmethod
    def migrate(data: dict) -> dict:
        """A dict of a file written before the model config had sections, in today's layout.

        Then learning_rate and pose_mode could be set twice, at the top (null: the model's) and in
        the model, and the model held a copy of batch_size and seed: the top level's non-null
        value wins, as the trainer did then; learning_rate stays here, pose_mode goes to the model.
        """
        if not isinstance(data, dict):
            return data  # from_dict reports it
        data = dict(data)
        model = data.get("model")
        model = dict(model) if isinstance(model, dict) else model
        if _flat_model(model):
            if data.get("learning_rate") is None and model.get("learning_rate") is not None:
                data["learning_rate"] = model["learning_rate"]
            model = ModelConfig.migrate(model)  # drops the model's copies of the trainer's options
        if data.get("learning_rate", 0) is None:
            del data["learning_rate"]  # null: the default rate
        pose_mode = data.pop("pose_mode", None)
        if isinstance(model, ModelConfig) and pose_mode is not None:
            model = model.with_options(pose_mode=pose_mode)
        elif pose_mode is not None:
            model = dict(model or {})
            model["pose"] = {**(model.get("pose") or {}), "mode": pose_mode}
        if model is not None:
            data["model"] = model
        return data


# The conv3d decoder's learning rate by box. Why it depends on the box: Adam moves each voxel of the
# consensus grid by about the rate whatever the box, while a voxel of a 2x larger box holds ~3.5x
# less signal (measured at 64 vs 32 px, README "Decoders for larger boxes"), so a rate that suits
# 32-64 px leaves a larger map as noisy as that ratio at FSC 0.5. Measured: 64 px 3.73 Å at 1e-5
# against 5.12 Å at 3e-5 (same steps); 128 px at 3e-6 beat 64 px (README). The rule scales 1e-5 at
# 64 px by the signal per voxel, box^-1.8; that 1e-5 is too high at 128 px is the rule's, not measured.
CONV3D_RATE_AT_64 = 1e-5
SIGNAL_PER_VOXEL_EXPONENT = 1.8


def conv3d_learning_rate(box: int) -> float:
    """The conv3d decoder's suggested learning rate at ``box`` px (1e-5 at 64 px, ~2.9e-6 at 128)."""
    return CONV3D_RATE_AT_64 * (64 / box) ** SIGNAL_PER_VOXEL_EXPONENT


def learning_rate_advice(config: TrainConfig) -> str | None:
    """One line when ``config``'s learning rate is more than twice what its conv3d decoder's box
    suggests (boxes of 64 px and more, where it was measured), else None. Why a warning and not a
    silent change: the rate is the user's, and a resumed run must keep its own."""
    arch = config.model.architecture
    if arch.decoder != "conv3d" or arch.box < 64:
        return None
    suggested = conv3d_learning_rate(arch.box)
    if config.learning_rate <= 2 * suggested:
        return None
    return (f"learning rate {config.learning_rate:g} is {config.learning_rate / suggested:.1f}x the "
            f"{suggested:.1g} suggested for the conv3d decoder at {arch.box} px: Adam's per-voxel noise "
            f"is likely to cap the map at FSC 0.5 (README, Decoders for larger boxes); set learning_rate "
            f"(--learning-rate) to {suggested:.1g}")


def _flat_model(model) -> bool:
    """Whether ``model`` is a model dict of the layout before the sections."""
    return isinstance(model, dict) and bool(set(model) & (set(OPTION_NAMES) | set(TRAINER_OPTIONS)))
