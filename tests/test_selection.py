"""Selections back to RELION (issue #12): preprocessing records each particle's original row, and
every selection is written as rows of the user's own STAR file, read back with ``starfile``.

The originals are written here as RELION writes them (3.1 with two optics groups and columns the
tool never reads; 3.0 without optics, origins in pixels), plus the committed quirk fixtures and,
when present, the real files in ../shared/data. Each goes through ``cryovae preprocess`` (a Fourier
crop) before a selection is made on the preprocessed particles.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryovae_nb import cli
from cryovae_nb.errors import InputError
from cryovae_nb.geometry import relion_origin_to_shift
from cryovae_nb.io import SOURCE_INDEX, Poses, read_particles, write_stack
from cryovae_nb.preprocess import PreprocessConfig, downsample_shifts, original_shifts, preprocess_stack
from cryovae_nb.selection import as_rows, learned_poses, selection_paths, write_selection

QUIRKS = Path(__file__).parent / "data" / "quirks"
N, BOX, PX = 12, 24, 1.25


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _images(n, box, seed=0):
    return np.random.default_rng(seed).normal(size=(n, box, box)).astype(np.float32)


def relion31_star(folder: Path) -> Path:
    """A RELION 3.1 run_data.star: two optics groups, per-particle CTF and poses, and columns the
    tool never reads (micrograph names, class numbers, a random subset, a string column)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_stack(folder / "Extract" / "parts.mrcs", _images(N, BOX), PX)
    rng = np.random.default_rng(1)
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
        "rlnAmplitudeContrast": [0.1, 0.07], "rlnSphericalAberration": [2.7, 2.7],
        "rlnVoltage": [300.0, 300.0], "rlnImagePixelSize": [PX, PX], "rlnImageSize": [BOX, BOX],
        "rlnImageDimensionality": [2, 2]})
    parts = pd.DataFrame({
        "rlnCoordinateX": rng.uniform(0, 4000, N).round(2), "rlnCoordinateY": rng.uniform(0, 4000, N).round(2),
        "rlnImageName": [f"{i + 1:06d}@Extract/parts.mrcs" for i in range(N)],
        "rlnMicrographName": [f"MotionCorr/job002/mic_{i % 3:03d}.mrc" for i in range(N)],
        "rlnDefocusU": rng.uniform(10000, 25000, N).round(1), "rlnDefocusV": rng.uniform(10000, 25000, N).round(1),
        "rlnDefocusAngle": rng.uniform(0, 180, N).round(3), "rlnOpticsGroup": [1 + (i % 2) for i in range(N)],
        "rlnAngleRot": rng.uniform(-180, 180, N).round(4), "rlnAngleTilt": rng.uniform(0, 180, N).round(4),
        "rlnAnglePsi": rng.uniform(-180, 180, N).round(4),
        "rlnOriginXAngst": rng.uniform(-5, 5, N).round(4), "rlnOriginYAngst": rng.uniform(-5, 5, N).round(4),
        "rlnClassNumber": rng.integers(1, 4, N), "rlnRandomSubset": [1 + (i % 2) for i in range(N)],
        "rlnGroupName": [f"group_{i % 4}" for i in range(N)], "rlnNormCorrection": rng.uniform(0.9, 1.1, N).round(5),
    })
    path = folder / "run_data.star"
    starfile.write({"optics": optics, "particles": parts}, path, float_format="%.6f")
    return path


