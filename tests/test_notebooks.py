"""The tutorial notebooks: stored clean in git, and executable top to bottom with tiny parameters.

The four notebooks run in order on one shared WORKDIR, as a user would run them: 01 simulates and
preprocesses, 02 trains, 04 and 05 read that run. Each must finish without an error and leave its
files behind; the numbers they print are checked against the files they wrote.
"""
from __future__ import annotations

import json
import re

import nbformat
import numpy as np
import pytest

from notebook_runner import run_notebook

NOTEBOOKS = ["01_preprocess.ipynb", "02_train.ipynb", "04_evaluate.ipynb", "05_latent_landscape.ipynb"]

# tiny: box 16, 240 particles, a one-layer model, ~30 steps (seconds of training)
COMMON = {"WORKDIR": "wd", "STAR_FILE": None, "SIM_BOX": 16, "SIM_PARTICLES": 240, "SIM_SNR": 0.1, "SEED": 0}
PARAMS = {
    "01_preprocess.ipynb": {**COMMON, "N_SHOW": 6},
    "02_train.ipynb": {**COMMON, "LATENT_DIM": 3, "ENCODER_LAYERS": 1, "ENCODER_UNITS": 32,
                       "DECODER_LAYERS": 1, "DECODER_UNITS": 32, "BATCH_SIZE": 32, "MAX_STEPS": 30,
                       "TRAIN_BUDGET_S": None, "LOG_EVERY": 10, "SAMPLE_EVERY": 10, "CHECKPOINT_EVERY": 20},
    "04_evaluate.ipynb": {**COMMON, "N_GALLERY": 6, "TRAIN_IF_MISSING_S": 1},
    "05_latent_landscape.ipynb": {**COMMON, "EMBED_METHODS": ["pca", "tsne"], "N_CLUSTERS": 2,
                                  "TRAVERSE_DIMS": 1, "TRAJECTORY_STEPS": 3, "TRAIN_IF_MISSING_S": 1},
}


def _stream_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_git_is_clean_with_one_parameters_cell(repo_root, name):
    nb = nbformat.read(repo_root / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name} has outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged 'parameters'"
    # every knob the tests (and the demo) inject exists in the parameters cell, so an injected
    # name can never silently miss; and the user-facing ones are there in every notebook
    names = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", tagged[0].source, flags=re.M))
    assert {"WORKDIR", "STAR_FILE"} <= names
    assert set(PARAMS[name]) <= names, set(PARAMS[name]) - names
    assert any(c.cell_type == "markdown" for c in nb.cells[:1]), "a notebook starts by saying what it does"


def test_demo_parameters_exist_in_notebooks(repo_root):
    from cryovae_nb.tutorial.demo import DemoSettings, notebook_parameters

    params = notebook_parameters(repo_root / "x", DemoSettings())
    assert sorted(params) == NOTEBOOKS
    for name, p in params.items():
        nb = nbformat.read(repo_root / "notebooks" / name, as_version=4)
        src = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        names = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", src, flags=re.M))
        assert set(p) <= names, (name, set(p) - names)


@pytest.fixture(scope="module")
def executed(repo_root, tmp_path_factory):
    """Run the four notebooks in order in one folder; returns (folder, {name: executed nb})."""
    cwd = tmp_path_factory.mktemp("tutorial")
    out = {}
    for name in NOTEBOOKS:
        out[name] = run_notebook(repo_root / "notebooks" / name, PARAMS[name], cwd, timeout=600,
                                 save_to=cwd / name)
    return cwd, out


def _no_errors(nb):
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors == []


def test_01_preprocess_writes_a_tanh_normalised_masked_stack(executed):
    cwd, nbs = executed
    _no_errors(nbs["01_preprocess.ipynb"])
    from cryovae_nb.io import read_output_files, read_particles

    raw = read_particles(cwd / "wd" / "simulated" / "particles.star")
    pre = read_particles(cwd / "wd" / "preprocessed" / "particles.star")
    assert len(raw) == len(pre) == 240 and pre.box == 16 and pre.poses is not None
    x = pre.images[:]
    assert 0.0 <= x.min() and x.max() <= 1.0 and x[:, 0, 0].max() == 0.0  # tanh range, masked corner
    split = read_output_files(cwd / "wd" / "preprocessed" / "particles.star")["split"]
    assert split.is_file() and split.parent == cwd / "wd" / "preprocessed"
    text = _stream_text(nbs["01_preprocess.ipynb"])
    assert "240 particles of 16 x 16 px" in text
    # the plots were drawn inline
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nbs["01_preprocess.ipynb"].cells for o in c.get("outputs", [])) >= 3


