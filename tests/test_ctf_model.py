"""The CTF-aware forward model: the TensorFlow CTF against the numpy one (ctf.py), the model's image
formation against the simulator's (numpy reference projector + ctf.apply_ctf), the CTF in the
loss, the linearised posterior and the pose search, and the data path from a STAR file's CTF
columns (RELION 3.1 optics groups, per-particle overrides) into ``Batch.optics``."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from cryovae_nb.ctf import apply_ctf, compute_ctf  # noqa: E402
from cryovae_nb.errors import ConfigError, InputError  # noqa: E402
from cryovae_nb.geometry import random_rotations  # noqa: E402
from cryovae_nb.model import ModelConfig, build_model  # noqa: E402
from cryovae_nb.model.batch import Batch, Optics  # noqa: E402
from cryovae_nb.model.forward import ctf_spectrum, forward_images, multiply_spectrum  # noqa: E402
from cryovae_nb.model.projectors import make_projector  # noqa: E402
from cryovae_nb.projection import project_reference  # noqa: E402
from cryovae_nb.synthetic import hinge_volume  # noqa: E402

PARAMS = [  # du, dv, angle, kV, Cs, w, phase shift, B
    (15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, 0.0, 0.0),
    (12000.0, 9000.0, 33.0, 200.0, 2.0, 0.07, 0.0, 80.0),
    (20000.0, 18500.0, -160.4, 300.0, 0.01, 0.1, 45.0, 0.0),
    (25000.0, 21000.0, 101.0, 300.0, 2.7, 0.1, 0.0, 0.0),
]


def optics(params, pixel_size):
    cols = np.asarray(params, np.float32).T
    return Optics(*cols, np.full(len(params), pixel_size, np.float32))


@pytest.mark.parametrize("box, apix", [(64, 1.7), (33, 4.0), (32, 3.0)])
def test_tf_ctf_matches_numpy_ctf(box, apix):
    got = ctf_spectrum(optics(PARAMS, apix), box).numpy()
    want = np.stack([compute_ctf(box, apix, *p, half=True)[0] for p in PARAMS])
    assert got.shape == (len(PARAMS), box, box // 2 + 1)
    # away from the even box's x-Nyquist column the two grids are the same points
    np.testing.assert_allclose(got[..., : box // 2], want[..., : box // 2], atol=2e-3)
    # and the filters they make agree everywhere (ctf._as_half mirrors that column, as the TF grid)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((len(PARAMS), box, box)).astype(np.float32)
    full = np.stack([compute_ctf(box, apix, *p)[0] for p in PARAMS])
    np.testing.assert_allclose(multiply_spectrum(images, got).numpy(), apply_ctf(images, full), atol=2e-3)
    # the test can fail: the same parameters at another defocus give another CTF
    other = ctf_spectrum(optics([(p[0] + 3000, p[1] + 3000) + p[2:] for p in PARAMS], apix), box).numpy()
    assert np.abs(other - want).max() > 0.5


@pytest.mark.parametrize("projector, tol", [("real", 0.05), ("fourier", 0.08)])
def test_model_image_formation_matches_the_simulator(projector, tol):
    # the simulator's images (synthetic._write_clean): numpy reference projector, then ctf.apply_ctf
    box, apix, k = 32, 4.0, 6
    vol = hinge_volume(box, 0.5)
    rng = np.random.default_rng(3)
    rot = random_rotations(k, rng)
    shifts = rng.uniform(-2, 2, (k, 2))
    defocus = rng.uniform(10000, 25000, k)
    params = [(d, d * 0.95, 20.0, 300.0, 2.7, 0.1, 0.0, 0.0) for d in defocus]
    ctf = np.stack([compute_ctf(box, apix, *p)[0] for p in params])
    want = apply_ctf(project_reference(vol, rot, shifts), ctf)
    cfg = ModelConfig().with_options(box=box, projector=projector)
    got = forward_images(tf.constant(np.repeat(vol[None], k, 0)), tf.constant(rot, tf.float32),
                         tf.constant(shifts, tf.float32), projector=make_projector(cfg),
                         ctf=ctf_spectrum(optics(params, apix), box)).numpy()
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err < tol
    # without the CTF (or with another particle's) the images are far off
    plain = project_reference(vol, rot, shifts)
    assert np.linalg.norm(plain - want) / np.linalg.norm(want) > 0.5
    swapped = apply_ctf(project_reference(vol, rot, shifts), ctf[::-1])
    assert np.linalg.norm(swapped - want) / np.linalg.norm(want) > max(2 * err, 0.15)
    # K poses per image (the pose search): each image's CTF broadcasts over its K projections
    rot_k = np.stack([rot, rot[::-1]], 1)                                        # (k, 2, 3, 3)
    got_k = forward_images(tf.constant(np.repeat(vol[None], k, 0)), tf.constant(rot_k, tf.float32),
                           projector=make_projector(cfg),
                           ctf=ctf_spectrum(optics(params, apix), box)).numpy()
    want_k1 = apply_ctf(project_reference(vol, rot[::-1]), ctf)
    assert np.linalg.norm(got_k[:, 1] - want_k1) / np.linalg.norm(want_k1) < tol


def _ctf_model(box=16, **options):
    cfg = ModelConfig.preset("ctf", box=box, pose_mode="known", latent_dim=2, encoder_layers=1,
                             encoder_units=16, decoder_layers=1, decoder_units=16, **options)
    return build_model(cfg, seed=0)


def _batch(box, k, rng, apix=4.0, with_optics=True):
    params = [(d, d, 0.0, 300.0, 2.7, 0.1, 0.0, 0.0) for d in rng.uniform(10000, 25000, k)]
    return Batch(rng.standard_normal((k, box, box)).astype(np.float32),
                 rotations=random_rotations(k, rng).astype(np.float32),
                 shifts=np.zeros((k, 2), np.float32), optics=optics(params, apix) if with_optics else None)


def test_ctf_config_rules():
    with pytest.raises(ConfigError, match="ctf needs"):
        ModelConfig().with_options(ctf=True).validate()           # sigmoid link on a CTF image
    with pytest.raises(ConfigError, match="ctf needs"):
        ModelConfig().with_options(ctf=True, link="sigmoid", likelihood="bernoulli").validate()
    ModelConfig.preset("ctf").validate()


def test_ctf_model_loss_uses_each_particles_ctf():
    box, rng = 16, np.random.default_rng(1)
    model = _ctf_model(box)
    batch = _batch(box, 4, rng)
    with pytest.raises(InputError, match="optics"):
        model.compute_losses(batch.replace(optics=None), training=False)
    out = model.compute_losses(batch, training=False)
    assert np.isfinite(float(out["total"]))
    # the reconstruction is the loss's forward model: CTF-filtered volume projections
    images, volumes = model.reconstruct(batch)
    enc = model.encode(batch)
    proj = model.project(volumes, batch.rotations, batch.shifts)
    ctf = np.stack([compute_ctf(box, 4.0, *(float(getattr(batch.optics, f)[i]) for f in
                                            ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs",
                                             "amp_contrast", "phase_shift", "bfactor")))[0]
                    for i in range(4)])
    want = np.asarray(model.add_offset(tf.constant(apply_ctf(np.asarray(proj), ctf)), enc.get("offset")))
    np.testing.assert_allclose(np.asarray(images), want, atol=1e-4 * max(1.0, np.abs(want).max()))
    # the data term is the Gaussian NLL of the images about that prediction
    var = float(out["noise_var"])
    mask = model._pixel_mask.numpy()
    nll = (0.5 * ((batch.images - want) ** 2 * mask).sum((1, 2)) / var
           + 0.5 * mask.sum() * np.log(2 * np.pi * var))
    np.testing.assert_allclose(float(out["recon"]), nll.mean(), rtol=1e-4)


def test_linearized_posterior_sees_the_ctf():
    # images made by the model itself along latent direction 0, through each particle's CTF: the
    # posterior must recover the latent; read without the CTF (a CTF-free model's Q_i) it cannot
    box, rng = 16, np.random.default_rng(2)
    model = _ctf_model(box)
    d = 2
    # a principal volume along which the particles move
    basis = np.zeros((d, box, box, box), np.float32)
    basis[0, 6:10, 5:11, 4:9] = 1.0
    basis[1, 4:7, 8:12, 7:12] = 1.0
    basis /= np.linalg.norm(basis.reshape(d, -1), axis=1)[:, None, None, None]
    model.pc_basis.assign(basis)
    model.pc_variance.assign(np.array([400.0, 400.0], np.float32))
    batch = _batch(box, 32, rng)
    z_true = rng.standard_normal((32, d)).astype(np.float32)
    clean, _ = model.reconstruct(batch.replace(images=np.zeros_like(batch.images)))
    vols = model.decode(z_true)
    imaged = forward_images(vols, batch.rotations, batch.shifts, projector=model.projector,
                            ctf=model.ctf_of(batch), band=model.config.latent.band * box)
    images = np.asarray(imaged) + 0.05 * rng.standard_normal(batch.images.shape).astype(np.float32)
    z, _ = model.linearized_posterior(batch.replace(images=images), noise_var=0.0025)
    r = [np.corrcoef(z[:, j], z_true[:, j])[0, 1] for j in range(d)]
    assert min(r) > 0.95
    # the same images read by a model that ignores the CTF lose the latent
    plain = build_model(model.config.with_options(ctf=False), seed=0)
    plain.pc_basis.assign(basis)
    plain.pc_variance.assign(np.array([400.0, 400.0], np.float32))
    z0, _ = plain.linearized_posterior(batch.replace(images=images), noise_var=0.0025)
    r0 = [np.corrcoef(np.asarray(z0)[:, j], z_true[:, j])[0, 1] for j in range(d)]
    assert max(r0) < min(r) - 0.2


# the Fourier scoring (model/pose_search.py) refines shifts to a quarter pixel: within half a pixel
SEARCH_BOUNDS = {"real_space": (5.0, 0.85, 0.0), "fourier": (6.0, 0.8, 0.5)}  # median deg, within 10 deg, shift px


@pytest.mark.parametrize("scoring", list(SEARCH_BOUNDS))
def test_pose_search_with_ctf_finds_the_true_pose(scoring):
    """tests/test_pose_search.py's recovery test on CTF-modulated images (defocus 1-2.5 um at
    4 A/px: a zero or two inside the refinement band), with either scoring (the Fourier one
    multiplies each candidate's band components by the CTF): given each image's CTF the search
    finds the poses; blind to it, it does worse."""
    from cryovae_nb import geometry
    from cryovae_nb.synthetic import lshape_volume

    n, k = 24, 40
    cfg = ModelConfig.preset("ctf", box=n, pose_search_deg=15.0, pose_refine_band=0.35, latent_dim=2,
                             encoder_layers=1, encoder_units=16, decoder_layers=1, decoder_units=16,
                             pose_search_scoring=scoring)
    model = build_model(cfg, seed=0)
    rng = np.random.default_rng(4)
    truth = lshape_volume(n).astype(np.float32)
    rot = geometry.random_rotations(k, rng).astype(np.float32)
    shifts = rng.integers(-2, 3, (k, 2)).astype(np.float32)
    params = [(d, d * 0.9, 40.0, 300.0, 2.7, 0.1, 0.0, 0.0) for d in rng.uniform(10000, 25000, k)]
    ctf = np.stack([compute_ctf(n, 4.0, *p)[0] for p in params])
    vols = np.repeat(truth[None], k, 0)
    images = apply_ctf(project_reference(truth, rot, shifts), ctf)
    head = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (k, 1))
    q, found, _ = model.search_pose(images, vols, head, shifts, ctf=ctf_spectrum(optics(params, 4.0), n))
    err = geometry.rotation_angle_deg(geometry.quaternion_to_matrix(q.numpy()), rot)
    median, within, shift_tol = SEARCH_BOUNDS[scoring]
    assert np.median(err) < median and np.mean(err < 10.0) >= within, np.sort(err)
    assert np.mean(np.abs(found.numpy() - shifts).max(axis=1) <= shift_tol) >= 0.85
    q0, found0, _ = model.search_pose(images, vols, head, shifts)                 # blind to the CTF
    err0 = geometry.rotation_angle_deg(geometry.quaternion_to_matrix(q0.numpy()), rot)
    assert np.mean(err0 < 10.0) < np.mean(err < 10.0) - 0.1, (np.sort(err0), np.sort(err))


# -- the data path: STAR CTF columns -> Optics; standardised images; the model follows the data --
def test_standardise_uses_the_background_outside_the_circle():
    from cryovae_nb.preprocess import normalise
    from cryovae_nb.volumes import radius_grid

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (4, 20, 20)).astype(np.float32)
    x[:, 6:14, 6:14] += 50.0                                     # the particle: must not set the scale
    outside = radius_grid(20, 2) > 9.5
    bg = x[:, outside]
    want = (x - bg.mean(1)[:, None, None]) / bg.std(1)[:, None, None]
    np.testing.assert_allclose(normalise(x, "standardise", background_radius=9.5), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="background_radius"):
        normalise(x, "standardise")


def _write_relion31(tmp_path, n=6, box=16):
    """A RELION 3.1 STAR file: two optics groups (voltage, Cs, amplitude contrast), per-particle
    defocus, and a per-particle amplitude contrast column overriding the groups'."""
    import pandas as pd
    import starfile

    from cryovae_nb.io import write_stack

    write_stack(tmp_path / "p.mrcs", np.random.default_rng(0).normal(size=(n, box, box)).astype(np.float32), 2.5)
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["a", "b"],
                           "rlnVoltage": [300.0, 200.0], "rlnSphericalAberration": [2.7, 1.4],
                           "rlnAmplitudeContrast": [0.1, 0.07], "rlnImagePixelSize": [2.5, 2.5],
                           "rlnImageSize": [box, box], "rlnImageDimensionality": [2, 2]})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1}@p.mrcs" for i in range(n)],
                          "rlnOpticsGroup": [1, 2] * (n // 2),
                          "rlnDefocusU": 10000.0 + 1000 * np.arange(n), "rlnDefocusV": 9000.0 + 1000 * np.arange(n),
                          "rlnDefocusAngle": np.linspace(0, 90, n), "rlnPhaseShift": np.zeros(n),
                          "rlnCtfBfactor": np.full(n, 20.0)})
    starfile.write({"optics": optics, "particles": parts}, tmp_path / "p.star")
    return tmp_path / "p.star"


