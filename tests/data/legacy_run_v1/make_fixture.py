"""Writes this folder's fixture: a 2-step training run of the code before ModelConfig had sections.

Run against main before issue 11's config sections (commit 5b8275e), from this folder:
    cd tests/data/legacy_run_v1 && PYTHONPATH=/path/to/old/checkout python make_fixture.py
It writes sim/ (a 64-image box-16 stack) and run/ (config.json, config.yaml, checkpoints, metrics);
tests/test_config_migration.py loads its configs and resumes the run with the current code.
"""
import shutil
from pathlib import Path

from cryovae_nb.config import save_config
from cryovae_nb.model import ModelConfig
from cryovae_nb.synthetic import SimulationConfig, simulate
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.trainer import Trainer

for name in ("sim", "run"):
    shutil.rmtree(name, ignore_errors=True)
simulate(SimulationConfig(box=16, n_particles=64, snr=1.0, seed=1), Path("sim"), progress=False)
model = ModelConfig(box=16, latent_dim=2, encoder_layers=1, encoder_units=8, decoder_layers=1,
                    decoder_units=8, pose_mode="learned", pose_search_deg=30.0, beta=0.5,
                    learning_rate=2e-5)
# top-level learning_rate set (it wins over the model's), pose_mode left null (the model's holds)
cfg = TrainConfig(data="sim/particles.star", run_dir="run", model=model, batch_size=16,
                  learning_rate=1e-3, max_steps=2, log_every=1, sample_every=1000, checkpoint_every=2,
                  n_test_eval=8, n_samples=2, n_sample_volumes=0, seed=3)
save_config(cfg, "train.yaml")  # a user's YAML as written by the old code (flat model, nulls)
Trainer(cfg, progress=False, resume=False).train()