def test_02_train_trains_to_max_steps_with_decreasing_loss(executed):
    cwd, nbs = executed
    _no_errors(nbs["02_train.ipynb"])
    run = cwd / "wd" / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [10, 20, 30]
    assert train[-1]["recon"] < train[0]["recon"]  # it learned something
    assert (run / "checkpoints" / "latest").is_file()
    assert any((run / "samples").glob("step_*.png"))
    cfg = json.loads((run / "config.json").read_text())
    arch = cfg["model"]["architecture"]
    assert arch["box"] == 16 and arch["latent_dim"] == 3 and cfg["model"]["pose"]["mode"] == "known"
    assert "30 steps, stopped by max_steps" in _stream_text(nbs["02_train.ipynb"])


def test_04_evaluate_writes_reconstruction_and_a_consistent_fsc(executed):
    cwd, nbs = executed
    _no_errors(nbs["04_evaluate.ipynb"])
    from cryovae_nb.analysis.fsc import FSCResult
    from cryovae_nb.io import read_volume

    ev = cwd / "wd" / "evaluate"
    vol, voxel = read_volume(ev / "reconstruction.mrc")
    assert vol.shape == (16,) * 3 and voxel == pytest.approx(1.0)
    fsc = FSCResult.load(ev / "fsc.json")
    # 30 steps of a tiny model already get the coarse shape right: the lowest shells (past DC,
    # whose sign is the maps' mean offset) correlate with the truth; the finest do not
    assert fsc.curve[1:3].min() > 0.5 and fsc.curve[-3:].mean() < fsc.curve[1:3].min()
    assert np.isfinite(fsc.resolution_05) and fsc.crossed_05
    assert fsc.nyquist == pytest.approx(2.0)
    # the number printed is the one saved
    assert f"0.5 at {fsc.resolution_05:.2f} Å" in _stream_text(nbs["04_evaluate.ipynb"])
    # against the hinge's middle conformation
    assert "reference: the simulated truth conformation_015.mrc (t = 0.48" in _stream_text(nbs["04_evaluate.ipynb"])
    assert (ev / "fsc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_05_landscape_writes_encoding_trajectory_and_kept_star(executed):
    cwd, nbs = executed
    _no_errors(nbs["05_latent_landscape.ipynb"])
    from cryovae_nb.inference import Encoding
    from cryovae_nb.io import read_particles, read_volume

    land = cwd / "wd" / "landscape"
    enc = Encoding.load(land / "encoding.npz")
    assert enc.z_mean.shape == (240, 3) and np.isfinite(enc.z_mean).all()
    frames = sorted((land / "trajectory").glob("frame_*.mrc"))
    assert len(frames) == 3
    assert all(read_volume(f)[1] == pytest.approx(1.0) for f in frames)
    kept = read_particles(cwd / "wd" / "preprocessed" / "kept_particles.star")
    assert 0 < len(kept) <= 240 and kept.images[:2].shape == (2, 16, 16)  # its image paths resolve
    text = _stream_text(nbs["05_latent_landscape.ipynb"])
    assert f"kept {len(kept)} of 240 particles" in text
    assert len(sorted((land / "clusters").glob("cluster_*.mrc"))) == 2
    # the simulated hinge: the latent against the true angle, the traversal along the motion's
    # latent direction, the interpolation between the two ends of the motion
    assert "latent vs true hinge angle: |Spearman rho|" in text and "kNN R^2" in text
    assert re.search(r"latent PC \d: \d+% of the latent variance; \|Spearman rho\| with the true angle", text)
    assert len(sorted((land / "traverse_motion").glob("frame_*.mrc"))) == 3
    assert re.search(r"mean latent of the \d+ particles at 0° -> of the \d+ at 60°", text)
    # the path between the same ends through the particles' k-NN graph, its maps written
    assert len(sorted((land / "graph_path").glob("frame_*.mrc"))) == 3
    assert re.search(r"particle \d+ -> \d+: \d+ particles on the way, length", text)


def test_05_landscape_on_own_data_skips_the_truth(executed, tmp_path, repo_root):
    """A user's STAR file: no truth, so the comparisons with it are skipped and the traversal and
    interpolation follow the latent's main direction (run on a copy of the tutorial's folder)."""
    import shutil

    cwd, _ = executed
    shutil.copytree(cwd / "wd", tmp_path / "wd")
    params = {**PARAMS["05_latent_landscape.ipynb"], "STAR_FILE": "wd/simulated/particles.star"}
    nb = run_notebook(repo_root / "notebooks" / "05_latent_landscape.ipynb", params, tmp_path, timeout=600)
    _no_errors(nb)
    text = _stream_text(nb)
    assert "no simulated motion to compare with" in text and "latent vs true" not in text
    assert "the latent's main direction of spread" in text
    assert "farthest apart along the latent's main direction" in text
    assert len(sorted((tmp_path / "wd" / "landscape" / "trajectory").glob("frame_*.mrc"))) == 3


def test_a_second_dataset_in_notebook_01_moves_02_to_05_without_reusing_the_tutorials_folders(
        executed, tmp_path, repo_root, monkeypatch):
    """Issue #12: after the tutorial, pointing notebook 01 at another STAR file (the one edit) makes
    02 and 05 use it, in folders of its own; the tutorial's preprocessed set and run are untouched,
    and a run of the other dataset is refused rather than silently used."""
    import hashlib
    import shutil

    import yaml

    from cryovae_nb.errors import InputError
    from cryovae_nb.io import read_particles
    from cryovae_nb.tutorial import workspace

    cwd, _ = executed
    shutil.copytree(cwd / "wd", tmp_path / "wd")
    digest = {p: hashlib.sha256((tmp_path / "wd" / p).read_bytes()).hexdigest()
              for p in ("preprocessed/particles.star", "run/metrics.jsonl", "run/config.json")}
    workspace.simulate_tutorial_data(tmp_path / "mine", box=16, n_particles=200, seed=7, progress=False)
    mine = (tmp_path / "mine" / "simulated" / "particles.star").resolve()

    nb = run_notebook(repo_root / "notebooks" / "01_preprocess.ipynb",
                      {**PARAMS["01_preprocess.ipynb"], "STAR_FILE": str(mine)}, tmp_path, timeout=600)
    _no_errors(nb)
    project = yaml.safe_load((tmp_path / "wd" / "project.yaml").read_text())
    assert project["star_file"] == str(mine) and project["target_box"] is None  # 16 px: nothing to crop
    assert (project["preprocessed"], project["run_name"]) == ("preprocessed_particles", "run_particles")
    pre = read_particles(tmp_path / "wd" / "preprocessed_particles" / "particles.star")
    assert len(pre) == 200 and pre.provenance["cryovaeSourceStar"] == str(mine)
    assert "preprocessing: 16 px at" in _stream_text(nb)

    for name in ("02_train.ipynb", "05_latent_landscape.ipynb"):  # STAR_FILE None: the project's
        _no_errors(run_notebook(repo_root / "notebooks" / name, PARAMS[name], tmp_path, timeout=600))
    cfg = json.loads((tmp_path / "wd" / "run_particles" / "config.json").read_text())
    assert cfg["data"].endswith("preprocessed_particles/particles.star")
    from cryovae_nb.inference import Encoding

    assert Encoding.load(tmp_path / "wd" / "landscape" / "encoding.npz").z_mean.shape == (200, 3)
    # the landscape's selections are rows of the user's STAR file, for RELION
    sel = np.load(tmp_path / "wd" / "landscape" / "screened_keep_indices.npy")
    assert 0 < len(sel) <= 200 and sel.max() < 200
    # the tutorial's files were not touched
    assert digest == {p: hashlib.sha256((tmp_path / "wd" / p).read_bytes()).hexdigest() for p in digest}
    # asking for the tutorial's run with the new project: refused in one line, not silently used
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="was trained on .*preprocessed/particles.star, not on the project's"):
        workspace.ensure_tutorial_run("wd", run_name="run")