def test_particle_optics_from_relion31_optics_groups(tmp_path):
    from cryovae_nb.io import read_particles
    from cryovae_nb.training.data import BatchReader, particle_optics

    particles = read_particles(_write_relion31(tmp_path))
    o = particle_optics(particles)
    np.testing.assert_allclose(o.voltage, [300, 200] * 3)
    np.testing.assert_allclose(o.cs, [2.7, 1.4] * 3, rtol=1e-6)
    np.testing.assert_allclose(o.amp_contrast, [0.1, 0.07] * 3, rtol=1e-6)
    np.testing.assert_allclose(o.defocus_u, 10000 + 1000 * np.arange(6))
    np.testing.assert_allclose(o.bfactor, 20.0)
    np.testing.assert_allclose(o.pixel_size, 2.5)
    batch = BatchReader(particles.images, optics=o)(np.array([3, 0]))
    np.testing.assert_allclose(batch.optics.defocus_v, [12000, 9000])
    np.testing.assert_allclose(batch.optics.voltage, [200, 300])
    # a per-particle column overrides its optics group's (RELION's rule)
    df = particles.df.copy()
    df["rlnAmplitudeContrast"] = 0.2
    from cryovae_nb.io.star import Particles

    over = Particles(df, particles.images, particles.pixel_size, source=particles.source)
    np.testing.assert_allclose(particle_optics(over).amp_contrast, 0.2, rtol=1e-6)
    df.loc[2, "rlnDefocusU"] = np.nan
    with pytest.raises(InputError, match=r"row 3: CTF parameter defocus_u"):
        particle_optics(Particles(df, particles.images, particles.pixel_size, source=particles.source))


