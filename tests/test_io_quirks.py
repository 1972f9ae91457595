"""The quirks of files other software writes, on small files the project writes itself.

``tests/data/quirks/`` holds tiny, deterministic stand-ins (made by ``tests/data/make_quirk_fixtures.py``)
for the real RELION/EMPIAR files in ``../shared/data``, which we may not ship: each carries one quirk
of those files, so a fresh clone tests every code path they reach. Expected values come from the
generator's own numbers and from independent readers (raw bytes, mrcfile, starfile), not from
``read_particles``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from cryovae_nb.errors import InputError
from cryovae_nb.io import open_stack, read_particles, write_particles_star
from cryovae_nb.preprocess import PreprocessConfig, output_paths, preprocess_stack

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
import make_quirk_fixtures as fx  # noqa: E402

QUIRKS = Path(__file__).resolve().parent / "data" / "quirks"


def raw_images(path) -> np.ndarray:
    """Images straight from the bytes after the 1024-byte header (every fixture is mode 2, no ext. header)."""
    data = np.fromfile(path, dtype="<f4", offset=1024)
    nx = int(np.fromfile(path, dtype="<i4", count=1)[0])
    return data.reshape(-1, nx, nx)


def header_bytes(path, offset, size) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def test_committed_fixtures_are_what_the_generator_writes(tmp_path):
    fresh = fx.write_all(tmp_path)
    made = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(QUIRKS) for p in QUIRKS.rglob("*") if p.is_file())
    assert made == committed
    for rel in made:
        assert (fresh / rel).read_bytes() == (QUIRKS / rel).read_bytes(), rel


def test_stampless_stack_and_relion31_optics():
    stack, star = QUIRKS / "relion31_nostamp.mrcs", QUIRKS / "relion31.star"
    # the quirk itself: no 'MAP ' at byte 208, a zero machine stamp, which strict readers reject
    assert header_bytes(stack, 208, 8) == b"\0" * 8
    with pytest.raises(ValueError):
        mrcfile.open(stack).close()
    with pytest.warns(UserWarning, match="MAP") as rec:
        p = read_particles(star)
    assert sum("relion31_nostamp.mrcs" in str(w.message) for w in rec) == 1  # once per file
    ref = starfile.read(star)
    optics, rows = ref["optics"], ref["particles"]
    assert len(p) == 5 and p.box == 16 and p.pixel_size == pytest.approx(2.806)
    np.testing.assert_allclose(p.ctf.defocus_u, rows["rlnDefocusU"])
    np.testing.assert_allclose(p.ctf.voltage, 300.0)
    np.testing.assert_allclose(p.ctf.cs, 0.01)
    np.testing.assert_allclose(p.ctf.amp_contrast, 0.1)
    assert (p.df["rlnVoltage"] == 300).all() and "rlnVoltage" not in p.particle_columns
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(p.pixel_size)
    np.testing.assert_allclose(p.poses.euler, rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]])
    np.testing.assert_allclose(p.poses.shifts, -rows[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 2.806)
    np.testing.assert_array_equal(p.images[:], fx.images(5, 16, 1))
    with pytest.warns(UserWarning, match="MAP"):
        s = open_stack(stack)
    assert s.pixel_size == 1.0 and len(s) == 5  # the header's own 1 Å; the STAR file wins above


def test_relion30_pixel_size_from_detector_and_zero_voxel_mrc_stack():
    stack = QUIRKS / "relion30_zero_voxel.mrc"
    assert np.frombuffer(header_bytes(stack, 40, 16), "<f4")[0] == 0.0  # cella.x: voxel size 0
    p = read_particles(QUIRKS / "relion30.star")
    assert len(p) == 7 and p.box == 20 and p.optics is None and p.poses is None
    assert p.pixel_size == pytest.approx(fx.DETECTOR_PIXEL_UM * 1e4 / fx.MAGNIFICATION, rel=1e-12)
    rows = starfile.read(QUIRKS / "relion30.star")
    np.testing.assert_allclose(p.ctf.defocus_v, rows["rlnDefocusV"])
    np.testing.assert_allclose(p.ctf.cs, 2.7)
    np.testing.assert_array_equal(p.images[[6, 0]], fx.images(7, 20, 2)[[6, 0]])
    # the bare '.mrc' stack: voxel size 0 means "unknown", never 0 Å
    bare = read_particles(stack)
    assert bare.pixel_size is None and bare.images.pixel_size is None and len(bare) == 7
    assert bare.df["rlnImageName"].iloc[0] == "000001@relion30_zero_voxel.mrc"


def test_relion5_images_relative_to_a_data_directory():
    star, datadir = QUIRKS / "relion5.star", QUIRKS / "relion5_datadir"
    with pytest.raises(InputError, match="images_a.mrcs.*does not exist") as e:
        read_particles(star)  # the stacks are not beside the STAR file
    assert "relion5.star" in str(e.value)
    with pytest.warns(UserWarning, match="rlnImageSize 448 disagrees"):
        p = read_particles(star, datadir=datadir)
    assert len(p) == 7 and p.box == 12
    assert p.pixel_size == pytest.approx(0.89)  # optics block, not the stacks' 1 Å headers
    optics = starfile.read(star)["optics"]
    assert "rlnCtfDataAreCtfPremultiplied" in optics.columns and "rlnOddZernike" in optics.columns
    np.testing.assert_allclose(p.ctf.voltage, 100.0)
    np.testing.assert_allclose(p.ctf.cs, 1.6)
    rows = starfile.read(star)["particles"]
    np.testing.assert_allclose(p.poses.shifts[:, 0], -rows["rlnOriginXAngst"] / 0.89)
    stacks = {"a": fx.images(4, 12, 3), "b": fx.images(3, 12, 4)}
    want = np.stack([stacks[s][i - 1] for s, i in fx.RELION5_ORDER])
    np.testing.assert_array_equal(p.images[:], want)
    np.testing.assert_array_equal(raw_images(datadir / "images_b.mrcs"), stacks["b"])


def test_extra_column_and_plain_star_layout():
    with pytest.warns(UserWarning, match="projections_nostamp.mrcs.*MAP"):
        p = read_particles(QUIRKS / "extra_column.star")
    assert len(p) == 6 and p.box == 10
    assert list(p.df["dummyVariable"]) == [1, 2, 3, 42, 42, 42]
    np.testing.assert_allclose(p.ctf.phase_shift, 90.0)
    np.testing.assert_allclose(p.ctf.defocus_u, 0.0)
    np.testing.assert_array_equal(p.images[:], fx.images(6, 10, 5))


def test_relion30_exported_as_relion31_keeps_pixel_size(tmp_path):
    old = read_particles(QUIRKS / "relion30.star")
    out = tmp_path / "r31.star"
    write_particles_star(out, old.subset([0, 2, 6]))
    blocks = starfile.read(out)
    assert len(blocks["optics"]) == 1 and "rlnMagnification" not in blocks["particles"].columns
    back = read_particles(out, datadir=QUIRKS)
    assert back.pixel_size == pytest.approx(old.pixel_size, rel=1e-10)
    np.testing.assert_array_equal(back.images[:], old.images[[0, 2, 6]])


def test_preprocess_quirky_inputs(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rlnImageSize quirk
        out = preprocess_stack(QUIRKS / "relion5.star", tmp_path / "r5", PreprocessConfig(coarsen=2),
                               datadir=QUIRKS / "relion5_datadir", progress=False)
    assert len(out) == 7 and out.box == 6 and out.pixel_size == pytest.approx(0.89 * 2)
    out = preprocess_stack(QUIRKS / "relion30.star", tmp_path / "r30", PreprocessConfig(box=10),
                           progress=False)
    assert out.pixel_size == pytest.approx(5e4 / 38168 * 2, rel=1e-6)
    with mrcfile.open(output_paths(tmp_path / "r30")["stack"]) as m:  # strict MRC with the voxel size
        assert float(m.voxel_size.x) == pytest.approx(5e4 / 38168 * 2, rel=1e-6)
    with pytest.warns(UserWarning, match="MAP"):
        out = preprocess_stack(QUIRKS / "relion31.star", tmp_path / "r31",
                               PreprocessConfig(phase_flip=True), progress=False)
    assert len(out) == 5 and out.pixel_size == pytest.approx(2.806)


def test_outside_files_skip_with_a_reason_when_absent(tmp_path):
    # a fresh clone has no ../shared: the tests on those files skip, saying why, and never fail
    env = dict(os.environ, CRYOVAE_SHARED_DATA=str(tmp_path / "nonexistent"))
    tests = Path(__file__).resolve().parent
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          str(tests / "test_io.py"), "-k", "relion31_star or read_real_volumes"],
                         capture_output=True, text=True, env=env, cwd=tests.parent, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 skipped" in run.stdout and "SKIPPED" in run.stdout
    assert "outside test data" in run.stdout and "nonexistent" in run.stdout
