"""`cryovae demo --quick` end to end, and the tutorial helpers of cryovae_nb.tutorial."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from cryovae_nb.tutorial import demo, evaluation, notebooks, workspace
from cryovae_nb.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "demo", "--out", str(out), "--quick"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _png_ok(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_demo_writes_valid_outputs(quick_demo):
    out, stdout = quick_demo
    from cryovae_nb.io import read_volume

    for name in ("preview_particles.png", "sample_grid.png", "fsc.png"):
        w, h = _png_ok(out / name)
        assert w > 100 and h > 100, name
    vol, voxel = read_volume(out / "reconstruction.mrc")
    assert vol.shape == (20, 20, 20) and voxel == pytest.approx(1.0) and np.isfinite(vol).all()
    frames = sorted((out / "trajectory").glob("interpolation_*.mrc"))
    assert len(frames) == 6 and all(read_volume(f)[1] == pytest.approx(1.0) for f in frames)

    fsc = json.loads((out / "fsc.json").read_text())
    for key in ("resolution_05_A", "resolution_0143_A", "resolution_05_px", "correlation"):
        assert isinstance(fsc[key], float) and np.isfinite(fsc[key]), key
    # 0.143 is reached at a finer (smaller) resolution than 0.5, and neither beats Nyquist
    assert fsc["nyquist_A"] == pytest.approx(2.0)
    assert fsc["nyquist_A"] <= fsc["resolution_0143_A"] <= fsc["resolution_05_A"]
    curve = fsc["curves"]["aligned"]["curve"]
    assert len(curve) == 11 and curve[1] > 0.5  # the coarse shape is right after seconds
    # px and Å agree through the pixel size; the summary prints the saved numbers
    assert fsc["resolution_05_px"] * fsc["pixel_size_A"] == pytest.approx(fsc["resolution_05_A"])
    assert f"0.5 at {fsc['resolution_05_A']:.2f} Å ({fsc['resolution_05_px']:.2f} px)" in stdout
    assert "known poses" in stdout
    # the consensus is judged against the middle conformation of the hinge
    assert fsc["reference"].endswith("conformation_015.mrc") and fsc["reference_t"] == pytest.approx(15 / 31)


def test_demo_summary_holds_the_latent_vs_truth_figures(quick_demo):
    out, stdout = quick_demo
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phantom"] == "hinge"
    m = summary["latent_vs_truth"]
    # types and ranges only: whether the latent recovers the motion after seconds is not tested
    assert m["n_particles"] == 300 and m["max_angle_deg"] == pytest.approx(60.0)
    assert 0.0 <= m["spearman_pc"] <= 1.0 and 0.0 <= m["spearman_dim"] <= 1.0
    assert isinstance(m["knn_r2"], float) and np.isfinite(m["knn_r2"]) and m["knn_r2"] <= 1.0
    assert isinstance(m["best_pc"], int) and 0 <= m["best_pc"] < 4  # latent_dim 4 in the quick demo
    assert isinstance(m["own_closest"], bool) and m["aligned"] is False  # known poses: in place
    s = m["states"]
    assert s == 4 and sum(m["state_particles"]) == 300 and min(m["state_particles"]) > 0
    assert np.all(np.diff(m["state_t"]) > 0) and 0 <= m["state_t"][0] and m["state_t"][-1] <= 1
    assert m["state_angle_deg"] == pytest.approx([x * 60 for x in m["state_t"]])
    corr = np.array(m["correlation_matrix"], dtype=float)
    assert corr.shape == (s, s) and np.all(np.abs(corr) <= 1) and np.diag(corr) == pytest.approx(m["state_correlation"])
    for key in ("consensus_correlation", "state_fsc05_A", "state_fsc0143_A", "state_fsc05_px"):
        assert len(m[key]) == s and all(v is None or isinstance(v, float) for v in m[key]), key
    assert all(v is None or v >= 2.0 for v in m["state_fsc05_A"])  # not beyond Nyquist
    # printed next to the FSC line, with the saved numbers
    assert f"|Spearman rho| {m['spearman_pc']:.2f}" in stdout and f"kNN R^2 {m['knn_r2']:.2f}" in stdout
    assert "decoded states closest to their own truth: " + ("yes" if m["own_closest"] else "no") in stdout
    # the trajectory runs between the two ends of the motion; the strip of states is a PNG
    assert "lowest" in summary["trajectory_between"] and "highest" in summary["trajectory_between"]
    w, h = _png_ok(Path(summary["states_png"]))
    assert w > 300 and h > 200


def test_demo_notebooks_executed_without_errors(quick_demo):
    out, stdout = quick_demo
    html = sorted((out / "notebooks").glob("*.html"))
    assert [p.stem for p in html] == ["01_preprocess", "02_train", "04_evaluate", "05_latent_landscape"]
    for p in html:
        text = p.read_text()
        # an error output is an IPython traceback; warnings on stderr are not errors
        assert "<html" in text and "Traceback (most recent call last)" not in text, p.name
        assert "data:image/png;base64" in text, f"{p.name} has no inline plot"
    # 02 resumed the demo's run rather than starting another: one run, more steps. The quick demo
    # trains fixed step counts (not wall-clock budgets), so these numbers are exact on any machine.
    from cryovae_nb.training.rundir import CheckpointManager, read_metrics

    summary = json.loads((out / "summary.json").read_text())
    quick = demo.DemoSettings.quick()
    assert summary["steps"] == quick.steps and summary["notebook_steps"] == quick.notebook_steps
    total = quick.steps + quick.notebook_steps
    latest = CheckpointManager(out / "run" / "checkpoints").latest()
    assert latest.name == f"step_{total:08d}", latest
    assert f"resuming {out / 'run'} at step {summary['steps']}" in (out / "notebooks" / "02_train.html").read_text()
    log_every = 25  # tutorial_train_config's default, and 02_train's LOG_EVERY
    assert inspect.signature(workspace.tutorial_train_config).parameters["log_every"].default == log_every
    logged = sorted({r["step"] for r in read_metrics(out / "run") if r["split"] == "train"})
    assert logged == list(range(log_every, total + 1, log_every))
    assert (out / "landscape" / "trajectory").is_dir() and (out / "evaluate" / "fsc.json").is_file()


def test_cli_help_lists_the_options():
    proc = subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "demo", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for opt in ("--out", "--quick", "--budget", "--steps", "--pose-mode"):
        assert opt in proc.stdout


# ---------------------------------------------------------------------------------------------
# helpers


def test_tutorial_paths_layout(tmp_path):
    sim = workspace.tutorial_paths(tmp_path)
    assert sim.simulated and sim.raw == tmp_path / "simulated" / "particles.star"
    assert sim.particles == tmp_path / "preprocessed" / "particles.star"
    assert sim.split is None  # before preprocessing; then the split the preprocessed STAR file names
    # before simulating, the reference truth is the default hinge's middle conformation
    assert sim.truth_volume == tmp_path / "simulated" / "volumes" / "conformation_015.mrc"
    assert len(sim.truth_volume_files) == 32
    own = workspace.tutorial_paths(tmp_path, "/data/p.star")
    assert not own.simulated and own.raw == Path("/data/p.star") and own.truth_volume is None
    assert own.truth_volume_files == [] and evaluation.truth_t(own) is None
    for f in (evaluation.truth_volume, evaluation.truth_volumes):
        with pytest.raises(InputError, match="no ground truth"):
            f(own)


def test_ensure_tutorial_data_simulates_once_and_reuses(tmp_path):
    data = workspace.ensure_tutorial_data(tmp_path, box=12, n_particles=30, progress=False)
    assert data.particles.is_file() and data.truth_volume.is_file()
    stamp = data.raw.stat().st_mtime_ns, data.particles.stat().st_mtime_ns
    # asking again, even with other simulation settings, keeps what a notebook already made
    workspace.ensure_tutorial_data(tmp_path, box=12, n_particles=50, progress=False)
    assert (data.raw.stat().st_mtime_ns, data.particles.stat().st_mtime_ns) == stamp
    # simulate_tutorial_data reuses matching data, remakes it when the settings change
    ds = workspace.simulate_tutorial_data(tmp_path, box=12, n_particles=30, progress=False)
    assert ds.n_particles == 30 and data.raw.stat().st_mtime_ns == stamp[0]
    ds = workspace.simulate_tutorial_data(tmp_path, box=12, n_particles=40, progress=False)
    assert ds.n_particles == 40
    # the truth resampled to a coarser box keeps the physical extent
    vol, voxel = evaluation.truth_volume(data, 6)
    assert vol.shape == (6, 6, 6) and voxel == pytest.approx(2.0)


def test_tutorial_data_is_the_hinge_with_a_truth_per_conformation(tmp_path):
    from cryovae_nb.analysis.align import correlation
    from cryovae_nb.synthetic import hinge_volume
    from cryovae_nb.volumes import fourier_resample

    data = workspace.ensure_tutorial_data(tmp_path, box=12, n_particles=40, progress=False)
    assert evaluation.simulation_config(data).phantom == "hinge" and evaluation.max_angle_deg(data) == 60.0
    t = evaluation.truth_t(data)
    assert t.shape == (40,) and 0 <= t.min() and t.max() <= 1 and np.ptp(t) > 0
    vols, levels, voxel = evaluation.truth_volumes(data, 6)
    assert vols.shape == (32, 6, 6, 6) and levels == pytest.approx(np.linspace(0, 1, 32)) and voxel == 2.0
    # the reference is the level nearest t = 0.5, resampled like the others
    ref, _ = evaluation.truth_volume(data, 6)
    assert evaluation.reference_t(data) == pytest.approx(15 / 31) and ref == pytest.approx(vols[15], abs=1e-6)
    # any t, also between the levels, from the same phantom
    v, vx = evaluation.truth_volume_at(data, 0.4)
    assert vx == 1.0 and v == pytest.approx(hinge_volume(12, 0.4), abs=1e-6)
    assert evaluation.truth_volume_at(data, 1.0, 6)[0] == pytest.approx(fourier_resample(hinge_volume(12, 1.0), 6), abs=1e-6)
    assert correlation(vols[0], vols[-1]) < correlation(vols[0], vols[1])  # it moves
    # a rigid phantom still works, with one truth map
    rigid = workspace.simulate_tutorial_data(tmp_path / "rigid", box=12, n_particles=20, phantom="lshape",
                                             progress=False)
    rd = workspace.tutorial_paths(tmp_path / "rigid")
    assert len(rigid.volumes) == 1 and rd.truth_volume == rd.truth_volume_files[0] and evaluation.max_angle_deg(rd) == 0


def test_motion_axis_follows_the_truth_and_endpoints():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 400)
    # the motion hides in the second-largest direction of spread, and runs against dimension 2
    z = np.stack([rng.normal(0, 3, 400), -2 * t + rng.normal(0, 0.05, 400), rng.normal(0, 0.1, 400)], 1)
    ax = evaluation.motion_axis(z, t)
    assert ax["pc"] == 1 and ax["rho"] > 0.95 and abs(ax["direction"][1]) > 0.99
    assert np.corrcoef(ax["coords"], t)[0, 1] > 0.95   # oriented: t grows along it
    assert evaluation.motion_axis(z)["pc"] == 0 and evaluation.motion_axis(z)["rho"] is None
    s, path, vols, _ = evaluation.axis_traversal(lambda zz: np.repeat(zz[:, :1, None, None], 4, 1) * np.ones((1, 4, 4, 4)),
                                                 z, t, steps=5)
    assert path.shape == (5, 3) and vols.shape == (5, 4, 4, 4) and np.all(np.diff(s) > 0)
    assert np.all(np.diff(path[:, 1]) < 0)  # dimension 2 falls as t grows
    t_levels = np.round(t * 3) / 3
    z0, z1, n = evaluation.extreme_states(z, t_levels)
    assert z0[1] > z1[1] and n.sum() == np.sum(t_levels == 0) + np.sum(t_levels == 1)
    centres = np.array([[0, -1.8, 0], [0, -0.2, 0], [5, -1.0, 0]])
    assert evaluation.farthest_clusters_along(centres, ax) == (1, 0)
    assert evaluation.state_labels([0, 0.24, 0.25, 0.99, 1.0]).tolist() == [0, 0, 1, 3, 3]


def test_format_motion_reads_the_figures():
    fig = {"n_particles": 10, "max_angle_deg": 60.0, "spearman_pc": 0.934, "best_pc": 0, "knn_r2": 0.851,
           "own_closest": True, "state_correlation": [0.9, None], "state_angle_deg": [7.4, 52.5],
           "consensus_correlation": [0.8, 0.7]}
    text = evaluation.format_motion(fig)
    assert "|Spearman rho| 0.93 (best PC 1), kNN R^2 0.85" in text and "own truth: yes" in text
    assert "0.90, n/a at 7°, 52°" in text
    assert "no simulated motion" in evaluation.format_motion(None)


def test_ensure_tutorial_data_missing_star_names_it(tmp_path):
    with pytest.raises(InputError, match="nothere.star"):
        workspace.ensure_tutorial_data(tmp_path, tmp_path / "nothere.star", progress=False)


def test_tutorial_train_config_routes_overrides(tmp_path):
    data = workspace.tutorial_paths(tmp_path)
    cfg = workspace.tutorial_train_config(data, tmp_path / "run", latent_dim=3, batch_size=16,
                                          learning_rate=2e-4, pose_mode="learned", max_time_s=5)
    assert cfg.model.architecture.latent_dim == 3 and cfg.batch_size == 16 and cfg.learning_rate == 2e-4
    assert cfg.model.pose.mode == "learned" and cfg.max_time_s == 5 and cfg.data == str(data.particles)
    assert cfg.model.architecture.decoder_layers == workspace.TUTORIAL_MODEL["decoder_layers"]
    # a TrainConfig or ModelConfig field may sit in either tutorial dict: each goes where it belongs
    mp = pytest.MonkeyPatch()
    mp.setitem(workspace.TUTORIAL_MODEL, "beta", 2.0)
    mp.setitem(workspace.TUTORIAL_MODEL, "n_test_eval", 7)
    try:
        cfg = workspace.tutorial_train_config(data, tmp_path / "run", log_every=3)
        assert cfg.model.loss.beta == 2.0 and cfg.n_test_eval == 7 and cfg.log_every == 3
    finally:
        mp.undo()
    with pytest.raises(ConfigError, match="latnet_dim"):
        workspace.tutorial_train_config(data, tmp_path / "run", latnet_dim=3)


def test_execute_notebook_needs_exactly_one_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("X = 1")])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(InputError, match="one cell tagged 'parameters'"):
        notebooks.execute_notebook(path, {"X": 2}, tmp_path)


def test_fsc_summary_converts_to_pixels():
    from cryovae_nb.analysis.fsc import fsc
    from cryovae_nb.synthetic import lshape_volume

    v = lshape_volume(16)
    noisy = v + np.random.default_rng(0).normal(0, 0.3, v.shape).astype(np.float32)
    s = evaluation.fsc_summary(fsc(noisy, v, pixel_size=2.5))
    assert s["nyquist_A"] == pytest.approx(5.0)
    assert s["resolution_05_px"] == pytest.approx(s["resolution_05_A"] / 2.5)
    assert s["resolution_0143_A"] <= s["resolution_05_A"]