@pytest.fixture(scope="module")
def ctf_data(tmp_path_factory):
    """A small CTF dataset (hinge, box 16, 4 A/px, defocus 1-2.5 um), preprocessed by default
    (standardised) and phase flipped (tanh)."""
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate

    root = tmp_path_factory.mktemp("ctf")
    ds = simulate(SimulationConfig(phantom="hinge", box=16, n_particles=400, snr=1.0, ctf=True,
                                   pixel_size=4.0, seed=2), root / "sim", progress=False)
    std = preprocess_stack(ds.star, root / "std" / "p", PreprocessConfig(), progress=False)
    flip = preprocess_stack(ds.star, root / "flip" / "p", PreprocessConfig(phase_flip=True), progress=False)
    return ds, root / "std" / "p.star", root / "flip" / "p.star", std, flip


def test_default_preprocessing_of_ctf_data_standardises_and_records_it(ctf_data):
    from cryovae_nb.training.data import data_normalisation
    from cryovae_nb.volumes import radius_grid

    _, std_star, flip_star, std, flip = ctf_data
    assert data_normalisation(std_star) == "standardise" and data_normalisation(flip_star) == "tanh"
    x = std.images[:]
    assert np.allclose(x[:, radius_grid(16, 2) > 0.95 * 8], 0)            # masked outside the circle
    y = flip.images[:]
    assert y.min() >= 0 and y.max() <= 1                                  # tanh, masked
    assert x.min() < -1 and x.max() > 1                                   # standardised: signed, noise units
    assert std.ctf is not None and std.pixel_size == pytest.approx(4.0)


