"""cryovae_nb.io: real files written by other software, failure paths, and write/read round trips.

Expected values come from independent readers (mrcfile, starfile) and from RELION's own Euler
matrix formula, never from our reader itself.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import psutil
import pytest
import starfile

from cryovae_nb.errors import InputError
from cryovae_nb.io import (CTFParams, ParticleStack, Poses, StackWriter, make_image_names,
                           open_stack, read_particles, read_volume, write_particles_star,
                           write_particles_subset, write_stack, write_volume)
from cryovae_nb.io import mrc as mrc_module


def mrc_data(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as m:
            return np.array(m.data, dtype=np.float32)


def relion_euler_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION's Euler_angles2matrix (src/euler.cpp), written out independently of geometry.py."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


def quiet_read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_particles(path, **kw)


def make_mrc(path, data, *, voxel=1.5) -> str:
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore")  # mrcfile warns about the NaN files we make on purpose
        m.set_data(data)
        m.voxel_size = voxel
    return os.fspath(path)


def patch_header(path, offset, value, dtype="<i4"):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.array([value], dtype=dtype).tobytes())


# -- real files ------------------------------------------------------------------------------------
def test_relion31_star(shared_data):
    star = shared_data / "relion31.star"
    with pytest.warns(UserWarning, match="MAP") as rec:
        p = read_particles(star)
    assert sum("relion31.mrcs" in str(w.message) for w in rec) == 1  # once per file
    ref = starfile.read(star)
    optics, rows = ref["optics"], ref["particles"]
    assert len(p) == 5 and p.box == 256 and p.images.shape == (5, 256, 256)
    assert p.pixel_size == pytest.approx(2.806)
    np.testing.assert_allclose(p.ctf.defocus_u, rows["rlnDefocusU"])
    np.testing.assert_allclose(p.ctf.defocus_v, rows["rlnDefocusV"])
    np.testing.assert_allclose(p.ctf.defocus_angle, rows["rlnDefocusAngle"])
    np.testing.assert_allclose(p.ctf.voltage, 300.0)
    np.testing.assert_allclose(p.ctf.cs, 0.01)
    np.testing.assert_allclose(p.ctf.amp_contrast, 0.1)
    np.testing.assert_allclose(p.ctf.bfactor, 0.0)
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(p.pixel_size)
    # optics columns are merged into every particle row; the file's own columns are remembered
    assert (p.df["rlnVoltage"] == 300).all() and "rlnVoltage" not in p.particle_columns
    eul = rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(p.poses.euler, eul)
    origin_px = rows[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 2.806
    np.testing.assert_allclose(p.poses.shifts, -origin_px)
    for i in (0, 3):
        np.testing.assert_allclose(p.poses.rotations[i], relion_euler_matrix(*eul[i]).T, atol=1e-12)
    np.testing.assert_array_equal(p.images[:], mrc_data(shared_data / "relion31.mrcs"))


def test_empiar_relion30_star_and_zero_voxel_header(shared_data):
    p = read_particles(shared_data / "empiar_10076_7.star")
    assert len(p) == 7 and p.box == 320
    assert p.pixel_size == pytest.approx(5e4 / 38168, rel=1e-9)  # 1.3100 Å
    assert p.poses is None and p.optics is None
    rows = starfile.read(shared_data / "empiar_10076_7.star")
    np.testing.assert_allclose(p.ctf.defocus_u, rows["rlnDefocusU"])
    np.testing.assert_allclose(p.ctf.defocus_v, rows["rlnDefocusV"])
    np.testing.assert_allclose(p.ctf.cs, 2.7)
    np.testing.assert_allclose(p.ctf.amp_contrast, 0.07)
    np.testing.assert_allclose(p.ctf.phase_shift, 0.0)
    full = mrc_data(shared_data / "empiar_10076_7.mrc")
    np.testing.assert_array_equal(p.images[6], full[6])
    # the bare .mrc stack: voxel size 0 in the header means "unknown"
    bare = read_particles(shared_data / "empiar_10076_7.mrc")
    assert bare.pixel_size is None and bare.images.pixel_size is None and len(bare) == 7
    assert bare.df["rlnImageName"].iloc[0] == "000001@empiar_10076_7.mrc"


def test_relion5_star_with_datadir(shared_data):
    star, datadir = shared_data / "relion5.star", shared_data / "toy_datadir"
    with pytest.raises(InputError, match="toy_images_a.mrcs.*does not exist") as e:
        read_particles(star)  # images live in the data directory, not beside the star file
    assert "relion5.star" in str(e.value)
    with pytest.warns(UserWarning, match="rlnImageSize 448 disagrees"):  # a quirk of this file
        p = read_particles(star, datadir=datadir)
    rows = starfile.read(star)["particles"]
    assert len(p) == len(rows) == 17 and p.box == 30
    assert p.pixel_size == pytest.approx(0.89)  # optics block, not the stacks' 1.0 Å header
    assert sorted(os.path.basename(x) for x in p.images.paths) == ["toy_images_a.mrcs", "toy_images_b.mrcs"]
    np.testing.assert_allclose(p.ctf.voltage, 100.0)
    np.testing.assert_allclose(p.ctf.cs, 1.6)
    np.testing.assert_allclose(p.ctf.defocus_u, rows["rlnDefocusU"])
    np.testing.assert_allclose(p.poses.shifts[:, 0], -rows["rlnOriginXAngst"] / 0.89)
    eul = rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(p.poses.rotations[1], relion_euler_matrix(*eul[1]).T, atol=1e-12)
    stacks = {n: mrc_data(datadir / n) for n in ("toy_images_a.mrcs", "toy_images_b.mrcs")}
    images = p.images[:]
    for i, name in enumerate(rows["rlnImageName"]):
        k, f = name.split("@")
        np.testing.assert_array_equal(images[i], stacks[f][int(k) - 1])


def test_toy_projections_extra_column_and_stampless_stack(shared_data):
    with pytest.warns(UserWarning, match="toy_projections.mrcs.*MAP") as rec:
        p = read_particles(shared_data / "toy_projections.star")
    assert len([w for w in rec if "MAP" in str(w.message)]) == 1
    assert len(p) == 1000 and p.box == 30
    assert "dummyVariable" in p.df.columns and p.df["dummyVariable"].iloc[12] == 42
    np.testing.assert_allclose(p.ctf.phase_shift, 90.0)
    np.testing.assert_allclose(p.ctf.defocus_u, 0.0)
    np.testing.assert_allclose(p.ctf.cs, 0.001)
    np.testing.assert_array_equal(p.images[:], mrc_data(shared_data / "toy_projections.mrcs"))


def test_stampless_stack_opens_with_warning(shared_data):
    with pytest.warns(UserWarning, match="MAP"):
        s = open_stack(shared_data / "relion31.mrcs")
    assert len(s) == 5 and s.box == 256 and s.pixel_size == 1.0
    np.testing.assert_array_equal(s[2], mrc_data(shared_data / "relion31.mrcs")[2])


@pytest.mark.parametrize("name,shape", [("hand-vol.mrc", (64, 64, 64)),
                                        ("toymodel_small_nocenter.mrc", (30, 30, 30))])
def test_read_real_volumes(shared_data, name, shape):
    vol, voxel = read_volume(shared_data / name)
    assert vol.shape == shape and vol.dtype == np.float32 and voxel == pytest.approx(1.0)
    np.testing.assert_array_equal(vol, mrc_data(shared_data / name))


# -- indexing ----------------------------------------------------------------------------------------
def test_fancy_indexing_order_masks_and_slices(shared_data):
    full = mrc_data(shared_data / "toy_projections.mrcs")
    with pytest.warns(UserWarning):
        s = open_stack(shared_data / "toy_projections.mrcs")
    assert len(s) == 1000 and s.shape == (1000, 30, 30)
    np.testing.assert_array_equal(s[[3, 0, 3, 1]], full[[3, 0, 3, 1]])
    np.testing.assert_array_equal(s[np.array([999, -1, 5])], full[[999, 999, 5]])
    np.testing.assert_array_equal(s[10:40:7], full[10:40:7])
    mask = np.zeros(1000, bool)
    mask[[7, 500, 2]] = True
    np.testing.assert_array_equal(s[mask], full[[2, 7, 500]])
    assert s[np.int64(4)].shape == (30, 30)
    np.testing.assert_array_equal(s[-2], full[998])
    with pytest.raises(IndexError):
        s[1000]
    with pytest.raises(IndexError):
        s[np.zeros(3, bool)]
    chunks = list(s.iter_chunks(300))
    assert [c[0] for c in chunks] == [0, 300, 600, 900] and len(chunks[-1][1]) == 100
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), full)
    sub = s.subset([9, 4, 4])
    np.testing.assert_array_equal(sub[[2, 0]], full[[4, 9]])


def test_from_entries_many_files_and_bounded_handles(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    paths, datas = [], []
    for k in range(9):
        d = rng.standard_normal((4 + k, 8, 8)).astype(np.float32)
        paths.append(make_mrc(tmp_path / f"s{k}.mrcs", d))
        datas.append(d)
    monkeypatch.setattr(mrc_module, "_FILES", mrc_module._FileCache(3))
    file_ids = rng.integers(0, 9, 200)
    indices = np.array([rng.integers(0, 4 + f) for f in file_ids])
    s = ParticleStack.from_entries(paths, indices, file_ids)
    expected = np.stack([datas[f][i] for f, i in zip(file_ids, indices)])
    proc = psutil.Process()
    fds_before = proc.num_fds()
    order = rng.permutation(200)
    np.testing.assert_array_equal(s[order], expected[order])
    np.testing.assert_array_equal(s[:], expected)
    assert len(mrc_module._FILES._files) <= 3
    assert proc.num_fds() - fds_before <= 3
    with pytest.raises(InputError, match=r"s2\.mrcs.*outside the stack"):
        ParticleStack.from_entries(paths, [0, 6], [0, 2])  # s2 has 6 images (0..5)


def test_reading_few_images_does_not_read_whole_file(tmp_path):
    # a 1 GiB sparse stack: reading 120 scattered images must touch ~120 images' pages, not the file
    path = tmp_path / "big.mrcs"
    box, n = 128, 16384
    make_mrc(path, np.ones((1, box, box), np.float32))
    patch_header(path, 8, n)
    os.truncate(path, 1024 + n * box * box * 4)
    s = open_stack(path)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    idx = np.random.default_rng(1).choice(n, 120, replace=False)
    images = s[idx]
    grown = proc.memory_info().rss - rss0
    assert images.shape == (120, box, box) and np.all(images[idx != 0] == 0)
    assert grown < 100 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB reading 120 images of 1 GiB"


# -- failure paths -----------------------------------------------------------------------------------
def test_bad_stacks_raise_input_error_naming_the_file(tmp_path):
    ok = np.zeros((3, 8, 8), np.float32)
    truncated = make_mrc(tmp_path / "truncated.mrcs", ok)
    os.truncate(truncated, os.path.getsize(truncated) - 100)
    complex_mode = make_mrc(tmp_path / "mode4.mrcs", ok)
    patch_header(complex_mode, 12, 4)
    odd_mode = make_mrc(tmp_path / "mode9.mrcs", ok)
    patch_header(odd_mode, 12, 9)
    nonsquare = make_mrc(tmp_path / "nonsquare.mrcs", np.zeros((3, 8, 6), np.float32))
    empty = make_mrc(tmp_path / "empty.mrcs", ok)
    patch_header(empty, 8, 0)
    garbage = tmp_path / "garbage.mrcs"
    garbage.write_bytes(b"\xff" * 2048)
    short = tmp_path / "short.mrcs"
    short.write_bytes(b"MAP " * 10)
    cases = [(truncated, "truncated"), (complex_mode, "mode 4.*complex"), (odd_mode, "mode 9"),
             (nonsquare, "not square"), (empty, "empty"), (garbage, "corrupt"),
             (short, "shorter than"), (tmp_path / "missing.mrcs", "not found")]
    for path, message in cases:
        with pytest.raises(InputError, match=message) as e:
            open_stack(path)
        assert os.path.basename(path) in str(e.value)
    with pytest.raises(InputError, match="truncated"):
        read_volume(truncated)


def test_nan_images_fail_when_read(tmp_path):
    data = np.ones((4, 8, 8), np.float32)
    data[2, 3, 3] = np.nan
    data[3, 0, 0] = np.inf
    s = open_stack(make_mrc(tmp_path / "nan.mrcs", data))
    np.testing.assert_array_equal(s[[0, 1]], 1.0)  # clean images still read
    with pytest.raises(InputError, match=r"nan\.mrcs: image 3 contains NaN"):
        s[[1, 2]]
    with pytest.raises(InputError, match="image 4 contains"):
        s[3]
    vol = np.zeros((4, 4, 4), np.float32)
    vol[1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        read_volume(make_mrc(tmp_path / "nanvol.mrc", vol))


def test_integer_float16_and_big_endian_modes(tmp_path):
    rng = np.random.default_rng(2)
    for dtype in (np.int8, np.int16, np.uint16, np.float16):
        data = rng.integers(-100 if dtype != np.uint16 else 0, 100, (3, 6, 6)).astype(dtype)
        s = open_stack(make_mrc(tmp_path / f"m_{np.dtype(dtype).name}.mrcs", data))
        out = s[[2, 0]]
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, data[[2, 0]].astype(np.float32))
    # big-endian file: header and data byte-swapped, machine stamp 0x11 0x11
    data = rng.standard_normal((2, 6, 6)).astype(np.float32)
    path = make_mrc(tmp_path / "big_endian.mrcs", data)
    raw = bytearray(Path(path).read_bytes())
    words = np.frombuffer(bytes(raw[:208]), "<i4").byteswap().tobytes()  # all 4-byte numeric fields
    raw[:208] = words
    raw[212:216] = b"\x11\x11\x00\x00"
    raw[1024:] = data.astype(">f4").tobytes()
    Path(path).write_bytes(bytes(raw))
    s = open_stack(path)
    np.testing.assert_array_equal(s[:], data)
    assert s.pixel_size == pytest.approx(1.5)


def write_star(path, df, optics=None):
    blocks = {"particles": df} if optics is None else {"optics": optics, "particles": df}
    starfile.write(blocks, path)
    return path


def test_bad_star_files(tmp_path):
    stack = make_mrc(tmp_path / "stack.mrcs", np.zeros((3, 8, 8), np.float32))
    no_names = write_star(tmp_path / "nonames.star", pd.DataFrame({"rlnDefocusU": [1.0, 2.0]}))
    with pytest.raises(InputError, match="nonames.star.*no rlnImageName"):
        read_particles(no_names)
    past = write_star(tmp_path / "past.star",
                      pd.DataFrame({"rlnImageName": ["1@stack.mrcs", "4@stack.mrcs", "2@stack.mrcs"]}))
    with pytest.raises(InputError, match=r"past.star: row 2: image 4@stack.mrcs is past the end.*3 images"):
        read_particles(past)
    missing = write_star(tmp_path / "missing.star",
                         pd.DataFrame({"rlnImageName": ["1@stack.mrcs", "1@gone/nothere.mrcs"]}))
    with pytest.raises(InputError, match=r"missing.star: row 2 .*nothere.mrcs.*does not exist"):
        read_particles(missing)
    garbled = write_star(tmp_path / "garbled.star", pd.DataFrame({"rlnImageName": ["x@stack.mrcs"]}))
    with pytest.raises(InputError, match="garbled.star: row 1: cannot parse rlnImageName"):
        read_particles(garbled)
    with pytest.raises(InputError, match="absent.star: file not found"):
        read_particles(tmp_path / "absent.star")
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0]})
    bad_group = write_star(tmp_path / "group.star",
                           pd.DataFrame({"rlnImageName": ["1@stack.mrcs"], "rlnOpticsGroup": [2]}), optics)
    with pytest.raises(InputError, match=r"optics group\(s\) \[2\]"):
        read_particles(bad_group)
    assert os.path.exists(stack)  # inputs untouched


# -- round trips --------------------------------------------------------------------------------------
def test_volume_round_trip(tmp_path):
    vol = np.random.default_rng(3).standard_normal((10, 12, 14)).astype(np.float32)
    path = tmp_path / "out" / "vol.mrc"
    write_volume(path, vol, 2.25)
    back, voxel = read_volume(path)
    np.testing.assert_array_equal(back, vol)
    assert voxel == pytest.approx(2.25)
    with mrcfile.open(path) as m:  # strict mode: a valid file for other software
        assert m.voxel_size.x == pytest.approx(2.25) and m.voxel_size.z == pytest.approx(2.25)
        assert (m.header.origin.x, m.header.origin.y, m.header.origin.z) == (0, 0, 0)
        assert m.header.dmax == pytest.approx(vol.max()) and m.header.rms == pytest.approx(vol.std(), rel=1e-5)
    assert sorted(os.listdir(path.parent)) == ["vol.mrc"]  # no temporaries left behind
    with pytest.raises(ValueError, match="NaN"):
        write_volume(tmp_path / "bad.mrc", np.full((2, 2, 2), np.nan), 1.0)
    assert not (tmp_path / "bad.mrc").exists()


def test_stack_writer_round_trip_and_failures(tmp_path):
    images = np.random.default_rng(4).standard_normal((10, 16, 16)).astype(np.float32)
    path = tmp_path / "w.mrcs"
    with StackWriter(path, 10, 16, 3.5) as w:
        assert not path.exists()  # only a temporary until the block closes
        for start in range(0, 10, 4):
            w.write(images[start:start + 4])
    s = open_stack(path)
    np.testing.assert_array_equal(s[:], images)
    assert s.pixel_size == pytest.approx(3.5)
    with mrcfile.open(path) as m:
        assert m.is_image_stack() and m.header.mode == 2
        assert m.header.dmin == pytest.approx(images.min()) and m.header.dmean == pytest.approx(images.mean(), abs=1e-6)
        assert m.header.rms == pytest.approx(images.std(), rel=1e-5)
    with pytest.raises(ValueError, match="4 of 10"):
        with StackWriter(tmp_path / "short.mrcs", 10, 16, 1.0) as w:
            w.write(images[:4])
    with pytest.raises(RuntimeError):
        with StackWriter(tmp_path / "boom.mrcs", 10, 16, 1.0) as w:
            w.write(images[:4])
            raise RuntimeError("crash mid-write")
    assert sorted(os.listdir(tmp_path)) == ["w.mrcs"]
    write_stack(tmp_path / "ws.mrcs", images[:3], 1.25)
    np.testing.assert_array_equal(open_stack(tmp_path / "ws.mrcs")[:], images[:3])


def test_star_export_of_a_subset_round_trips(tmp_path, shared_data):
    p = quiet_read(shared_data / "relion31.star")
    sub = p.subset([4, 0, 2])
    out = tmp_path / "subset.star"
    write_particles_star(out, sub)
    blocks = starfile.read(out)
    original = starfile.read(shared_data / "relion31.star")
    assert list(blocks["particles"].columns) == list(original["particles"].columns)
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(2.806)
    assert blocks["optics"]["rlnImageSize"].iloc[0] == 256
    expect = original["particles"].iloc[[4, 0, 2]].reset_index(drop=True)
    for col in expect.columns:
        if expect[col].dtype.kind in "if":
            np.testing.assert_allclose(blocks["particles"][col], expect[col], rtol=1e-10, err_msg=col)
        elif col != "rlnImageName":
            assert list(blocks["particles"][col]) == list(expect[col]), col
    # names found beside the source STAR are rewritten to resolve from the new file's folder
    for new, old in zip(blocks["particles"]["rlnImageName"], expect["rlnImageName"]):
        assert new.split("@")[0] == old.split("@")[0]
        assert (out.parent / new.split("@")[1]).resolve() == (shared_data / old.split("@")[1]).resolve()
    back = quiet_read(out)
    assert back.pixel_size == pytest.approx(2.806) and len(back) == 3
    np.testing.assert_allclose(back.ctf.defocus_u, sub.ctf.defocus_u)
    np.testing.assert_allclose(back.poses.rotations, sub.poses.rotations, atol=1e-10)
    np.testing.assert_allclose(back.poses.shifts, sub.poses.shifts, atol=1e-10)
    np.testing.assert_array_equal(back.images[:], p.images[[4, 0, 2]])


def test_star_export_with_new_stack_poses_and_pixel_size(tmp_path, shared_data):
    p = quiet_read(shared_data / "relion5.star", datadir=shared_data / "toy_datadir")
    coarse = p.images[:].reshape(17, 15, 2, 15, 2).mean(axis=(2, 4))  # 2x2 binning
    write_stack(tmp_path / "stacks" / "binned.mrcs", coarse, 1.78)
    rng = np.random.default_rng(5)
    learned = Poses.from_matrices(Rotation_random(rng, 17), rng.uniform(-3, 3, (17, 2)))
    out = tmp_path / "binned.star"
    names = make_image_names(tmp_path / "stacks" / "binned.mrcs", 17, relative_to=out)
    assert names[0] == "000001@stacks/binned.mrcs"
    write_particles_star(out, p, image_names=names, poses=learned, pixel_size=1.78)
    back = read_particles(out)
    assert back.pixel_size == pytest.approx(1.78) and back.box == 15
    assert starfile.read(out)["optics"]["rlnImageSize"].iloc[0] == 15
    np.testing.assert_allclose(back.poses.rotations, learned.rotations, atol=1e-9)
    np.testing.assert_allclose(back.poses.shifts, learned.shifts, atol=1e-9)
    np.testing.assert_allclose(back.ctf.defocus_u, p.ctf.defocus_u)
    np.testing.assert_allclose(back.ctf.voltage, 100.0)
    np.testing.assert_allclose(back.images[:], coarse, rtol=1e-6)


def Rotation_random(rng, n):
    from scipy.spatial.transform import Rotation
    return Rotation.random(n, random_state=rng).as_matrix()


def test_star_export_from_dataframe_and_relion30(tmp_path, shared_data):
    # what the synthetic / preprocess pieces do: a new stack plus a plain DataFrame of RELION columns
    images = np.random.default_rng(6).standard_normal((4, 12, 12)).astype(np.float32)
    write_stack(tmp_path / "sim.mrcs", images, 4.0)
    df = pd.DataFrame({"rlnDefocusU": [1e4, 1.1e4, 1.2e4, 1.3e4], "rlnDefocusV": 9e3,
                       "rlnDefocusAngle": 10.0, "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                       "rlnAmplitudeContrast": 0.1})
    rot = Rotation_random(np.random.default_rng(7), 4)
    out = tmp_path / "sim.star"
    write_particles_star(out, df, image_names=make_image_names(tmp_path / "sim.mrcs", 4, tmp_path),
                         poses=(rot, np.zeros((4, 2))), pixel_size=4.0)
    blocks = starfile.read(out)
    assert blocks["optics"]["rlnImageSize"].iloc[0] == 12 and "rlnVoltage" in blocks["optics"].columns
    assert "rlnVoltage" not in blocks["particles"].columns
    back = read_particles(out)
    assert back.pixel_size == 4.0 and back.ctf.voltage[0] == 300.0
    np.testing.assert_allclose(back.ctf.defocus_u, df["rlnDefocusU"])
    np.testing.assert_allclose(back.poses.rotations, rot, atol=1e-9)
    np.testing.assert_array_equal(back.images[:], images)
    # RELION 3.0 input (no optics block, pixel size from detector/magnification) -> 3.1 output
    old = read_particles(shared_data / "empiar_10076_7.star")
    out30 = tmp_path / "empiar31.star"
    write_particles_star(out30, old.subset(np.array([True, False, True, False, False, False, True])))
    blocks = starfile.read(out30)
    assert len(blocks["optics"]) == 1 and blocks["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(1.31, abs=1e-4)
    assert "rlnMagnification" not in blocks["particles"].columns
    back = read_particles(out30, datadir=shared_data)
    assert back.pixel_size == pytest.approx(old.pixel_size, rel=1e-10)
    np.testing.assert_allclose(back.ctf.defocus_v, old.ctf.defocus_v[[0, 2, 6]])
    np.testing.assert_array_equal(back.images[:], old.images[[0, 2, 6]])


def test_ctf_and_pose_containers_index_together(shared_data):
    p = quiet_read(shared_data / "relion31.star")
    idx = np.array([3, 1])
    assert isinstance(p.ctf[idx], CTFParams) and len(p.ctf[idx]) == 2
    np.testing.assert_array_equal(p.ctf[idx].defocus_u, p.ctf.defocus_u[idx])
    np.testing.assert_array_equal(p.poses[idx].rotations, p.poses.rotations[idx])
    sub = p.subset(idx)
    np.testing.assert_array_equal(sub.ctf.defocus_u, p.ctf.defocus_u[idx])
    assert list(sub.df["rlnImageName"]) == list(p.df["rlnImageName"].iloc[idx])


def test_relion30_pixel_origins_and_mixed_pixel_sizes(tmp_path):
    images = np.random.default_rng(8).standard_normal((3, 10, 10)).astype(np.float32)
    make_mrc(tmp_path / "p.mrcs", images)
    df = pd.DataFrame({"rlnImageName": ["3@p.mrcs", "1@p.mrcs", "2@p.mrcs"],
                       "rlnAngleRot": [10.0, 20.0, 30.0], "rlnAngleTilt": [40.0, 50.0, 60.0],
                       "rlnAnglePsi": [70.0, 80.0, 90.0], "rlnOriginX": [1.5, -2.0, 0.25],
                       "rlnOriginY": [0.5, 3.0, -1.0], "rlnDetectorPixelSize": 14.0,
                       "rlnMagnification": 50000.0})
    star = write_star(tmp_path / "old.star", df)
    p = read_particles(star)
    assert p.pixel_size == pytest.approx(2.8)  # 14 µm * 1e4 / 50000
    np.testing.assert_allclose(p.poses.shifts, -df[["rlnOriginX", "rlnOriginY"]].to_numpy())
    np.testing.assert_array_equal(p.images[:], images[[2, 0, 1]])
    out = tmp_path / "new.star"
    write_particles_star(out, p)
    written = starfile.read(out)["particles"]
    assert "rlnOriginX" not in written.columns
    np.testing.assert_allclose(written["rlnOriginXAngst"], df["rlnOriginX"] * 2.8)
    back = read_particles(out)
    np.testing.assert_allclose(back.poses.shifts, p.poses.shifts, atol=1e-12)
    np.testing.assert_allclose(back.poses.euler, p.poses.euler, atol=1e-9)
    # two optics groups with different pixel sizes cannot feed one model
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnImagePixelSize": [1.0, 1.2]})
    mixed = write_star(tmp_path / "mixed.star", pd.DataFrame(
        {"rlnImageName": ["1@p.mrcs", "2@p.mrcs"], "rlnOpticsGroup": [1, 2]}), optics)
    with pytest.raises(InputError, match="mixed.star: rlnImagePixelSize differs"):
        read_particles(mixed)


def test_star_export_of_kept_particles(shared_data, tmp_path):
    with pytest.warns(UserWarning, match="MAP"):  # a real quirk of this file (see README)
        parts = read_particles(shared_data / "relion31.star")
    keep = np.array([True, False, True, True, False])
    out = tmp_path / "kept.star"
    assert write_particles_subset(out, parts, keep) == 3
    # the image names are rewritten to resolve from the new file's folder: no datadir needed
    with pytest.warns(UserWarning, match="MAP"):
        back = read_particles(out)
    assert len(back) == 3
    assert [n.split("@")[0] for n in back.df["rlnImageName"]] == \
        [n.split("@")[0] for n in parts.df["rlnImageName"][keep]]
    np.testing.assert_allclose(back.df["rlnDefocusU"], parts.df["rlnDefocusU"][keep])
    np.testing.assert_array_equal(back.images[:], parts.images[np.flatnonzero(keep)])
    with pytest.raises(InputError, match="5 particles"):
        write_particles_subset(out, parts, keep[:4])
    with pytest.raises(InputError, match="no particles"):
        write_particles_subset(tmp_path / "none.star", parts, np.zeros(5, bool))
