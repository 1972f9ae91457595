"""`cryovae demo --quick` end to end, and the tutorial helpers of cryovae_nb.demo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from cryovae_nb import demo
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


def test_demo_notebooks_executed_without_errors(quick_demo):
    out, stdout = quick_demo
    html = sorted((out / "notebooks").glob("*.html"))
    assert [p.stem for p in html] == ["01_preprocess", "02_train", "04_evaluate", "05_latent_landscape"]
    for p in html:
        text = p.read_text()
        # an error output is an IPython traceback; warnings on stderr are not errors
        assert "<html" in text and "Traceback (most recent call last)" not in text, p.name
        assert "data:image/png;base64" in text, f"{p.name} has no inline plot"
    # 02 resumed the demo's run rather than starting another: one run, more steps
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in metrics) >= summary["steps"]
    assert (out / "landscape" / "trajectory").is_dir() and (out / "evaluate" / "fsc.json").is_file()


def test_cli_help_lists_the_options():
    proc = subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "demo", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for opt in ("--out", "--quick", "--budget", "--pose-mode"):
        assert opt in proc.stdout


# ---------------------------------------------------------------------------------------------
# helpers


def test_tutorial_paths_layout(tmp_path):
    sim = demo.tutorial_paths(tmp_path)
    assert sim.simulated and sim.raw == tmp_path / "simulated" / "particles.star"
    assert sim.particles == tmp_path / "preprocessed" / "particles.star"
    assert sim.split == tmp_path / "preprocessed" / "particles_split.npz"
    own = demo.tutorial_paths(tmp_path, "/data/p.star")
    assert not own.simulated and own.raw == Path("/data/p.star") and own.truth_volume is None
    with pytest.raises(InputError, match="no ground truth"):
        demo.truth_volume(own)


def test_ensure_tutorial_data_simulates_once_and_reuses(tmp_path):
    data = demo.ensure_tutorial_data(tmp_path, box=12, n_particles=30, progress=False)
    assert data.particles.is_file() and data.truth_volume.is_file()
    stamp = data.raw.stat().st_mtime_ns, data.particles.stat().st_mtime_ns
    # asking again, even with other simulation settings, keeps what a notebook already made
    demo.ensure_tutorial_data(tmp_path, box=12, n_particles=50, progress=False)
    assert (data.raw.stat().st_mtime_ns, data.particles.stat().st_mtime_ns) == stamp
    # simulate_tutorial_data reuses matching data, remakes it when the settings change
    ds = demo.simulate_tutorial_data(tmp_path, box=12, n_particles=30, progress=False)
    assert ds.n_particles == 30 and data.raw.stat().st_mtime_ns == stamp[0]
    ds = demo.simulate_tutorial_data(tmp_path, box=12, n_particles=40, progress=False)
    assert ds.n_particles == 40
    # the truth resampled to a coarser box keeps the physical extent
    vol, voxel = demo.truth_volume(data, 6)
    assert vol.shape == (6, 6, 6) and voxel == pytest.approx(2.0)


def test_ensure_tutorial_data_missing_star_names_it(tmp_path):
    with pytest.raises(InputError, match="nothere.star"):
        demo.ensure_tutorial_data(tmp_path, tmp_path / "nothere.star", progress=False)


def test_tutorial_train_config_routes_overrides(tmp_path):
    data = demo.tutorial_paths(tmp_path)
    cfg = demo.tutorial_train_config(data, tmp_path / "run", latent_dim=3, batch_size=16,
                                     learning_rate=2e-4, pose_mode="learned", max_time_s=5)
    assert cfg.model.latent_dim == 3 and cfg.batch_size == 16 and cfg.learning_rate == 2e-4
    assert cfg.pose_mode == "learned" and cfg.max_time_s == 5 and cfg.data == str(data.particles)
    assert cfg.model.decoder_layers == demo.TUTORIAL_MODEL["decoder_layers"]
    with pytest.raises(ConfigError, match="latnet_dim"):
        demo.tutorial_train_config(data, tmp_path / "run", latnet_dim=3)


def test_execute_notebook_needs_exactly_one_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("X = 1")])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(InputError, match="one cell tagged 'parameters'"):
        demo.execute_notebook(path, {"X": 2}, tmp_path)


def test_fsc_summary_converts_to_pixels():
    from cryovae_nb.analysis import fsc
    from cryovae_nb.synthetic import lshape_volume

    v = lshape_volume(16)
    noisy = v + np.random.default_rng(0).normal(0, 0.3, v.shape).astype(np.float32)
    s = demo.fsc_summary(fsc(noisy, v, pixel_size=2.5))
    assert s["nyquist_A"] == pytest.approx(5.0)
    assert s["resolution_05_px"] == pytest.approx(s["resolution_05_A"] / 2.5)
    assert s["resolution_0143_A"] <= s["resolution_05_A"]