def test_the_model_follows_the_data(ctf_data):
    from cryovae_nb.io import read_particles
    from cryovae_nb.training.data import model_for_data

    _, std_star, flip_star, _, _ = ctf_data
    base = ModelConfig().with_options(box=16, pose_mode="known")
    got = model_for_data(base, read_particles(std_star), std_star)
    assert got.loss.ctf and got.loss.link == "identity"
    assert model_for_data(base, read_particles(flip_star), flip_star) == base   # CTF-free path unchanged
    with pytest.raises(ConfigError, match="phase flipped"):
        model_for_data(ModelConfig.preset("ctf", box=16), read_particles(flip_star), flip_star)
    with pytest.raises(ConfigError, match="bernoulli"):
        model_for_data(ModelConfig.preset("seed", box=16), read_particles(std_star), std_star)


def test_train_encode_and_reconstruct_with_the_ctf_model(ctf_data, tmp_path):
    from cryovae_nb.inference import load_run
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    ds, std_star, _, std, _ = ctf_data
    model = ModelConfig().with_options(box=16, pose_mode="known", latent_dim=2, encoder_layers=1,
                                       encoder_units=32, decoder_layers=2, decoder_units=32)
    cfg = TrainConfig(data=str(std_star), run_dir=str(tmp_path / "run"), model=model, batch_size=32,
                      learning_rate=1e-3, max_steps=40, log_every=20, sample_every=1000,
                      checkpoint_every=20, n_test_eval=40, n_samples=4, seed=1)
    trainer = Trainer(cfg, progress=False)
    assert trainer.config.model.loss.ctf and trainer.config.model.loss.link == "identity"
    trainer.train()
    run = load_run(tmp_path / "run")
    assert run.config.model.loss.ctf                            # the run folder records it
    enc = run.encode(std_star, progress=False)
    assert np.isfinite(enc.z_mean).all() and len(enc) == len(std)
    images, predicted = run.reconstruct(std_star, np.arange(8))
    # the model's images carry the CTF: their spectra vanish where each particle's CTF does
    from cryovae_nb.training.data import particle_optics

    ctf = ctf_spectrum(particle_optics(std)[np.arange(8)], 16).numpy()
    spec = np.abs(np.fft.rfft2(predicted))
    near_zero = np.abs(ctf) < 0.05
    assert near_zero.any()
    assert spec[near_zero].mean() < 0.2 * spec[np.abs(ctf) > 0.5].mean()
    with pytest.raises(InputError, match="CTF"):
        run.encode(np.zeros((2, 16, 16), np.float32), progress=False)
    # the screening feature goes through the same forward model: with the Gaussian likelihood each
    # particle's error is an affine function of its squared residual against the CTF'd image
    errors = run.reconstruction_errors(std, np.arange(8))
    sse = ((images - predicted) ** 2).sum(axis=(1, 2))
    assert errors.shape == (8,) and np.corrcoef(errors, sse)[0, 1] > 0.99