def relion30_star(folder: Path) -> Path:
    """A RELION 3.0 file: one data_ block, optics per particle, origins in pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    write_stack(folder / "parts30.mrcs", _images(N, BOX, 2), PX)
    rng = np.random.default_rng(3)
    parts = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@parts30.mrcs" for i in range(N)],
        "rlnMicrographName": [f"mic_{i % 2}.mrc" for i in range(N)],
        "rlnDefocusU": rng.uniform(10000, 25000, N).round(1), "rlnDefocusV": rng.uniform(10000, 25000, N).round(1),
        "rlnDefocusAngle": rng.uniform(0, 180, N).round(3), "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.1, "rlnDetectorPixelSize": 5.0, "rlnMagnification": 5e4 / PX,
        "rlnAngleRot": rng.uniform(-180, 180, N).round(4), "rlnAngleTilt": rng.uniform(0, 180, N).round(4),
        "rlnAnglePsi": rng.uniform(-180, 180, N).round(4),
        "rlnOriginX": rng.uniform(-3, 3, N).round(3), "rlnOriginY": rng.uniform(-3, 3, N).round(3),
        "rlnClassNumber": rng.integers(1, 4, N),
    })
    path = folder / "particles30.star"
    starfile.write({"": parts}, path, float_format="%.6f")
    return path


def _preprocess_cli(star: Path, out: Path, box: int, *extra: str) -> Path:
    assert cli.main(["preprocess", str(star), "-o", str(out), "--box", str(box), "--no-progress", *extra]) == 0
    return out.with_suffix(".star")


def _check_subset(original: Path, written: Path, rows: np.ndarray) -> None:
    """``written`` holds exactly ``rows`` of ``original``: every block, column and value."""
    a = starfile.read(original, always_dict=True)
    b = starfile.read(written, always_dict=True)
    assert list(a) == list(b)
    loops = [k for k, v in a.items() if isinstance(v, pd.DataFrame) and "rlnImageName" in v.columns]
    name = "particles" if "particles" in loops else loops[0]
    for k in a:
        if k == name:
            want = a[k].iloc[rows].reset_index(drop=True)
            assert list(b[k].columns) == list(want.columns)
            pd.testing.assert_frame_equal(b[k].reset_index(drop=True), want, check_dtype=False)
        elif isinstance(a[k], pd.DataFrame):
            pd.testing.assert_frame_equal(b[k], a[k], check_dtype=False)  # the optics table, whole
        else:
            assert b[k] == a[k]


@pytest.mark.parametrize("make", [relion31_star, relion30_star], ids=["relion31", "relion30"])
def test_selection_of_preprocessed_particles_is_a_subset_of_the_original(tmp_path, make):
    original = make(tmp_path / "project")
    before = _sha(original)
    pre_star = _preprocess_cli(original, tmp_path / "pre" / "particles", 16)
    pre = read_particles(pre_star)
    assert pre.box == 16
    np.testing.assert_array_equal(pre.df[SOURCE_INDEX], np.arange(N))
    assert pre.provenance["cryovaeSourceStar"] == str(original.resolve())
    assert pre.provenance["cryovaeSourceSha256"] == before
    assert int(pre.provenance["cryovaeSourceBox"]) == BOX

    # a lasso on a shuffled subset of the preprocessed particles (as the landscape notebook does)
    sub = pre.subset(np.array([9, 2, 7, 4, 11]))
    sel = write_selection(sub, np.array([0, 1, 3]), tmp_path / "out" / "lasso")
    assert sel.star == tmp_path / "out" / "lasso.star"
    np.testing.assert_array_equal(sel.indices, [2, 4, 9])  # in the original's order
    np.testing.assert_array_equal(np.load(sel.indices_file, allow_pickle=False), [2, 4, 9])
    _check_subset(original, sel.star, np.array([2, 4, 9]))
    assert _sha(original) == before  # the original is never written
    # the original image names, resolvable from the project folder, as RELION reads them
    names = starfile.read(sel.star, always_dict=True)
    parts = names["particles" if "particles" in names else ""]
    assert all(not n.split("@")[1].startswith(("/", "..")) for n in parts["rlnImageName"])


def test_quirk_fixtures_and_relion5_datadir(tmp_path):
    for star, datadir in (("relion31.star", None), ("relion30.star", None),
                          ("relion5.star", QUIRKS / "relion5_datadir")):
        src = read_particles(QUIRKS / star, datadir=datadir)
        cfg = PreprocessConfig(box=src.box // 2 * 2 - 4 if src.box > 8 else None)
        pre = preprocess_stack(src, tmp_path / star.replace(".star", "") / "p", cfg, progress=False)
        rows = np.arange(0, len(pre), 2)
        sel = write_selection(pre, rows, tmp_path / f"sel_{star}")
        _check_subset(QUIRKS / star, sel.star, rows)


def _is_subsequence(lines, of) -> bool:
    it = iter(of)
    return all(any(line == o for o in it) for line in lines)


def test_the_subset_is_the_originals_own_text(tmp_path):
    """RELION reads the selection exactly as it read the original: its lines, less the rows not
    selected (numbers as written, 300.000000 not 300; comments; tabs or spaces; CRLF ends)."""
    crlf = tmp_path / "crlf"
    crlf.mkdir()
    shutil.copy(QUIRKS / "relion31_nostamp.mrcs", crlf)
    (crlf / "relion31.star").write_bytes((QUIRKS / "relion31.star").read_bytes().replace(b"\n", b"\r\n"))
    made = relion31_star(tmp_path / "made")  # starfile's layout: a header comment, tab-separated
    for star, datadir in ((QUIRKS / "relion31.star", None), (QUIRKS / "relion30.star", None),
                          (QUIRKS / "relion5.star", QUIRKS / "relion5_datadir"), (crlf / "relion31.star", None),
                          (made, None)):
        src = read_particles(star, datadir=datadir)
        pre = preprocess_stack(src, tmp_path / star.parent.name / star.stem / "p", PreprocessConfig(), progress=False)
        rows = np.arange(0, len(pre), 2)
        sel = write_selection(pre, rows, tmp_path / "sel" / f"{star.parent.name}_{star.stem}")
        _check_subset(star, sel.star, rows)
        original = star.read_bytes().splitlines(keepends=True)
        written = sel.star.read_bytes().splitlines(keepends=True)
        assert _is_subsequence(written, original) and len(original) - len(written) == len(pre) - len(rows), star
    assert b"300.000000" in (tmp_path / "sel" / "quirks_relion31.star").read_bytes()
    assert b"# version 30001\r\n" in (tmp_path / "sel" / "crlf_relion31.star").read_bytes()
    # poses written in: only their fields change, the other fields keep the original's text
    pre = read_particles(tmp_path / "quirks" / "relion31" / "p.star")
    rot = np.stack([np.eye(3)] * len(pre))
    sel = write_selection(pre, [1, 3], tmp_path / "sel" / "posed", poses=Poses.from_matrices(rot, np.zeros((len(pre), 2))))
    original = (QUIRKS / "relion31.star").read_text().splitlines()
    written = sel.star.read_text().splitlines()
    assert len(written) == len(original) - (len(pre) - 2)
    head = original.index("_rlnImageName #1")
    cols = [line.split()[0] for line in original[head:head + 13]]
    for r, line in zip((1, 3), [line for line in written if "@" in line], strict=True):
        before, after = original[head + 13 + r].split(), line.split()
        assert len(after) == len(before) == len(cols)
        for c, a, b in zip(cols, before, after):
            if c in ("_rlnAngleRot", "_rlnAngleTilt", "_rlnAnglePsi", "_rlnOriginXAngst", "_rlnOriginYAngst"):
                assert float(b) == 0.0
            else:
                assert a == b, (c, a, b)


def test_a_star_layout_read_only_by_parsing_is_written_from_the_table(tmp_path):
    """A row over two lines is valid STAR that ``subset_text`` does not follow: the selection is
    then the parsed table written again (the values, not the text)."""
    from cryovae_nb.selection import subset_text

    text = "data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@a.mrcs 100.0\n2@a.mrcs\n200.0\n"
    assert subset_text(text, "particles", np.array([0]), 2) is None
    text = "# c\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@a.mrcs 100.0\n2@a.mrcs\t200.0\n\n"
    assert subset_text(text, "particles", np.array([1]), 2) == text.replace("1@a.mrcs 100.0\n", "")
    assert subset_text(text, "particles", np.array([1]), 3) is None  # not the parser's row count
    assert subset_text(text, "particles", np.array([0]), 2, {"rlnDefocusU": np.array([5.5]), "rlnAngleRot": np.array([1.0])}) == (
        "# c\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnAngleRot #3\n1@a.mrcs 5.5 1\n\n")


def test_real_files(tmp_path, shared_data):
    for star in ("empiar_10076_7.star", "relion31.star", "relion5.star"):
        path = shared_data / star
        if not path.is_file():
            continue
        datadir = shared_data / "toy_datadir" if star == "relion5.star" else None
        try:
            src = read_particles(path, datadir=datadir)
        except InputError as e:  # a fixture whose stack is not shipped: nothing to preprocess
            pytest.skip(str(e))
        pre = preprocess_stack(src, tmp_path / star / "p", PreprocessConfig(box=min(64, src.box)), progress=False)
        rows = np.arange(len(pre))[::3]
        sel = write_selection(pre, rows, tmp_path / f"sel_{star}")
        _check_subset(path, sel.star, rows)
        # the image names point at the original stacks
        back = read_particles(sel.star, datadir=datadir or path.parent)
        np.testing.assert_array_equal(back.images[:2], src.images[rows[:2]])


@pytest.mark.parametrize("star", ["empiar_10076_7.star", "relion31.star", "relion5.star"])
def test_real_files_train_encode_and_select(tmp_path, shared_data, star):
    """Issue #12's whole path on files other software wrote: preprocess -> a few steps of the CTF
    model -> ``cryovae encode`` -> a selection by latent region, exported as rows of the original."""
    from cryovae_nb.inference import Encoding
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    path = shared_data / star
    datadir = shared_data / "toy_datadir" if star == "relion5.star" else None
    src = read_particles(path, datadir=datadir)
    before = _sha(path)
    box = min(32, src.box)
    pre = preprocess_stack(src, tmp_path / "pre" / "p", PreprocessConfig(box=box, test_fraction=0.2), progress=False)
    model = ModelConfig().with_options(box=box, latent_dim=2, encoder_layers=1, encoder_units=16,
                                       decoder_layers=1, decoder_units=16,
                                       pose_mode="known" if src.poses is not None else "learned")
    cfg = TrainConfig(data=str(pre.source), run_dir=str(tmp_path / "run"), model=model, batch_size=4,
                      learning_rate=1e-3, max_steps=2, log_every=2, sample_every=100, checkpoint_every=2,
                      n_test_eval=1)
    trainer = Trainer(cfg, progress=False)
    assert trainer.config.model.loss.ctf and trainer.config.model.loss.link == "identity"
    trainer.train()
    assert cli.main(["encode", str(tmp_path / "run"), str(pre.source), "-o", str(tmp_path / "enc.npz")]) == 0
    z = Encoding.load(tmp_path / "enc.npz").z_mean
    assert z.shape == (len(src), 2) and np.isfinite(z).all()
    rows = np.sort(np.argsort(z[:, 0], kind="stable")[len(src) // 2:])  # one side of the latent map
    assert 0 < len(rows) < len(src)
    sel = write_selection(pre, rows, tmp_path / "region")
    _check_subset(path, sel.star, rows)
    np.testing.assert_array_equal(np.load(sel.indices_file, allow_pickle=False), rows)
    back = read_particles(sel.star, datadir=datadir or path.parent)
    np.testing.assert_array_equal(back.images[np.arange(2)], src.images[rows[:2]])
    assert _sha(path) == before


def test_changed_or_missing_original_is_refused_in_one_line(tmp_path):
    original = relion31_star(tmp_path / "project")
    pre = preprocess_stack(original, tmp_path / "pre" / "p", PreprocessConfig(box=16), progress=False)
    # changed: one defocus edited by hand
    text = original.read_text()
    edited = text.replace(f"{pre.df['rlnDefocusU'][0]:.6f}", f"{pre.df['rlnDefocusU'][0] + 1:.6f}", 1)
    assert edited != text
    original.write_text(edited)
    with pytest.raises(InputError, match="changed since preprocessing") as e:
        write_selection(pre, [0], tmp_path / "sel")
    assert "\n" not in str(e.value) and str(original.resolve()) in str(e.value)
    original.unlink()
    with pytest.raises(InputError, match="is missing"):
        write_selection(pre, [0], tmp_path / "sel")
    assert not (tmp_path / "sel.star").exists() and not (tmp_path / "sel_indices.npy").exists()
    # the command line says the same in one line, exit 2
    np.save(tmp_path / "rows.npy", np.array([1, 2]))
    assert cli.main(["select", str(tmp_path / "pre" / "p.star"), "--indices", str(tmp_path / "rows.npy"),
                     "-o", str(tmp_path / "sel")]) == 2


def test_never_overwrites_an_input_and_refuses_bad_selections(tmp_path):
    original = relion31_star(tmp_path / "project")
    before = _sha(original)
    pre = preprocess_stack(original, tmp_path / "project" / "p", PreprocessConfig(box=16), progress=False)
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_selection(pre, [0, 1], original)               # run_data.star -> run_data.star
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_selection(pre, [0, 1], tmp_path / "project" / "p.star")
    assert _sha(original) == before
    with pytest.raises(InputError, match="nothing selected"):
        write_selection(pre, np.zeros(N, bool), tmp_path / "empty")
    with pytest.raises(InputError, match="outside 0..11"):
        write_selection(pre, [12], tmp_path / "oob")
    with pytest.raises(InputError, match="mask of 3 entries"):
        as_rows(np.ones(3, bool), N)
    # a STAR file we did not preprocess names no original
    with pytest.raises(InputError, match="record no original"):
        write_selection(read_particles(original), [0], tmp_path / "x")
    assert selection_paths("a/b.star") == (Path("a/b.star"), Path("a/b_indices.npy"))


def test_subsets_and_a_second_preprocessing_keep_the_users_file_as_the_original(tmp_path):
    original = relion31_star(tmp_path / "project")
    pre = preprocess_stack(original, tmp_path / "pre" / "p", PreprocessConfig(box=20), progress=False)
    from cryovae_nb.io import write_particles_subset

    write_particles_subset(tmp_path / "pre" / "kept.star", pre, np.arange(N) % 3 != 0)
    kept = read_particles(tmp_path / "pre" / "kept.star")
    assert kept.provenance["cryovaeSourceStar"] == str(original.resolve())
    again = preprocess_stack(kept, tmp_path / "again" / "p", PreprocessConfig(box=16), progress=False)
    sel = write_selection(again, [0, 1], tmp_path / "sel")
    np.testing.assert_array_equal(sel.indices, [1, 2])  # rows 1, 2 of the user's file (0 was dropped)
    _check_subset(original, sel.star, np.array([1, 2]))
    # a coarsening on top of the first pass could not be mapped back to the original box
    with pytest.raises(InputError, match="coarsen its original STAR"):
        preprocess_stack(kept, tmp_path / "coarse" / "p", PreprocessConfig(coarsen=2), progress=False)
    assert not (tmp_path / "coarse" / "p.star").exists()


def test_original_shifts_inverts_downsample_shifts():
    s = np.random.default_rng(0).uniform(-4, 4, (50, 2))
    for box, c, new in ((256, 1, 64), (240, 2, 64), (96, 3, 32), (101, 1, 40), (64, 2, None)):
        down = downsample_shifts(s, box, c, new)
        np.testing.assert_allclose(original_shifts(down, box, c, new), s, atol=1e-12)


def test_learned_poses_go_into_the_original_at_its_pixel_size(tmp_path):
    for make in (relion31_star, relion30_star):
        original = make(tmp_path / make.__name__)
        pre = preprocess_stack(original, tmp_path / make.__name__ / "p", PreprocessConfig(box=16), progress=False)
        # "learned" poses in the 16 px box: the preprocessed poses themselves, so the original's
        # angles and origins must come back (the crop keeps the centre: shifts scale by 24 / 16)
        sel = write_selection(pre, np.arange(N), tmp_path / f"{make.__name__}_poses", poses=pre.poses)
        a = starfile.read(original, always_dict=True)
        b = starfile.read(sel.star, always_dict=True)
        key = "particles" if "particles" in a else ""
        for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
            np.testing.assert_allclose(b[key][col], a[key][col], atol=1e-9)
        ocols = ["rlnOriginXAngst", "rlnOriginYAngst"] if key else ["rlnOriginX", "rlnOriginY"]
        np.testing.assert_allclose(b[key][ocols].to_numpy(), a[key][ocols].to_numpy(), atol=1e-9)
        assert list(b[key].columns) == list(a[key].columns)
        # new poses: rotations as given, shifts of 1 px in the 16 px box = 1.5 px = 1.875 Å of the original
        rot = np.stack([np.eye(3)] * N)
        poses = Poses.from_matrices(rot, np.tile([1.0, -2.0], (N, 1)))
        assert np.allclose(learned_poses(pre, poses).shifts, np.tile([1.5, -3.0], (N, 1)))
        sel = write_selection(pre, np.arange(N), tmp_path / f"{make.__name__}_new", poses=poses)
        b = starfile.read(sel.star, always_dict=True)[key]
        np.testing.assert_allclose(b[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), 0, atol=1e-9)
        origin = b[ocols].to_numpy() * (1.0 / PX if key else 1.0)  # px
        np.testing.assert_allclose(relion_origin_to_shift(origin), np.tile([1.5, -3.0], (N, 1)), atol=1e-9)


def test_select_command_indices_cluster_and_latent_range(tmp_path):
    from cryovae_nb.inference import Encoding

    original = relion31_star(tmp_path / "project")
    pre_star = _preprocess_cli(original, tmp_path / "pre" / "p", 16)
    np.save(tmp_path / "rows.npy", np.array([5, 0, 3]))
    assert cli.main(["select", str(pre_star), "--indices", str(tmp_path / "rows.npy"),
                     "-o", str(tmp_path / "sel")]) == 0
    _check_subset(original, tmp_path / "sel.star", np.array([0, 3, 5]))
    # latents with two obvious clusters and a known range
    z = np.zeros((N, 2), np.float32)
    z[:, 0] = np.where(np.arange(N) < 5, -3.0, 3.0)
    z[:, 1] = np.arange(N)
    rot = np.stack([np.eye(3)] * N)
    Encoding.from_poses(z, np.zeros_like(z), rot, np.zeros((N, 2))).save(tmp_path / "enc.npz")
    assert cli.main(["select", str(pre_star), "--encoding", str(tmp_path / "enc.npz"), "--cluster", "0",
                     "--k", "2", "-o", str(tmp_path / "c0")]) == 0
    got = np.load(tmp_path / "c0_indices.npy")
    assert sorted(got.tolist()) in ([0, 1, 2, 3, 4], list(range(5, N)))
    assert cli.main(["select", str(pre_star), "--encoding", str(tmp_path / "enc.npz"),
                     "--latent-range", "2", "3.5", "7", "-o", str(tmp_path / "r")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "r_indices.npy"), [4, 5, 6, 7])
    _check_subset(original, tmp_path / "r.star", np.array([4, 5, 6, 7]))
    # errors are one line, exit 2: a latent dimension that does not exist, an encoding of other particles
    assert cli.main(["select", str(pre_star), "--encoding", str(tmp_path / "enc.npz"),
                     "--latent-range", "3", "0", "1", "-o", str(tmp_path / "bad")]) == 2
    Encoding.from_poses(z[:5], z[:5], rot[:5], np.zeros((5, 2))).save(tmp_path / "enc5.npz")
    assert cli.main(["select", str(pre_star), "--encoding", str(tmp_path / "enc5.npz"), "--cluster", "0",
                     "-o", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad.star").exists()


def test_cluster_and_screen_selections(tmp_path):
    from cryovae_nb.analysis.latent import latent_range, write_cluster_selections
    from cryovae_nb.analysis.screen import screen_particles, write_screen_selections

    original = relion31_star(tmp_path / "project")
    pre = preprocess_stack(original, tmp_path / "pre" / "p", PreprocessConfig(box=16), progress=False)
    labels = np.arange(N) % 3
    sels = write_cluster_selections(pre, labels, tmp_path / "clusters" / "k")
    assert sorted(sels) == [0, 1, 2]
    for k, sel in sels.items():
        assert sel.star.name == f"k_cluster{k}.star"
        _check_subset(original, sel.star, np.flatnonzero(labels == k))
    err = 1.0 + 0.1 * np.random.default_rng(0).normal(size=N)  # a spread, so the robust z-scores are finite
    err[[3, 8]] = 50.0
    screen = screen_particles(err, method="threshold", threshold=3.0)
    out = write_screen_selections(pre, screen, tmp_path / "screen")
    np.testing.assert_array_equal(out["reject"].indices, [3, 8])
    np.testing.assert_array_equal(out["keep"].indices, np.setdiff1d(np.arange(N), [3, 8]))
    _check_subset(original, out["keep"].star, out["keep"].indices)
    np.testing.assert_array_equal(latent_range(np.arange(10.0)[:, None], 1, 2, 4), [2, 3, 4])
    with pytest.raises(InputError, match="latent dimension must be in 1..1"):
        latent_range(np.zeros((3, 1)), 2, 0, 1)


def test_explorer_lasso_exports_rows_of_the_original(tmp_path):
    pytest.importorskip("ipywidgets")
    from cryovae_nb.widgets.explorer import LatentExplorer

    original = relion31_star(tmp_path / "project")
    pre = preprocess_stack(original, tmp_path / "pre" / "p", PreprocessConfig(box=16), progress=False)
    xy = np.random.default_rng(0).normal(size=(N, 2))
    ex = LatentExplorer({"pca": xy}, particles=pre)
    ex.select([7, 1, 10])
    path = ex.export_selection(tmp_path / "picked.star")
    assert path == str(tmp_path / "picked.star")
    _check_subset(original, tmp_path / "picked.star", np.array([1, 7, 10]))
    np.testing.assert_array_equal(np.load(tmp_path / "picked_indices.npy"), [1, 7, 10])
    shutil.rmtree(tmp_path / "project")
    ex.export_button.click()  # the button: the one-line error shows in the status line
    assert "is missing" in ex.status.value


def test_project_folders_follow_the_provenance(tmp_path):
    from cryovae_nb.tutorial.project import (choose_folders, current_project, default_target_box, describe_box,
                                             read_project, write_project)

    assert default_target_box(256, 1.06, simulated=False) == 64
    assert default_target_box(48, 1.06, simulated=False) is None and default_target_box(256, 1.0, True) is None
    assert describe_box(256, 1.06, 64) == "256 px at 1.06 Å/px -> 64 px at 4.24 Å/px (Nyquist 8.48 Å)"
    a = relion31_star(tmp_path / "a")
    b = relion30_star(tmp_path / "b")
    wd = tmp_path / "wd"
    pa = write_project(wd, a)
    assert (pa.preprocessed, pa.run_name, pa.target_box) == ("preprocessed_run_data", "run_run_data", None)
    preprocess_stack(a, pa.preprocessed_star, PreprocessConfig(box=16), progress=False)
    assert choose_folders(wd.resolve(), a, False) == ("preprocessed_run_data", "run_run_data")  # its own, reused
    pb = write_project(wd, b, target_box=16)
    assert pb.preprocessed == "preprocessed_particles30" and read_project(wd).star_file == b.resolve()
    # another file with the same name: a folder of its own, never the first one's
    c = relion31_star(tmp_path / "c")
    assert write_project(wd, c).preprocessed.startswith("preprocessed_run_data_")
    assert current_project(wd, a).preprocessed == "preprocessed_run_data"
    # the original changed since preprocessing: not the same input any more
    a.write_text(a.read_text() + "\n")
    assert choose_folders(wd.resolve(), a, False)[0] != "preprocessed_run_data"
    (wd / "project.yaml").write_text("star_file: x\nbox: 3\n")
    with pytest.raises(InputError, match="unknown setting"):
        read_project(wd)


def test_train_encode_and_select_end_to_end_back_to_the_original(tmp_path):
    """Issue #12's path on a RELION 3.1 file: preprocess (crop 24 -> 16 px) -> a few training
    steps -> ``cryovae encode --original-star`` (learned poses at the original pixel size) ->
    ``cryovae select --cluster`` and a lasso; every file read back with ``starfile``."""
    from cryovae_nb.inference import Encoding
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    original = relion31_star(tmp_path / "project")
    before = _sha(original)
    pre_star = _preprocess_cli(original, tmp_path / "pre" / "p", 16)
    model = ModelConfig().with_options(box=16, latent_dim=2, encoder_layers=1, encoder_units=16,
                                       decoder_layers=1, decoder_units=16, pose_mode="learned")
    cfg = TrainConfig(data=str(pre_star), run_dir=str(tmp_path / "run"), model=model, batch_size=4,
                      learning_rate=1e-3, max_steps=3, log_every=3, sample_every=100, checkpoint_every=3,
                      n_test_eval=2)
    trainer = Trainer(cfg, progress=False)
    # the data carry CTF columns: preprocessing standardised them and the model follows (#12)
    assert trainer.config.model.loss.ctf and trainer.config.model.loss.link == "identity"
    trainer.train()

    assert cli.main(["encode", str(tmp_path / "run"), str(pre_star), "-o", str(tmp_path / "enc.npz"),
                     "--original-star", str(tmp_path / "relion" / "learned")]) == 0
    enc = Encoding.load(tmp_path / "enc.npz")
    a = starfile.read(original, always_dict=True)
    b = starfile.read(tmp_path / "relion" / "learned.star", always_dict=True)
    pd.testing.assert_frame_equal(b["optics"], a["optics"], check_dtype=False)
    posed = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    assert list(b["particles"].columns) == list(a["particles"].columns)
    rest = [c for c in a["particles"].columns if c not in posed]
    pd.testing.assert_frame_equal(b["particles"][rest], a["particles"][rest], check_dtype=False)
    np.testing.assert_allclose(b["particles"][posed[:3]].to_numpy(), enc.euler, atol=1e-6)
    # RELION's origin is minus our shift; a 16 px shift is 24/16 original pixels of PX Å
    np.testing.assert_allclose(b["particles"][posed[3:]].to_numpy(), -enc.shifts * (BOX / 16) * PX, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "relion" / "learned_indices.npy"), np.arange(N))

    assert cli.main(["select", str(tmp_path / "run"), "--cluster", "1", "--k", "2", "-o", str(tmp_path / "c1")]) == 0
    rows = np.load(tmp_path / "c1_indices.npy")
    assert 0 < len(rows) < N
    _check_subset(original, tmp_path / "c1.star", rows)
    # a lasso: the subset's image names point at the original stack, read from the project folder
    sel = write_selection(pre_star, [3, 5, 8], tmp_path / "lasso")
    back = read_particles(sel.star, datadir=tmp_path / "project")
    np.testing.assert_array_equal(back.images[:], read_particles(original).images[[3, 5, 8]])
    assert _sha(original) == before


def test_a_bare_stack_preprocessed_selects_as_a_star_of_its_images(tmp_path):
    stack = tmp_path / "data" / "parts.mrcs"
    write_stack(stack, _images(N, BOX, 5), PX)
    pre = preprocess_stack(stack, tmp_path / "pre" / "p", PreprocessConfig(box=16), progress=False)
    assert pre.provenance["cryovaeSourceStar"] == str(stack.resolve())
    sel = write_selection(pre, [1, 4], tmp_path / "out" / "sel")
    back = read_particles(sel.star)
    assert back.pixel_size == pytest.approx(PX) and back.box == BOX
    np.testing.assert_array_equal(back.images[:], _images(N, BOX, 5)[[1, 4]])
    np.testing.assert_array_equal(np.load(sel.indices_file), [1, 4])
