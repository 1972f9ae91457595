"""Preprocessing: array functions against hand-computed / analytic results; the streaming pipeline
against the same functions applied in memory, on real RELION files and on failure paths."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil

import mrcfile
import numpy as np
import pytest
import starfile

from cryovae_nb.ctf import compute_ctf, phase_flip
from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.io import ParticleStack, read_particles, write_stack
from cryovae_nb.commands import preprocess as preprocess_command
from cryovae_nb.preprocess import (PreprocessConfig, apply_mask, coarsen, downsample_shifts, invert_contrast,
                                   normalise, output_paths, preprocess_images, preprocess_stack,
                                   train_test_split)
from cryovae_nb.volumes import diameter_mask, fourier_crop
from cryovae_nb.training.data import read_split

pytestmark = [pytest.mark.filterwarnings("ignore:.*no 'MAP ' stamp"),
              pytest.mark.filterwarnings("ignore:.*rlnImageSize 448 disagrees"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning:mrcfile")]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ----------------------------------------------------------------------------- coarsen

def test_coarsen_block_means():
    x = np.random.default_rng(0).normal(size=(2, 6, 6)).astype(np.float32)
    got = coarsen(x, 3)
    want = np.empty((2, 2, 2))
    for k in range(2):
        for i in range(2):
            for j in range(2):
                want[k, i, j] = x[k, 3 * i:3 * i + 3, 3 * j:3 * j + 3].mean()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(coarsen(np.full((8, 8), 2.5), 4), np.full((2, 2), 2.5))  # mean, not 1/c
    np.testing.assert_array_equal(coarsen(x, 1), x)


def test_coarsen_factor_must_divide_the_box():
    with pytest.raises(ConfigError, match=r"coarsen factor 4 does not divide the box size 6"):
        coarsen(np.zeros((1, 6, 6)), 4)
    with pytest.raises(ConfigError, match="positive integer"):
        coarsen(np.zeros((1, 6, 6)), 1.5)


# ----------------------------------------------------------------------------- Fourier crop

def _waves(n: int, centre: int, grid=None) -> np.ndarray:
    """A band-limited image (frequencies <= 5 cycles per box) centred on ``centre``."""
    j = (np.arange(n) if grid is None else grid) - centre
    x, y = j[None, :] / n, j[:, None] / n
    return (np.cos(2 * np.pi * (3 * x + 2 * y)) + 0.5 * np.sin(2 * np.pi * 5 * x)
            + 0.25 * np.cos(2 * np.pi * 4 * y) + 1.0)


@pytest.mark.parametrize("n,m", [(64, 32), (60, 40), (63, 21), (50, 15)])
def test_fourier_crop_matches_analytic_downsampling(n, m):
    img = _waves(n, n // 2).astype(np.float32)
    got = fourier_crop(img[None], m)[0]
    # the same continuous function sampled on the coarse grid, centre n//2 -> m//2
    want = _waves(n, 0, grid=(np.arange(m) - m // 2) * n / m)
    assert got.shape == (m, m) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_fourier_crop_keeps_constants_and_refuses_growth():
    np.testing.assert_allclose(fourier_crop(np.full((2, 40, 40), 3.0), 24), 3.0, atol=1e-5)
    with pytest.raises(ConfigError, match="integer in"):
        fourier_crop(np.zeros((1, 16, 16)), 20)


def _centroid(img):
    c = img.shape[-1] // 2
    j = np.arange(img.shape[-1]) - c
    w = img / img.sum()
    return np.array([(w.sum(0) * j).sum(), (w.sum(1) * j).sum()])  # (x, y) relative to the centre


@pytest.mark.parametrize("n,c,m", [(128, 4, None), (128, 1, 48), (127, 1, 51), (120, 2, 45)])
def test_downsample_shifts_follow_the_image_content(n, c, m):
    s = np.array([5.3, -7.6])
    j = np.arange(n) - n // 2
    img = np.exp(-((j[None, :] - s[0]) ** 2 + (j[:, None] - s[1]) ** 2) / (2 * 6.0 ** 2))
    out = coarsen(img, c)
    if m is not None:
        out = fourier_crop(out, m)
    np.testing.assert_allclose(_centroid(out), downsample_shifts(s, n, c, m), atol=0.02)


# ----------------------------------------------------------------------------- normalisation

def test_tanh_estimator_equals_eq_2_12_by_hand():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(4, 24, 24)) * [[[3.0]], [[0.1]], [[10.0]], [[1.0]]] + 5).astype(np.float32)
    got = normalise(x, "tanh", spread=0.3)
    for k in range(4):
        mu, sd = x[k].astype(np.float64).mean(), x[k].astype(np.float64).std()
        np.testing.assert_allclose(got[k], 0.5 * (np.tanh(0.3 * (x[k] - mu) / sd) + 1), atol=1e-6)
    assert got.min() > 0 and got.max() < 1
    # spread 0.3 keeps the slope small: a 1-sigma pixel sits at 0.5 +- 0.146
    assert 0.5 * (np.tanh(0.3) + 1) == pytest.approx(0.6457, abs=1e-4)


def test_normalise_with_background_ring():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 32, 32)).astype(np.float32)
    x[:, 10:22, 10:22] += 50  # a bright "particle" that must not set the scale
    got = normalise(x, "zscore", background_radius=12)
    for k in range(2):
        ring = [x[k, i, j] for i in range(32) for j in range(32) if np.hypot(i - 16, j - 16) > 12]
        mu, sd = np.mean(ring, dtype=np.float64), np.std(ring, dtype=np.float64)
        np.testing.assert_allclose(got[k], (x[k] - mu) / sd, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="no pixels outside"):
        normalise(x, "tanh", background_radius=40)


def test_zscore_minmax_and_flat_images():
    x = np.random.default_rng(3).gamma(2.0, size=(3, 16, 16)).astype(np.float32)
    z = normalise(x, "zscore")
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1, atol=1e-5)
    mm = normalise(x, "minmax")
    np.testing.assert_allclose(mm.min(axis=(1, 2)), 0, atol=1e-7)
    np.testing.assert_allclose(mm.max(axis=(1, 2)), 1, atol=1e-6)
    flat = np.full((1, 8, 8), 7.0)
    assert np.all(normalise(flat, "tanh") == 0.5) and np.all(normalise(flat, "zscore") == 0)
    with pytest.raises(ConfigError, match="normalise method"):
        normalise(x, "robust")
    with pytest.raises(ConfigError, match="background_radius"):
        normalise(x, "minmax", background_radius=3)


# ----------------------------------------------------------------------------- mask, invert, split

def test_disc_mask_radius_and_fraction():
    m = diameter_mask(64, 0.95, ndim=2)  # radius 30.4 px around pixel 32
    assert m[32, 32 + 30] == 1 and m[32, 32 + 31] == 0 and m[32 - 30, 32] == 1 and m[0, 0] == 0
    assert m.sum() / 64 ** 2 == pytest.approx(np.pi * 30.4 ** 2 / 64 ** 2, rel=0.01)
    soft = diameter_mask(64, 0.95, soft_edge=4.0, ndim=2)  # cosine from r = 26.4 to 30.4
    assert soft[32, 32 + 26] == 1 and soft[32, 32 + 31] == 0
    assert soft[32, 32 + 28] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.4)), abs=1e-6)
    assert np.all(np.diff(soft[32, 32:]) <= 0)
    with pytest.raises(ConfigError, match="soft edge"):
        diameter_mask(64, 0.95, soft_edge=40, ndim=2)


def test_masked_tanh_stack_lies_in_unit_interval_and_outside_is_zero():
    x = np.random.default_rng(4).normal(size=(5, 40, 40)) * 100
    out = apply_mask(normalise(x), diameter_mask(40, ndim=2))
    assert out.min() >= 0 and out.max() <= 1
    assert np.all(out[:, 0, 0] == 0) and np.all(out[:, 20, 20] > 0)
    np.testing.assert_array_equal(invert_contrast(x), -x.astype(np.float32))


def test_split_is_reproducible_disjoint_and_sized():
    a = train_test_split(1000, 0.15, seed=7)
    assert a.dtype == bool and a.sum() == 150
    np.testing.assert_array_equal(a, train_test_split(1000, 0.15, seed=7))
    assert not np.array_equal(a, train_test_split(1000, 0.15, seed=8))
    train, test = np.flatnonzero(~a), np.flatnonzero(a)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 1000
    assert train_test_split(10, 0.0).sum() == 0
    with pytest.raises(ConfigError):
        train_test_split(10, 1.0)


# ----------------------------------------------------------------------------- pipeline

@pytest.fixture
def stack(tmp_path):
    x = np.random.default_rng(5).normal(size=(23, 32, 32)).astype(np.float32)
    x[:, 8:24, 8:24] += 2.0
    path = tmp_path / "raw.mrcs"
    write_stack(path, x, 1.5)
    return path, x


def _by_hand(x, cfg: PreprocessConfig, box_out):
    y = invert_contrast(x) if cfg.invert else x
    y = coarsen(y, cfg.coarsen)
    y = fourier_crop(y, box_out) if y.shape[-1] != box_out else y
    y = normalise(y, cfg.normalise, cfg.spread, cfg.background_radius)
    return apply_mask(y, diameter_mask(box_out, cfg.mask_diameter, cfg.mask_soft_edge, ndim=2))


def test_chunked_pipeline_equals_whole_array(stack, tmp_path):
    path, x = stack
    before = _sha(path)
    cfg = PreprocessConfig(coarsen=2, box=12, invert=True, mask_diameter=0.9, mask_soft_edge=1.0,
                           chunk_size=5, background_radius=4.0, test_fraction=0.2, seed=3)
    out = preprocess_stack(path, tmp_path / "pp" / "out", cfg, progress=False)
    want = _by_hand(x, cfg, 12)
    assert len(out) == 23 and out.box == 12
    np.testing.assert_allclose(out.images[:], want, atol=1e-6)
    np.testing.assert_allclose(preprocess_images(x, cfg), want, atol=1e-6)
    # pixel size 1.5 * 2 (coarsen) * 16 / 12 (crop) in the header and in the STAR optics block
    with mrcfile.open(output_paths(tmp_path / "pp" / "out")["stack"]) as m:
        assert float(m.voxel_size.x) == pytest.approx(4.0)
        assert m.data.shape == (23, 12, 12) and m.data.dtype == np.float32
    optics = starfile.read(tmp_path / "pp" / "out.star", always_dict=True)["optics"]
    assert float(optics["rlnImagePixelSize"].iloc[0]) == pytest.approx(4.0)
    assert int(optics["rlnImageSize"].iloc[0]) == 12
    assert out.pixel_size == pytest.approx(4.0)
    train, test = read_split(output_paths(tmp_path / "pp" / "out")["split"], 23)
    is_test = train_test_split(23, 0.2, 3)
    np.testing.assert_array_equal(test, np.flatnonzero(is_test))
    np.testing.assert_array_equal(train, np.flatnonzero(~is_test))
    assert _sha(path) == before


def test_real_relion31_phase_flip_carries_ctf_and_poses(shared_data, tmp_path):
    star, mrcs = shared_data / "relion31.star", shared_data / "relion31.mrcs"
    hashes = (_sha(star), _sha(mrcs))
    cfg = PreprocessConfig(coarsen=2, box=64, phase_flip=True, invert=True, chunk_size=2)
    out = preprocess_stack(star, tmp_path / "flip.mrcs", cfg, progress=False)
    assert (_sha(star), _sha(mrcs)) == hashes

    src = starfile.read(star, always_dict=True)
    parts, optics = src["particles"], src["optics"]
    px = float(optics["rlnImagePixelSize"].iloc[0])  # 2.806
    with mrcfile.open(mrcs, permissive=True) as m:
        raw = np.array(m.data, dtype=np.float32)
    ctf = compute_ctf(256, px, parts["rlnDefocusU"], parts["rlnDefocusV"], parts["rlnDefocusAngle"],
                      300.0, 0.01, 0.1, parts["rlnPhaseShift"], parts["rlnCtfBfactor"])
    want = _by_hand(phase_flip(raw, ctf), cfg, 64)
    np.testing.assert_allclose(out.images[:], want, atol=1e-5)

    new = starfile.read(tmp_path / "flip.star", always_dict=True)
    new_px = px * 4
    assert float(new["optics"]["rlnImagePixelSize"].iloc[0]) == pytest.approx(new_px)
    stack_name = output_paths(tmp_path / "flip")["stack"].name  # flip.TAG.mrcs
    with mrcfile.open(tmp_path / stack_name) as m:
        assert float(m.voxel_size.x) == pytest.approx(new_px, rel=1e-6)
    p = new["particles"]
    for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        np.testing.assert_allclose(p[col], parts[col], atol=1e-6, err_msg=col)
    assert (p["rlnCtfDataArePhaseFlipped"] == 1).all()
    assert list(p["rlnImageName"]) == [f"{i:06d}@{stack_name}" for i in range(1, 6)]
    # origins: in Å they stay, up to the coarsening's (c-1)/2-pixel block-centre offset
    old_shift_px = -parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / px
    expect = -downsample_shifts(old_shift_px, 256, 2, 64) * new_px
    np.testing.assert_allclose(p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), expect, atol=1e-6)
    np.testing.assert_allclose(expect, -old_shift_px * px + 0.5 * px, atol=1e-9)  # 0.5 old px
    with pytest.raises(InputError, match="already phase flipped"):
        preprocess_stack(tmp_path / "flip.star", tmp_path / "again", PreprocessConfig(phase_flip=True),
                         progress=False)


def test_relion5_with_datadir_and_relion30_pixel_size(shared_data, tmp_path):
    out = preprocess_stack(shared_data / "relion5.star", tmp_path / "r5", PreprocessConfig(coarsen=3),
                           datadir=shared_data / "toy_datadir", progress=False)
    src = read_particles(shared_data / "relion5.star", datadir=shared_data / "toy_datadir")
    assert len(out) == len(src) == 17 and out.box == 10
    assert out.pixel_size == pytest.approx(src.pixel_size * 3)
    # the file has CTF columns: the default ("auto") standardises by the background outside the mask
    assert src.ctf is not None
    expected = PreprocessConfig(coarsen=3, normalise="standardise", background_radius=0.95 * 10 / 2)
    np.testing.assert_allclose(out.images[:], _by_hand(src.images[:], expected, 10), atol=1e-5)
    # RELION 3.0 file: pixel size only from detector pixel / magnification (5 um / 38168)
    out = preprocess_stack(shared_data / "empiar_10076_7.star", tmp_path / "e", PreprocessConfig(box=80),
                           progress=False)
    assert out.pixel_size == pytest.approx(5e4 / 38168 * 4, rel=1e-6)


def test_reads_only_chunks(stack, tmp_path, monkeypatch):
    from cryovae_nb.io import ParticleStack as PS

    path, _ = stack
    ranges = []
    real = PS.__getitem__

    def spy(st, key):
        if isinstance(key, slice):
            ranges.append((key.start, key.stop))
        return real(st, key)

    monkeypatch.setattr(PS, "__getitem__", spy)
    preprocess_stack(path, tmp_path / "o", PreprocessConfig(chunk_size=4), progress=False)
    assert sorted(ranges) == [(a, min(a + 4, 23)) for a in range(0, 23, 4)]


def test_chunked_reads_across_interleaved_stacks_and_int16(shared_data, tmp_path):
    import mrcfile as mf

    # relion5.star interleaves two stacks; a shuffled subset breaks every run of consecutive images
    p = read_particles(shared_data / "relion5.star", datadir=shared_data / "toy_datadir")
    names = p.df["rlnImageName"].str.split("@")
    expected = []
    for idx, rel in names:
        with mf.open(shared_data / "toy_datadir" / rel.split("/")[-1], permissive=True) as m:
            expected.append(np.asarray(m.data[int(idx) - 1], dtype=np.float32))
    expected = np.stack(expected)
    np.testing.assert_array_equal(p.images[:], expected)
    perm = np.random.default_rng(0).permutation(len(p))[:9]
    np.testing.assert_array_equal(p.subset(perm).images[2:9], expected[perm][2:9])
    # an int16 (mode 1) stack is converted to float32
    raw = np.random.default_rng(1).integers(-300, 300, size=(7, 16, 16)).astype(np.int16)
    with mf.new(tmp_path / "i16.mrcs") as m:
        m.set_data(raw)
    got = ParticleStack.open(tmp_path / "i16.mrcs")[1:6]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, raw[1:6])


def test_nan_image_is_named(tmp_path):
    x = np.ones((6, 16, 16), np.float32)
    x[4, 3, 3] = np.nan
    path = tmp_path / "nan.mrcs"
    with mrcfile.new(path) as m:  # write_stack refuses NaN, as it should; make a bad file anyway
        m.set_data(x)
    with pytest.raises(InputError, match=r"nan.mrcs: image 5 contains NaN"):
        preprocess_stack(path, tmp_path / "o", PreprocessConfig(chunk_size=4, pixel_size=1.0), progress=False)
    assert not (tmp_path / "o.mrcs").exists()


def test_refuses_to_overwrite_inputs_and_bad_configs_write_nothing(stack, tmp_path):
    path, _ = stack
    before = _sha(path)
    # the output's STAR file is the input: refused, the set left as it was
    ours = tmp_path / "set"
    preprocess_stack(path, ours / "o", PreprocessConfig(), progress=False)
    written = {p.name: _sha(p) for p in ours.iterdir()}
    for out in (ours / "o", ours / "o.mrcs", ours / "o.star"):
        with pytest.raises(InputError, match="refusing to overwrite"):
            preprocess_stack(ours / "o.star", out, PreprocessConfig(), progress=False)
    assert {p.name: _sha(p) for p in ours.iterdir()} == written
    shutil.rmtree(ours)
    with pytest.raises(ConfigError, match=r"raw.mrcs: coarsen factor 3 does not divide the box size 32"):
        preprocess_stack(path, tmp_path / "bad", PreprocessConfig(coarsen=3), progress=False)
    with pytest.raises(ConfigError, match="larger than the box"):
        preprocess_stack(path, tmp_path / "bad", PreprocessConfig(coarsen=2, box=20), progress=False)
    with pytest.raises(InputError, match="needs CTF"):
        preprocess_stack(path, tmp_path / "bad", PreprocessConfig(phase_flip=True), progress=False)
    with pytest.raises(ConfigError, match="spread"):
        preprocess_stack(path, tmp_path / "bad", PreprocessConfig(spread=0), progress=False)
    assert _sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.mrcs"]
    # the input stack's own name as the output: the new stack gets a name of its own beside it
    preprocess_stack(path, path, PreprocessConfig(), progress=False)
    assert _sha(path) == before and output_paths(path)["stack"] != path


def test_failure_midway_leaves_no_output(stack, tmp_path, monkeypatch):
    import cryovae_nb.preprocess as pp

    path, _ = stack
    calls = []
    real = pp._transform

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(pp, "_transform", failing)
    with pytest.raises(RuntimeError, match="boom"):
        preprocess_stack(path, tmp_path / "out", PreprocessConfig(chunk_size=4), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.mrcs"]


def test_cli(stack, tmp_path, capsys):
    path, x = stack
    parser = argparse.ArgumentParser()
    preprocess_command.add_arguments(parser)
    args = parser.parse_args([str(path), "-o", str(tmp_path / "cli"), "--coarsen", "2", "--box", "8",
                              "--normalise", "zscore", "--mask", "0", "--no-progress", "--seed", "4"])
    assert preprocess_command.run(args) == 0
    assert "wrote 23 images of 8 px" in capsys.readouterr().out
    got = read_particles(tmp_path / "cli.star")
    np.testing.assert_allclose(got.images[:], normalise(fourier_crop(coarsen(x, 2), 8), "zscore"), atol=1e-5)
    assert set(output_paths(tmp_path / "cli").values()) <= set(tmp_path.iterdir())
    from cryovae_nb.cli import main

    assert main(["preprocess", str(path), "-o", str(tmp_path / "c2"), "--coarsen", "5", "--no-progress"]) == 2
    assert "does not divide" in capsys.readouterr().err


def test_config_round_trip_and_validation(stack, tmp_path):
    from cryovae_nb.config import from_dict, load_config, save_config

    cfg = PreprocessConfig(coarsen=2, box=12, normalise="zscore", background_radius=3.0, seed=9)
    save_config(cfg, tmp_path / "pp.yaml")
    assert load_config(PreprocessConfig, tmp_path / "pp.yaml") == cfg
    preprocess_stack(stack[0], tmp_path / "o", cfg, progress=False)
    # the settings file records what was done: invert "auto" as the images decided it
    recorded = load_config(PreprocessConfig, output_paths(tmp_path / "o")["config"])
    assert recorded.invert in (True, False) and recorded == dataclasses.replace(cfg, invert=recorded.invert)
    for bad in ({"coarsen": 0}, {"normalise": "l2"}, {"test_fraction": 1.0}, {"chunk_size": 0},
                {"box": -4}, {"mask_soft_edge": -1.0}, {"invert": "yes"}, {"invert": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            from_dict(PreprocessConfig, bad)


def test_config_files_written_with_the_old_normalize_key_still_load(tmp_path):
    from cryovae_nb.config import from_dict, load_config

    (tmp_path / "old.json").write_text('{"coarsen": 2, "normalize": "zscore", "seed": 9}')
    cfg = load_config(PreprocessConfig, tmp_path / "old.json")
    assert cfg == PreprocessConfig(coarsen=2, normalise="zscore", seed=9)
    with pytest.raises(ConfigError, match="normalise must be"):
        from_dict(PreprocessConfig, {"normalize": "l2"})
    with pytest.raises(ConfigError, match="both 'normalize' and its new name 'normalise'"):
        from_dict(PreprocessConfig, {"normalize": "tanh", "normalise": "tanh"})
