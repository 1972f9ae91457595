"""Contrast detection (contrast.py): the statistic against hand-made images, the verdict's z-score
against its formula, and the pipeline on simulated stacks written the other way up (as RELION's
extraction writes them), where the truth is known."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import starfile

from cryovae_nb.cli import main as cli_main
from cryovae_nb.contrast import Z_DECISIVE, centre_contrast, contrast_check, detect_contrast
from cryovae_nb.ctf import compute_ctf, phase_flip
from cryovae_nb.io import read_particles, write_stack
from cryovae_nb.preprocess import PreprocessConfig, output_paths, preprocess_images, preprocess_stack
from cryovae_nb.config import load_config
from cryovae_nb.synthetic import SimulationConfig, simulate
from cryovae_nb.volumes import radius_grid


def test_centre_contrast_of_a_disc_and_its_flip():
    box = 32
    disc = (radius_grid(box, 2) < 5).astype(np.float32) * 3.0
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (4, box, box)).astype(np.float32)
    d = centre_contrast(disc + noise)
    outside = radius_grid(box, 2) > 0.45 * box
    centre = radius_grid(box, 2) < 0.25 * box
    x = disc + noise
    expect = (x[:, centre].mean(1) - x[:, outside].mean(1)) / x[:, outside].std(1)
    np.testing.assert_allclose(d, expect, rtol=1e-5)
    assert (d > 0).all() and (centre_contrast(-(disc + noise)) < 0).all()
    # a CTF of -1 everywhere flips every frequency: the bright disc reads as dark
    flip_all = -np.ones((4, box, box // 2 + 1), np.float32)
    np.testing.assert_allclose(centre_contrast(disc + noise, flip_all), -d, rtol=1e-4, atol=1e-6)


def test_verdict_is_the_z_score_of_the_mean():
    scores = np.array([0.5, 1.5, 1.0, 2.0, 0.8, 1.0, 1.2, 0.9])
    z = scores.mean() / (scores.std(ddof=1) / np.sqrt(len(scores)))
    check = contrast_check(scores)
    assert check.z == pytest.approx(z) and check.n == 8 and z > Z_DECISIVE and check.invert is False
    assert contrast_check(-scores).invert is True
    weak = np.array([1.0, -1.0, 0.5, -0.4])
    assert abs(contrast_check(weak).z) < Z_DECISIVE and contrast_check(weak).invert is None
    assert contrast_check([1.0]).invert is None and "--invert or --no-invert" in contrast_check([1.0]).describe()


def _negated_copy(ds, dest):
    """The simulated dataset with its images negated: protein white, as RELION extracts."""
    shutil.copytree(ds.out_dir, dest)
    images = read_particles(ds.star).images[np.arange(ds.n_particles)]
    write_stack(dest / ds.stack.name, -np.asarray(images), ds.truth["pixel_size"])
    return dest / ds.star.name


@pytest.fixture(scope="module", params=["ctf", "no_ctf"])
def simulated(request, tmp_path_factory):
    ctf = request.param == "ctf"
    out = tmp_path_factory.mktemp(request.param)
    ds = simulate(SimulationConfig(phantom="hinge", box=32, n_particles=48, snr=0.1, ctf=ctf,
                                   astigmatism=400.0 if ctf else 0.0, pixel_size=3.0 if ctf else None),
                  out / "sim", progress=False)
    return ds, _negated_copy(ds, out / "negated")


def test_simulated_stacks_are_kept_and_their_negatives_inverted(simulated):
    ds, negated = simulated
    kept, flipped = detect_contrast(read_particles(ds.star)), detect_contrast(read_particles(negated))
    assert kept.invert is False and kept.z >= Z_DECISIVE, kept.describe()
    assert flipped.invert is True and flipped.z <= -Z_DECISIVE, flipped.describe()


def test_auto_preprocessing_undoes_the_inversion(simulated, tmp_path):
    ds, negated = simulated
    a = preprocess_stack(ds.star, tmp_path / "a", PreprocessConfig(box=16), progress=False)
    b = preprocess_stack(negated, tmp_path / "b", PreprocessConfig(box=16), progress=False)
    idx = np.arange(len(a))
    np.testing.assert_allclose(b.images[idx], a.images[idx], atol=1e-5)
    assert load_config(PreprocessConfig, output_paths(tmp_path / "a")["config"]).invert is False
    assert load_config(PreprocessConfig, output_paths(tmp_path / "b")["config"]).invert is True
    # asked, not detected: the images are taken as they are
    c = preprocess_stack(negated, tmp_path / "c", PreprocessConfig(box=16, invert=False), progress=False)
    d = preprocess_stack(ds.star, tmp_path / "d", PreprocessConfig(box=16, invert=True), progress=False)
    np.testing.assert_allclose(c.images[idx], d.images[idx], atol=1e-5)
    assert not np.allclose(c.images[idx], a.images[idx], atol=1e-2)
    # the in-memory path (notebook 01's preview) judges the images it is given
    src, neg = read_particles(ds.star), read_particles(negated)
    cfg = PreprocessConfig(box=16)
    np.testing.assert_allclose(
        preprocess_images(neg.images[idx], cfg, pixel_size=neg.pixel_size, ctf=neg.ctf),
        preprocess_images(src.images[idx], PreprocessConfig(box=16, invert=False), pixel_size=src.pixel_size,
                          ctf=src.ctf), atol=1e-5)


def test_phase_flipped_data_are_judged_as_they_are(tmp_path):
    ds = simulate(SimulationConfig(phantom="hinge", box=32, n_particles=48, snr=0.1, ctf=True, pixel_size=3.0),
                  tmp_path / "sim", progress=False)
    p = read_particles(ds.star)
    c = p.ctf
    ctf = compute_ctf(32, p.pixel_size, c.defocus_u, c.defocus_v, c.defocus_angle, c.voltage, c.cs,
                      c.amp_contrast, c.phase_shift, c.bfactor, half=True)
    write_stack(ds.stack, phase_flip(np.asarray(p.images[np.arange(len(p))]), ctf), p.pixel_size)
    star = starfile.read(ds.star, always_dict=True)
    star["particles"]["rlnCtfDataArePhaseFlipped"] = 1
    starfile.write(star, ds.star, overwrite=True)
    flipped = read_particles(ds.star)
    assert detect_contrast(flipped).invert is False
    # flipping them a second time would read the particles as dark: the flag is what prevents it
    assert detect_contrast(flipped, already_flipped=False).invert is True


def test_noise_is_undetermined_and_kept_with_a_warning(tmp_path):
    noise = np.random.default_rng(1).normal(0, 1, (20, 24, 24)).astype(np.float32)
    write_stack(tmp_path / "noise.mrcs", noise, 2.0)
    check = detect_contrast(read_particles(tmp_path / "noise.mrcs"))
    assert check.invert is None
    with pytest.warns(UserWarning, match="contrast undetermined .*noise.mrcs|noise.mrcs.*contrast undetermined"):
        out = preprocess_stack(tmp_path / "noise.mrcs", tmp_path / "o",
                               PreprocessConfig(normalise="none", mask_diameter=None), progress=False)
    np.testing.assert_allclose(out.images[np.arange(20)], noise, atol=1e-6)


def test_cli_prints_the_verdict_and_takes_either_choice(simulated, tmp_path, capsys):
    ds, negated = simulated
    assert cli_main(["preprocess", str(negated), "-o", str(tmp_path / "auto"), "--box", "16", "--no-progress"]) == 0
    assert "contrast inverted" in capsys.readouterr().out
    assert cli_main(["preprocess", str(negated), "-o", str(tmp_path / "kept"), "--box", "16", "--no-invert",
                     "--no-progress"]) == 0
    assert "contrast" not in capsys.readouterr().out.split("wrote")[0]
    assert load_config(PreprocessConfig, output_paths(tmp_path / "kept")["config"]).invert is False
    assert cli_main(["preprocess", str(negated), "-o", str(tmp_path / "x"), "--invert", "--no-invert"]) != 0
    assert "--no-invert: not allowed with argument --invert" in capsys.readouterr().err
