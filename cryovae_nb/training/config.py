"""`TrainConfig`: what a training run does, as saved in its run folder (config.json / .yaml).

Light on purpose (no TensorFlow): notebooks, the command line and the launcher build and check
configs before any model exists.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cryovae_nb.config import check_fields
from cryovae_nb.errors import ConfigError
from cryovae_nb.model.config import ModelConfig


@dataclass
class TrainConfig:
    data: str = ""                      # preprocessed particles: RELION .star or a bare .mrcs/.mrc
    datadir: str | None = None          # where the STAR file's image paths are relative to
    run_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 120
    learning_rate: float | None = None  # None: model.learning_rate (1e-5, thesis §3.3.3)
    pose_mode: str | None = None        # None: model.pose_mode; "known" needs poses in the STAR file
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
    seed: int = 0
    prefetch: int = 4                   # batches read ahead by the loader thread
    jit: bool = False                   # XLA-compile the train step (faster, slow first step)
    deterministic: bool = True          # tf.config.experimental.enable_op_determinism()

    def validate(self) -> None:
        check_fields(self)
        positive = ("batch_size", "max_steps", "log_every", "sample_every", "checkpoint_every",
                    "keep_checkpoints", "prefetch")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"TrainConfig.test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.pose_mode not in (None, "learned", "known"):
            raise ConfigError(f"TrainConfig.pose_mode must be 'learned' or 'known', got {self.pose_mode!r}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"TrainConfig.max_time_s must be > 0, got {self.max_time_s}")
        if self.n_test_eval < 0 or self.n_samples < 0 or self.n_sample_volumes < 0:
            raise ConfigError("TrainConfig.n_test_eval, n_samples and n_sample_volumes must be >= 0")

    def resolved(self) -> "TrainConfig":
        """The config with learning_rate / pose_mode / batch_size / seed written into the model
        config, so the saved config has one truth."""
        model = self.model
        if self.learning_rate is not None:
            model = dataclasses.replace(model, learning_rate=float(self.learning_rate))
        if self.pose_mode is not None:
            model = dataclasses.replace(model, pose_mode=self.pose_mode)
        # the trainer's batch size and seed drive the model too (its averaging loss, its init)
        model = dataclasses.replace(model, batch_size=int(self.batch_size), seed=int(self.seed))
        return dataclasses.replace(self, model=model, learning_rate=model.learning_rate,
                                   pose_mode=model.pose_mode)