def test_the_ctf_is_computed_at_the_fourier_cropped_pixel_size(ctf_data, tmp_path):
    """Fourier-cropping 16 -> 12 px makes the pixels 4 * 16 / 12 A: the CTF the model applies to a
    cropped image is the CTF of the original's cropped spectrum, which a wrong pixel size breaks."""
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.training.data import particle_optics

    ds = ctf_data[0]
    out = preprocess_stack(ds.star, tmp_path / "crop" / "p", PreprocessConfig(box=12), progress=False)
    o = particle_optics(out)
    np.testing.assert_allclose(o.pixel_size, 4.0 * 16 / 12, rtol=1e-6)
    # the original grid's CTF, cropped to the central 12 x 12 frequencies, is the CTF at 12 px
    full = compute_ctf(16, 4.0, o.defocus_u[:3], o.defocus_v[:3], o.defocus_angle[:3], o.voltage[:3],
                       o.cs[:3], o.amp_contrast[:3])
    keep = np.r_[0:6, 10:16]                                   # fftfreq order: |k| < 6 of 16
    want = full[:, keep][:, :, keep][:, :, :7]
    got = ctf_spectrum(o[np.arange(3)], 12).numpy()
    np.testing.assert_allclose(got[:, :, :6], want[:, :, :6], atol=2e-3)
