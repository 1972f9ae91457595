"""The console script end to end: simulate a 40 px L-shape dataset, preprocess it, read it back."""
from __future__ import annotations

import subprocess
import sys

import mrcfile
import numpy as np
import starfile

from cryovae_nb.io import read_particles
from cryovae_nb.preprocess import output_paths


def cryovae(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cryovae_nb.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_simulate_then_preprocess_gives_normalised_masked_stack(tmp_path):
    sim = cryovae("simulate", "--phantom", "lshape", "--box", 40, "-n", 300, "--snr", 0.1,
                  "--shift-std", 1, "--pixel-size", 1.5, "--seed", 3, "--no-progress", "-o", tmp_path / "sim")
    assert sim.returncode == 0, sim.stderr
    star_in = tmp_path / "sim" / "particles.star"
    before = star_in.read_bytes()
    pre = cryovae("preprocess", star_in, "-o", tmp_path / "prep" / "particles", "--coarsen", 2,
                  "--mask", 0.95, "--no-progress")
    assert pre.returncode == 0, pre.stderr
    assert star_in.read_bytes() == before  # the input is never modified

    with mrcfile.open(output_paths(tmp_path / "prep" / "particles")["stack"], permissive=False) as m:
        data = np.asarray(m.data)
        assert data.shape == (300, 20, 20)
        assert np.isclose(float(m.voxel_size.x), 3.0)  # 1.5 Å × coarsening factor 2
    assert data.min() >= 0.0 and data.max() <= 1.0
    # the tanh estimator uses the full (0, 1) range inside the mask; outside it is exactly 0
    yy, xx = np.mgrid[:20, :20] - 10
    outside = np.hypot(yy, xx) > 0.95 * 20 / 2 + 0.5
    assert np.all(data[:, outside] == 0)
    inside = data[:, np.hypot(yy, xx) < 5]
    assert 0.3 < inside.mean() < 0.7 and inside.std() > 0.05

    star = starfile.read(tmp_path / "prep" / "particles.star")
    assert np.isclose(float(star["optics"]["rlnImagePixelSize"].iloc[0]), 3.0)
    assert int(star["optics"]["rlnImageSize"].iloc[0]) == 20
    p = read_particles(tmp_path / "prep" / "particles.star")
    assert len(p) == 300 and p.box == 20 and np.isclose(p.pixel_size, 3.0)
    assert p.poses is not None  # true poses carried through preprocessing
    truth = read_particles(star_in)
    np.testing.assert_allclose(p.poses.rotations, truth.poses.rotations, atol=1e-6)


def test_bad_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "broken.mrcs"
    bad.write_bytes(b"\0" * 100)
    out = cryovae("preprocess", bad, "-o", tmp_path / "out", "--no-progress")
    assert out.returncode == 2
    assert "broken.mrcs" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.glob("out*"))
