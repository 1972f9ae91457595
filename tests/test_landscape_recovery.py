"""The product's promise, end to end on data small enough for the suite: trained with the tutorial
settings on the moving phantom, the latent space recovers the motion (the hinge angle), which a
collapsed latent (|rho| ~ 0.02, R^2 < 0 before this was fixed) cannot pass. Fixed steps and seeds: the
verdict does not depend on the machine's speed."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")


def test_tutorial_training_recovers_the_hinge_angle(tmp_path):
    from cryovae_nb.inference import load_run
    from cryovae_nb.training.trainer import Trainer
    from cryovae_nb.tutorial import evaluation, workspace

    # SNR 1 (ten times the tutorial's): the suite can afford ~1 minute of training, not 4
    data = workspace.ensure_tutorial_data(tmp_path, box=24, n_particles=1500, snr=1.0, progress=False)
    cfg = workspace.tutorial_train_config(data, tmp_path / "run", max_steps=600, max_time_s=None,
                                          sample_every=10**9, checkpoint_every=10**9, log_every=100)
    Trainer(cfg, progress=False).train()
    report = evaluation.latent_vs_truth(load_run(tmp_path / "run"), data)
    f = report.figures
    # measured 0.83 / 0.61 (the motion on the first principal component); the Bayes limit at this
    # SNR is higher, a collapsed latent scores ~0.02 / < 0
    assert f["spearman_pc"] > 0.6 and f["knn_r2"] > 0.4, f
