"""Inference on a trained run: encode/decode, latent exploration, exports read back by other readers."""
from __future__ import annotations

import argparse
import os

import mrcfile
import numpy as np
import pytest
import starfile

from cryovae_nb import geometry
from cryovae_nb.errors import InputError
from cryovae_nb.commands import encode as encode_command
from cryovae_nb.commands import generate as generate_command
from cryovae_nb.inference import Encoding, load_run, write_star, write_volumes
from cryovae_nb.model.batch import Batch

PIXEL = 2.5  # Å; not 1, so that a lost or mis-scaled voxel size shows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (box 16) trained for a few steps on 200 simulated particles, per pose mode."""
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.preprocess import PreprocessConfig, output_paths, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    root = tmp_path_factory.mktemp("inf")
    ds = simulate(SimulationConfig(box=16, n_particles=200, snr=1.0, shift_std_px=1.0, pixel_size=PIXEL,
                                   seed=2), root / "sim", progress=False)
    preprocess_stack(ds.star, root / "pre" / "p", PreprocessConfig(), progress=False)
    runs = {}
    for mode in ("learned", "known"):
        model = ModelConfig().with_options(box=16, latent_dim=3, encoder_layers=1, encoder_units=32,
                                           decoder_layers=1, decoder_units=32, pose_mode=mode)
        cfg = TrainConfig(data=str(root / "pre" / "p.star"), run_dir=str(root / mode), model=model,
                          batch_size=25, learning_rate=1e-3, max_steps=6, log_every=6, sample_every=100,
                          checkpoint_every=6, n_test_eval=20)
        Trainer(cfg, progress=False).train()
        runs[mode] = root / mode
    return {"root": root, "star": root / "pre" / "p.star", "stack": output_paths(root / "pre" / "p")["stack"], **runs}


@pytest.fixture(scope="module")
def run(trained):
    return load_run(trained["learned"])


def test_load_run_restores_the_trained_weights(trained, run):
    from cryovae_nb.config import load_config
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.rundir import CheckpointManager
    from cryovae_nb.training.trainer import Trainer

    assert run.step == 6 and run.box == 16 and run.latent_dim == 3
    assert run.pixel_size == pytest.approx(PIXEL)
    # the trainer resumed from the same checkpoint holds the same numbers
    trainer = Trainer(load_config(TrainConfig, trained["learned"] / "config.json"), progress=False)
    for a, b in zip(trainer.model.trainable_variables, run.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert CheckpointManager(trained["learned"] / "checkpoints").latest() == run.checkpoint
    with pytest.raises(InputError, match="config.json"):
        load_run(trained["root"])


def test_encode_is_batched_consistently_and_poses_agree(run):
    images = run.particles.images[np.arange(37)]
    whole = run.encode(images, progress=False)
    run.batch_size = 8  # five batches, the last one short
    try:
        batched = run.encode(run.particles.images, progress=False)
    finally:
        run.batch_size = 25
    assert len(batched) == len(run.particles) == 200
    np.testing.assert_allclose(batched.z_mean[:37], whole.z_mean, rtol=1e-5, atol=1e-6)
    direct = run.model.encode(Batch(np.asarray(images, np.float32)))
    np.testing.assert_allclose(whole.z_mean, np.asarray(direct["z_mean"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole.z_logvar, np.asarray(direct["z_logvar"]), rtol=1e-5, atol=1e-6)
    # quaternions, matrices and RELION angles describe the same rotations
    R_q = geometry.quaternion_to_matrix(whole.quaternions)
    R_e = geometry.relion_euler_to_matrix(*whole.euler.T)
    assert geometry.rotation_angle_deg(R_q, whole.rotations).max() < 1e-3
    assert geometry.rotation_angle_deg(R_e, whole.rotations).max() < 1e-3
    np.testing.assert_allclose(whole.shifts, np.asarray(direct["shift"]), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="16 x 16"):
        run.encode(np.zeros((2, 12, 12), np.float32), progress=False)


def test_known_pose_run_reports_the_known_poses(trained):
    from cryovae_nb.io import read_particles

    known = load_run(trained["known"])
    parts = read_particles(trained["star"])
    enc = known.encode(parts, progress=False)
    assert geometry.rotation_angle_deg(enc.rotations, parts.poses.rotations).max() < 1e-3
    np.testing.assert_allclose(enc.shifts, parts.poses.shifts, atol=1e-6)


def test_band_limit_removes_only_what_lies_beyond_nyquist():
    from cryovae_nb.volumes import band_limit

    n = 12
    z, y, x = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    smooth = np.cos(2 * np.pi * 2 * x / n) + np.sin(2 * np.pi * 3 * (y + z) / n)  # |k| <= 4.3 < 6
    checker = (-1.0) ** (x + y + z)  # |k| = 6 sqrt(3), in the corner of the Fourier cube
    out = band_limit((smooth + 5 * checker)[None])
    np.testing.assert_allclose(out[0], smooth, atol=1e-4)


def test_decode_volume_of_interpolate_traverse_prior(run):
    z = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
    vols = run.decode(z)
    assert vols.shape == (2, 16, 16, 16) and vols.dtype == np.float32
    np.testing.assert_allclose(run.decode(z[0]), vols[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="3"):
        run.decode(np.zeros((1, 5)))

    img = run.particles.images[[11]]
    np.testing.assert_allclose(run.volume_of(11), run.decode(run.encode(img, progress=False).z_mean[0]),
                               rtol=1e-5, atol=1e-6)

    zi, vi = run.interpolate(z[0], z[1], 5)
    np.testing.assert_allclose(zi[2], (z[0] + z[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(vi[[0, -1]], vols, rtol=1e-5, atol=1e-6)

    obs = np.array([[0.0, 1.0, -1.0], [2.0, 3.0, 1.0], [1.0, -4.0, 0.0]])
    zt, vt = run.traverse(1, 4, latents=obs)
    np.testing.assert_allclose(zt[:, 1], [-4.0, -4.0 + 7 / 3, -4.0 + 14 / 3, 3.0], atol=1e-6)
    np.testing.assert_allclose(zt[:, [0, 2]], np.tile([1.0, 0.0], (4, 1)), atol=1e-6)
    assert vt.shape == (4, 16, 16, 16)
    z_default, _ = run.traverse(0, 3)  # default: the training data's latents
    obs_all = run.observed_latents()
    assert z_default[0, 0] == pytest.approx(obs_all[:, 0].min())
    assert z_default[-1, 0] == pytest.approx(obs_all[:, 0].max())

    zp, vp = run.sample_prior(50, seed=1)
    assert zp.shape == (50, 3) and abs(zp.mean()) < 0.5 and 0.6 < zp.std() < 1.4
    np.testing.assert_array_equal(run.sample_prior(50, seed=1)[0], zp)
    assert not np.array_equal(run.sample_prior(50, seed=2)[0], zp)


def test_exports_read_back_with_mrcfile_and_starfile(run, trained, tmp_path):
    from cryovae_nb.io import read_particles

    parts = read_particles(trained["star"])
    enc = run.encode(parts, progress=False)

    enc.save(tmp_path / "enc.npz")
    back = Encoding.load(tmp_path / "enc.npz")
    for name in ("z_mean", "z_logvar", "quaternions", "rotations", "euler", "shifts"):
        np.testing.assert_array_equal(getattr(back, name), getattr(enc, name))
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(InputError, match="other.npz"):
        Encoding.load(tmp_path / "other.npz")

    write_star(tmp_path / "learned.star", parts, enc)
    blocks = starfile.read(tmp_path / "learned.star", always_dict=True)
    df, optics = blocks["particles"], blocks["optics"]
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(PIXEL)
    R = geometry.relion_euler_to_matrix(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
    assert geometry.rotation_angle_deg(R, enc.rotations).max() < 1e-3
    origin_px = np.stack([df["rlnOriginXAngst"], df["rlnOriginYAngst"]], 1) / PIXEL
    np.testing.assert_allclose(origin_px, -enc.shifts, atol=1e-4)
    # the image names point at the same stack from the new folder
    rel = os.path.relpath(trained["stack"], tmp_path)
    assert list(df["rlnImageName"]) == [f"{i:06d}@{rel}" for i in range(1, 201)]
    again = read_particles(tmp_path / "learned.star")  # and our own reader sees the same poses
    assert geometry.rotation_angle_deg(again.poses.rotations, enc.rotations).max() < 1e-3
    with pytest.raises(InputError):
        write_star(tmp_path / "x.star", parts.subset(np.arange(5)), enc)

    vols = run.decode(enc.z_mean[:2])
    paths = write_volumes(tmp_path / "vols", vols, run.pixel_size, prefix="p")
    assert [p.name for p in paths] == ["p_000.mrc", "p_001.mrc"]
    with mrcfile.open(paths[1]) as m:
        assert m.voxel_size.x == pytest.approx(PIXEL) and m.voxel_size.z == pytest.approx(PIXEL)
        np.testing.assert_array_equal(m.data, vols[1])


def _args(command, argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_encode_and_generate(run, trained, tmp_path):
    out = tmp_path / "enc.npz"
    assert encode_command.run(_args(encode_command, [str(trained["learned"]), str(trained["star"]), "-o", str(out),
                                                "--star", str(tmp_path / "e.star")])) == 0
    enc = Encoding.load(out)
    assert enc.z_mean.shape == (200, 3)
    direct = run.encode(run.particles, progress=False)
    np.testing.assert_allclose(enc.z_mean, direct.z_mean, rtol=1e-5, atol=1e-6)
    assert len(starfile.read(tmp_path / "e.star", always_dict=True)["particles"]) == 200

    gen = tmp_path / "gen"
    base = [str(trained["learned"]), "-o", str(gen)]
    assert generate_command.run(_args(generate_command, base + ["--prior", "3", "--seed", "4"])) == 0
    assert generate_command.run(_args(generate_command, base + ["--interpolate", "0", "5", "--steps", "3"])) == 0
    assert generate_command.run(_args(generate_command, base + ["--traverse", "2", "--steps", "4"])) == 0
    np.save(tmp_path / "z.npy", enc.z_mean[:2])
    assert generate_command.run(_args(generate_command, base + ["--z-file", str(tmp_path / "z.npy")])) == 0
    names = sorted(p.name for p in gen.glob("*.mrc"))
    assert len([n for n in names if n.startswith("prior_")]) == 3
    assert len([n for n in names if n.startswith("interp_0_5_")]) == 3
    assert len([n for n in names if n.startswith("traverse_dim2_")]) == 4
    with mrcfile.open(gen / "volume_001.mrc") as m:
        np.testing.assert_allclose(m.data, run.decode(enc.z_mean[1]), rtol=1e-5, atol=1e-6)
        assert m.voxel_size.x == pytest.approx(PIXEL)
    zi = np.load(gen / "interp_0_5_z.npy", allow_pickle=False)
    np.testing.assert_allclose(zi[[0, -1]], enc.z_mean[[0, 5]], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="out of range"):
        generate_command.run(_args(generate_command, base + ["--interpolate", "0", "999"]))


def test_encode_pose_paths_search_head_and_auto(run, trained, monkeypatch):
    """pose="search" is today's encode (the model's searched pose, bit for bit), "head" the pose
    head's own (model.encode with the search off), the latents the same; "auto" follows the run's
    logged head_won; a bad value is refused by name."""
    images = np.asarray(run.particles.images[np.arange(20)], np.float32)  # one batch (the search's
    searched = run.model.encode(Batch(images))                            # reference is its mean)
    head = run.model.encode(Batch(images), search=False)
    default, by_search, by_head = (run.encode(images, progress=False, **kw)
                                   for kw in ({}, {"pose": "search"}, {"pose": "head"}))
    for enc, direct, source in ((default, searched, "search"), (by_search, searched, "search"),
                                (by_head, head, "head")):
        assert enc.pose_source == source
        np.testing.assert_array_equal(enc.rotations, geometry.quaternion_to_matrix(np.asarray(direct["quaternion"])))
        np.testing.assert_array_equal(enc.shifts, np.asarray(direct["shift"], np.float64))
        np.testing.assert_array_equal(enc.z_mean, np.asarray(searched["z_mean"]))
    # the head path really skips the search: its pose is the head's output, not the searched one
    h = run.model._hidden(images, False)
    np.testing.assert_array_equal(np.asarray(head["quaternion"]), np.asarray(run.model.pose(h)["quaternion"]))
    assert geometry.rotation_angle_deg(by_head.rotations, by_search.rotations).max() > 1.0

    # auto: the mean head_won of the last logged training records up to the checkpoint's step
    logged = [r for r in run.folder.metrics() if r["split"] == "train"]
    won = run.head_won_fraction()
    assert won == pytest.approx(logged[-1]["head_won"]) and 0.0 <= won <= 1.0

    def records(*won, step=6):
        return lambda: [{"step": step, "split": "train", "head_won": w} for w in won]
    # the last AUTO_RECORDS (5) records only: 3 early losses do not count
    for won, path in (((0.0, 0.0, 0.0, 0.9, 0.8, 0.6, 0.7, 0.5), "head"), ((0.2, 0.6), "search"), ((), "search")):
        monkeypatch.setattr(run.folder, "metrics", records(*won))
        assert run.pose_path("auto") == path
    monkeypatch.setattr(run.folder, "metrics", records(0.9, step=7))  # logged after the checkpoint
    assert run.head_won_fraction() is None and run.pose_path("auto") == "search"
    monkeypatch.setattr(run.folder, "metrics", records(0.9))
    assert run.encode(images, progress=False, pose="auto").pose_source == "head"
    with pytest.raises(InputError, match="pose must be one of auto, head, search, got 'fast'"):
        run.encode(images, progress=False, pose="fast")


def test_pose_source_is_recorded_and_old_encodings_still_load(run, trained, tmp_path):
    from cryovae_nb.io import read_particles

    known = load_run(trained["known"])
    parts = read_particles(trained["star"])
    assert known.encode(parts, progress=False).pose_source == "known"
    enc = run.encode(parts.subset(np.arange(10)), progress=False, pose="head")
    enc.save(tmp_path / "enc.npz")
    assert Encoding.load(tmp_path / "enc.npz").pose_source == "head"
    with np.load(tmp_path / "enc.npz") as f:  # a file written before the pose source was recorded
        np.savez(tmp_path / "old.npz", **{k: f[k] for k in f.files if k != "pose_source"})
    assert Encoding.load(tmp_path / "old.npz").pose_source == "unknown"
    write_star(tmp_path / "head.star", parts.subset(np.arange(10)), enc)
    blocks = starfile.read(tmp_path / "head.star", always_dict=True)
    assert blocks["cryovae_poses"]["cryovaePoseSource"] == "head"
    assert len(read_particles(tmp_path / "head.star")) == 10


def test_cli_encode_pose_flag(run, trained, tmp_path, capsys):
    out = tmp_path / "head.npz"
    argv = [str(trained["learned"]), str(trained["star"]), "-o", str(out), "--star", str(tmp_path / "h.star")]
    assert encode_command.run(_args(encode_command, argv + ["--pose", "head"])) == 0
    assert "(poses: head)" in capsys.readouterr().out
    enc = Encoding.load(out)
    direct = run.encode(run.particles, progress=False, pose="head")
    assert enc.pose_source == "head"
    np.testing.assert_array_equal(enc.rotations, direct.rotations)
    assert starfile.read(tmp_path / "h.star", always_dict=True)["cryovae_poses"]["cryovaePoseSource"] == "head"
    assert _args(encode_command, argv).pose == "search"  # the default: today's behaviour
    with pytest.raises(SystemExit):
        _args(encode_command, argv + ["--pose", "fast"])
    assert "invalid choice: 'fast' (choose from" in capsys.readouterr().err
