"""Analysis: FSC against analytic cases, alignment and hand on the real hand-vol.mrc, latent
statistics / embeddings / k-means, volume series, particle screening (its STAR export: test_io)."""
from __future__ import annotations

import argparse
import json
import warnings

import mrcfile
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cryovae_nb.analysis.align import align, consistent_hand, correlation
from cryovae_nb.analysis.fsc import FSCResult, fsc
from cryovae_nb.analysis.latent import embed, kmeans, latent_statistics
from cryovae_nb.analysis.screen import screen_particles
from cryovae_nb.analysis.series import (cluster_volumes, decode_volumes, interpolation_series, save_series,
                                        traversal_series)
from cryovae_nb.commands import fsc as fsc_command
from cryovae_nb.errors import InputError
from cryovae_nb.geometry import random_rotations, rotation_angle_deg
from cryovae_nb.volumes import mirror_through_plane, rotate_volume, soft_sphere_mask

MIRROR = np.diag([1.0, 1.0, -1.0])  # (x, y, z) -> (x, y, -z), what mirror_through_plane does


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # 2 cores shared by parallel test runs: OpenMP/BLAS threads then spin against each other
    # (t-SNE ran 6x slower in wall time); results do not depend on the thread count
    # load sklearn's OpenMP runtime first: the limits apply to libraries already loaded
    import sklearn.manifold  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


# ---------------------------------------------------------------------------------------------
# helpers (independent of the code under test)
# ---------------------------------------------------------------------------------------------


def fsc_bruteforce(v1, v2):
    """Eq. 2.64 literally on the full complex grid, shell by shell."""
    n = v1.shape[0]
    F1, F2 = np.fft.fftn(v1), np.fft.fftn(v2)
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    shell = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    out = []
    for r in range(n // 2 + 1):
        s = shell == r
        num = np.sum(F1[s] * np.conj(F2[s]))
        den = np.sqrt(np.sum(np.abs(F1[s]) ** 2) * np.sum(np.abs(F2[s]) ** 2))
        out.append(num.real / den)
    return np.array(out)


def chiral_blobs(n=32, sigma=1.0):
    """Three perpendicular arms of lengths 10, 6, 4 voxels from a corner: a chiral object whose
    mirror image no rotation reproduces."""
    v = np.zeros((n, n, n), np.float32)
    c = n // 2
    for axis, length in ((0, 10), (1, 6), (2, 4)):
        for t in range(length + 1):
            p = np.array([c - 4, c - 3, c - 2])  # corner (x, y, z)
            p[axis] += t
            v[p[2], p[1], p[0]] = 1.0
    return ndimage.gaussian_filter(v, sigma)


@pytest.fixture(scope="module")
def hand(shared_data):
    with mrcfile.open(shared_data / "hand-vol.mrc", permissive=True) as m:
        assert m.data.shape == (64, 64, 64)
        return np.asarray(m.data, np.float32)


# ---------------------------------------------------------------------------------------------
# FSC
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [15, 16])
def test_fsc_matches_equation_on_the_full_grid(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n, n))
    b = a + 0.8 * rng.standard_normal((n, n, n))
    r = fsc(a, b)
    np.testing.assert_allclose(r.curve, fsc_bruteforce(a, b), atol=1e-6)
    # every full-grid voxel within round(|k|) <= n//2 is counted once
    k = np.fft.fftfreq(n) * n
    rr = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    np.testing.assert_array_equal(r.n_voxels, np.bincount(rr.astype(int).ravel())[: n // 2 + 1])


def test_fsc_identical_scaled_and_offset_volumes_is_one(hand):
    for other in (hand, 3.7 * hand, hand + 0.25):
        r = fsc(hand, other, pixel_size=1.0)
        # adding a constant only touches the k = 0 term (shell 0, same sign here)
        np.testing.assert_allclose(r.curve, 1.0, atol=1e-6)
        assert not r.crossed_05 and not r.crossed_0143
        assert r.resolution_05 == pytest.approx(2.0) and r.resolution_0143 == pytest.approx(2.0)
    # a sign flip is the opposite: -1 everywhere, crossing at once
    r = fsc(hand, -hand)
    np.testing.assert_allclose(r.curve[1:], -1.0, atol=1e-6)


def test_fsc_of_independent_noise_is_within_its_standard_error():
    # FSC of independent white noise has standard deviation 1/sqrt(voxels in the shell)
    z = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        r = fsc(rng.standard_normal((48,) * 3), rng.standard_normal((48,) * 3))
        z.append(r.curve[2:] * np.sqrt(r.n_voxels[2:]))
    z = np.concatenate(z)
    assert np.abs(z).max() < 4.0
    assert 0.8 < z.std() < 1.2 and abs(z.mean()) < 0.3


def test_fsc_crossing_of_a_lowpassed_volume_and_angstrom_conversion():
    n, px, k0 = 64, 2.0, 10
    rng = np.random.default_rng(0)
    v = rng.standard_normal((n, n, n))
    k = np.fft.fftfreq(n) * n
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    low = np.real(np.fft.ifftn(np.fft.fftn(v) * (kk < k0 + 0.5)))  # shells 0..k0 kept exactly
    r = fsc(v, low, pixel_size=px)
    np.testing.assert_allclose(r.curve[: k0 + 1], 1.0, atol=1e-6)
    np.testing.assert_allclose(r.curve[k0 + 1:], 0.0, atol=1e-6)
    # linear interpolation between shell k0 (1.0) and k0 + 1 (0.0)
    assert r.resolution_05 == pytest.approx(n * px / (k0 + 0.5))
    assert r.resolution_0143 == pytest.approx(n * px / (k0 + 1 - 0.143))
    assert r.crossed_05 and r.crossed_0143
    np.testing.assert_allclose(r.frequencies, np.arange(n // 2 + 1) / (n * px))
    assert r.nyquist == pytest.approx(2 * px) and 1 / r.frequencies[-1] == pytest.approx(2 * px)
    assert r.resolution_at(0.9) == (pytest.approx(n * px / (k0 + 0.1)), True)


def test_fsc_mask_sphere_equals_the_explicit_mask_and_inputs_are_checked(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 24, 24, 24))
    m = soft_sphere_mask(24)
    assert m[12, 12, 12] == 1.0 and m[0, 0, 0] == 0.0 and m.max() == 1.0
    np.testing.assert_allclose(fsc(a, b, mask="sphere").curve, fsc(a * m, b * m).curve)
    np.testing.assert_allclose(fsc(a, b, mask=m).curve, fsc_bruteforce(a * m, b * m), atol=1e-6)
    with pytest.raises(InputError, match="same shape"):
        fsc(a, b[:20, :20, :20])
    with pytest.raises(InputError, match="cubic"):
        fsc(a[:, :, :20], b[:, :, :20])
    with pytest.raises(InputError, match="mask shape"):
        fsc(a, b, mask=m[:20])
    with pytest.raises(InputError, match="NaN"):
        fsc(np.full((8, 8, 8), np.nan), b[:8, :8, :8])
    with pytest.raises(InputError, match="pixel size"):
        fsc(a, b, pixel_size=0)


def test_fsc_result_saves_json_and_csv(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((16, 16, 16))
    r = fsc(a, a + rng.standard_normal(a.shape), pixel_size=1.5)
    r.save(tmp_path / "f.json")
    back = FSCResult.load(tmp_path / "f.json")
    np.testing.assert_allclose(back.curve, r.curve)
    assert back.resolution_0143 == r.resolution_0143 and back.crossed_05 == r.crossed_05
    r.save(tmp_path / "f.csv")
    df = pd.read_csv(tmp_path / "f.csv")
    assert len(df) == 9
    np.testing.assert_allclose(df["fsc"], r.curve, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(df["resolution_A"][1:], 16 * 1.5 / np.arange(1, 9), rtol=1e-5)
    with pytest.raises(InputError, match="json or .csv"):
        r.save(tmp_path / "f.txt")
    assert list(tmp_path.iterdir()) and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_fsc_cli_on_mrc_files(tmp_path, capsys):
    from cryovae_nb.io import write_volume

    rng = np.random.default_rng(3)
    v = ndimage.gaussian_filter(rng.standard_normal((32, 32, 32)), 1.0).astype(np.float32)
    write_volume(tmp_path / "a.mrc", v, 2.5)
    noise = 0.01 * rng.standard_normal(v.shape).astype(np.float32)
    write_volume(tmp_path / "b.mrc", v + noise, 2.5)
    p = argparse.ArgumentParser()
    fsc_command.add_arguments(p)
    args = p.parse_args([str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--mask", "sphere",
                         "--out", str(tmp_path / "fsc.json")])
    assert fsc_command.run(args) == 0
    out = json.loads((tmp_path / "fsc.json").read_text())
    assert out["pixel_size"] == 2.5 and out["nyquist"] == 5.0
    assert "FSC 0.143" in capsys.readouterr().out
    write_volume(tmp_path / "c.mrc", v[:16, :16, :16], 2.5)
    with pytest.raises(InputError, match=r"c\.mrc: shape \(16, 16, 16\) differs"):
        fsc_command.run(p.parse_args([str(tmp_path / "a.mrc"), str(tmp_path / "c.mrc")]))


# ---------------------------------------------------------------------------------------------
# rotating, mirroring, aligning
# ---------------------------------------------------------------------------------------------


def test_rotate_volume_moves_a_point_to_R_transpose_p_plus_s():
    n = 32
    p = np.array([5.0, -3.0, 7.0])  # (x, y, z) from the centre
    v = np.zeros((n, n, n), np.float32)
    v[int(p[2]) + n // 2, int(p[1]) + n // 2, int(p[0]) + n // 2] = 1
    v = ndimage.gaussian_filter(v, 1.5)
    R = random_rotations(1, np.random.default_rng(0))[0]
    s = np.array([1.0, 2.0, -1.5])
    w = rotate_volume(v, R, s)  # W(r) = V(R (r - s)) peaks where R (r - s) = p
    com = np.array(ndimage.center_of_mass(w))[::-1] - n // 2
    np.testing.assert_allclose(com, R.T @ p + s, atol=0.05)


def test_rotate_volume_agrees_with_the_reference_projector():
    from cryovae_nb.projection import project_reference

    v = chiral_blobs(24)
    R = random_rotations(1, np.random.default_rng(1))[0]
    img = project_reference(v, R[None], np.array([[1.5, -2.0]]))[0]
    np.testing.assert_allclose(rotate_volume(v, R, (1.5, -2.0, 0.0)).sum(axis=0), img,
                               atol=1e-4 * np.abs(img).max())


def test_mirror_through_plane_is_an_involution_that_negates_z():
    v = chiral_blobs(32)
    np.testing.assert_array_equal(mirror_through_plane(mirror_through_plane(v)), v)
    com = np.array(ndimage.center_of_mass(v))[::-1] - 16
    com_m = np.array(ndimage.center_of_mass(mirror_through_plane(v)))[::-1] - 16
    np.testing.assert_allclose(com_m, MIRROR @ com, atol=1e-4)
    # chiral: no proper rotation maps it onto its mirror image
    assert align(mirror_through_plane(v), v, try_mirror=False).correlation < 0.95


def test_align_recovers_a_known_rotation_and_shift_on_hand_vol(hand):
    rng = np.random.default_rng(11)
    Rt = random_rotations(1, rng)[0]
    st = np.array([2.0, -1.5, 2.5])
    target = rotate_volume(hand, Rt, st)
    res = align(target, hand)
    # rotate(rotate(V, Rt, st), R, s) = V  <=>  R = Rt^T, s = -Rt st
    assert not res.mirrored
    assert rotation_angle_deg(res.rotation, Rt.T) < 3.0
    np.testing.assert_allclose(res.shift, -Rt @ st, atol=0.5)
    assert res.correlation > correlation(target, hand) + 0.3
    assert res.correlation > res.correlation_other_hand + 0.05
    np.testing.assert_allclose(res.aligned, rotate_volume(target, res.rotation, res.shift),
                               atol=1e-5)


def test_align_detects_the_mirror_image_of_hand_vol(hand):
    rng = np.random.default_rng(12)
    Rt = random_rotations(1, rng)[0]
    st = np.array([-1.0, 2.0, 0.5])
    target = rotate_volume(mirror_through_plane(hand), Rt, st)
    res = align(target, hand)
    assert res.mirrored
    # mirror(rotate(mirror(V), Rt, st)) = rotate(V, M Rt M, M st)
    Rm = MIRROR @ Rt @ MIRROR
    assert rotation_angle_deg(res.rotation, Rm.T) < 3.0
    np.testing.assert_allclose(res.shift, -Rm @ (MIRROR @ st), atol=0.5)
    assert res.correlation > res.correlation_other_hand + 0.05
    assert not align(target, hand, try_mirror=False).mirrored


def test_consistent_hand_flips_exactly_the_mirrored_volumes():
    rng = np.random.default_rng(5)
    v = chiral_blobs(32)
    truth = np.array([False, True, True])
    vols = np.stack([rotate_volume(mirror_through_plane(v) if m else v, R, rng.uniform(-2, 2, 3))
                     for m, R in zip(truth, random_rotations(len(truth), rng))])
    out, flipped = consistent_hand(vols, reference=v)
    np.testing.assert_array_equal(flipped, truth)
    np.testing.assert_array_equal(out[1], mirror_through_plane(vols[1]))
    np.testing.assert_array_equal(out[0], vols[0])
    # without a reference the first volume decides: the hand opposite to vols[0]'s flips
    out0, flipped0 = consistent_hand(vols[:2])
    np.testing.assert_array_equal(flipped0, [False, True])
    np.testing.assert_array_equal(out0[0], vols[0])
    with pytest.raises(InputError, match="shape"):
        consistent_hand(v)


def test_align_rejects_mismatched_volumes():
    with pytest.raises(InputError, match="same shape"):
        align(np.zeros((16, 16, 16)), np.zeros((18, 18, 18)))


# ---------------------------------------------------------------------------------------------
# latent landscape
# ---------------------------------------------------------------------------------------------


def test_latent_statistics_match_numpy():
    z = np.random.default_rng(0).normal(size=(500, 5)) * [1, 2, 3, 4, 5] + [0, 1, 0, -1, 0]
    df = latent_statistics(z)
    assert list(df.index) == ["mean", "std", "min", "25%", "50%", "75%", "max"]
    assert list(df.columns) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(df.loc["mean"], z.mean(0))
    np.testing.assert_allclose(df.loc["std"], z.std(0, ddof=1))
    np.testing.assert_allclose(df.loc["50%"], np.median(z, 0))
    np.testing.assert_allclose(df.loc[["min", "max"]], [z.min(0), z.max(0)])
    # same numbers as pandas' describe, the table layout of the thesis
    np.testing.assert_allclose(df.values, pd.DataFrame(z).describe().drop("count").values)
    with pytest.raises(InputError, match="NaN"):
        latent_statistics(np.array([[np.nan, 1.0]]))


def _blobs(n_per=100, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(3, d))
    z = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres])
    return z, np.repeat(np.arange(3), n_per), centres


def test_pca_embedding_is_the_projection_on_the_leading_components():
    z, _, _ = _blobs()
    e = embed(z, "pca", n_components=2)
    assert e.coords.shape == (300, 2) and np.array_equal(e.indices, np.arange(300))
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    ref = zc @ vt[:2].T
    for j in range(2):  # equal up to each component's sign
        assert min(np.abs(e.coords[:, j] - ref[:, j]).max(),
                   np.abs(e.coords[:, j] + ref[:, j]).max()) < 1e-3
    np.testing.assert_allclose(e.explained_variance_ratio, (s**2 / (s**2).sum())[:2], rtol=1e-6)
    np.testing.assert_array_equal(embed(z, "pca").coords, e.coords)


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_nonlinear_embeddings_are_deterministic_and_keep_blobs_apart(method):
    z, labels, _ = _blobs(n_per=60)
    e1 = embed(z, method, seed=3)
    e2 = embed(z, method, seed=3)
    assert e1.coords.shape == (180, 2) and e1.method == method
    np.testing.assert_array_equal(e1.coords, e2.coords)
    # each blob stays together: nearest embedded neighbour from the same blob
    d = np.linalg.norm(e1.coords[:, None] - e1.coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.98


def test_embedding_subsamples_above_max_points_with_a_warning():
    z, _, _ = _blobs(n_per=100)
    with pytest.warns(UserWarning, match="subsample of 90 of 300"):
        e = embed(z, "tsne", max_points=90, seed=1, perplexity=10)
    assert e.coords.shape == (90, 2) and len(np.unique(e.indices)) == 90
    assert np.all(np.diff(e.indices) > 0) and "subsample" in e.note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert embed(z, "pca", max_points=90).coords.shape == (300, 2)  # PCA takes all
    with pytest.raises(InputError, match="unknown embedding"):
        embed(z, "mds")
    with pytest.raises(InputError, match="n_components"):
        embed(z, "pca", n_components=7)


def test_kmeans_recovers_separated_blobs():
    z, labels, centres = _blobs()
    lab, cen = kmeans(z, 3, seed=0)
    assert lab.shape == (300,) and cen.shape == (3, 6)
    # the partition is the true one up to a relabelling
    pairs = {(a, b) for a, b in zip(labels, lab)}
    assert len(pairs) == 3
    for c in centres:
        assert np.linalg.norm(cen - c, axis=1).min() < 0.5
    np.testing.assert_array_equal(kmeans(z, 3, seed=0)[0], lab)
    with pytest.raises(InputError, match="k must be"):
        kmeans(z, 0)


class LinearDecoder:
    """decode(z) = sum_i z_i * basis_i: a stand-in whose output is known exactly."""

    def __init__(self, d=4, n=8, seed=0):
        self.basis = np.random.default_rng(seed).normal(size=(d, n, n, n)).astype(np.float32)
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return np.einsum("bd,dzyx->bzyx", np.asarray(z, np.float32), self.basis)


def test_traversal_and_interpolation_series():
    dec = LinearDecoder()
    z = np.random.default_rng(1).normal(size=(50, 4))
    path, vols = traversal_series(dec, z, dim=2, steps=5)
    np.testing.assert_allclose(path[:, 2], np.linspace(z[:, 2].min(), z[:, 2].max(), 5))
    np.testing.assert_allclose(path[:, [0, 1, 3]], np.repeat(z.mean(0)[None, [0, 1, 3]], 5, 0))
    np.testing.assert_allclose(vols, dec(path), rtol=1e-5, atol=1e-5)
    path, vols = interpolation_series(dec, z[0], z[1], steps=6)
    np.testing.assert_allclose(path[[0, -1]], z[:2])
    np.testing.assert_allclose(vols[3], dec(0.4 * z[:1] + 0.6 * z[1:2])[0], rtol=1e-4, atol=1e-4)
    # many latents are decoded in batches
    dec.calls = 0
    assert decode_volumes(dec, z, batch_size=16).shape == (50, 8, 8, 8) and dec.calls == 4
    np.testing.assert_allclose(cluster_volumes(dec, z[:3]), dec(z[:3]), rtol=1e-5)
    with pytest.raises(InputError, match="dim"):
        traversal_series(dec, z, dim=4)
    with pytest.raises(InputError, match="decode returned"):
        decode_volumes(lambda zz: np.zeros((len(zz), 8, 8)), z[:2])


def test_save_series_writes_numbered_mrcs_with_voxel_size(tmp_path):
    vols = np.random.default_rng(2).normal(size=(3, 8, 8, 8)).astype(np.float32)
    paths = save_series(tmp_path / "series", vols, voxel_size=4.2, prefix="dim3")
    assert [p.name for p in paths] == ["dim3_000.mrc", "dim3_001.mrc", "dim3_002.mrc"]
    for p, v in zip(paths, vols):
        with mrcfile.open(p) as m:
            np.testing.assert_array_equal(m.data, v)
            assert float(m.voxel_size.x) == pytest.approx(4.2)


# ---------------------------------------------------------------------------------------------
# screening
# ---------------------------------------------------------------------------------------------


def _population(n_good=900, n_bad=100, seed=0):
    rng = np.random.default_rng(seed)
    err = np.concatenate([rng.normal(1.0, 0.05, n_good), rng.normal(1.4, 0.08, n_bad)])
    logvar = np.concatenate([rng.normal(-4.0, 0.3, (n_good, 8)), rng.normal(-0.5, 0.3, (n_bad, 8))])
    bad = np.r_[np.zeros(n_good, bool), np.ones(n_bad, bool)]
    return err, logvar, bad


@pytest.mark.parametrize("method", ["gmm", "threshold"])
def test_screening_separates_broken_from_intact_particles(method):
    err, logvar, bad = _population()
    df = screen_particles(err, logvar, method=method)
    assert len(df) == 1000 and {"recon_error", "posterior_var", "score", "keep"} <= set(df)
    np.testing.assert_allclose(df["posterior_var"], np.exp(logvar).mean(1))
    assert df["keep"][~bad].mean() > 0.97
    assert (~df["keep"][bad]).mean() > 0.97
    assert df["score"][bad].min() > df["score"][~bad].median()


def test_mixture_separation_is_ashmans_d():
    from sklearn.mixture import GaussianMixture

    from cryovae_nb.analysis.screen import mixture_separation

    rng = np.random.default_rng(1)
    # two 1-D Gaussians 6 apart with std 1 and 2: D = sqrt(2) * 6 / sqrt(1 + 4)
    x = np.r_[rng.normal(0, 1, 20000), rng.normal(6, 2, 20000)][:, None]
    g = GaussianMixture(2, random_state=0).fit(x)
    assert mixture_separation(g) == pytest.approx(np.sqrt(2) * 6 / np.sqrt(5), rel=0.03)
    # a milder junk population, 30 %, is still dropped by the mixture
    err = np.r_[rng.normal(100, 5, 2800), rng.normal(115, 8, 1200)]
    logvar = np.r_[rng.normal(-2, 0.2, (2800, 4)), rng.normal(-1.5, 0.3, (1200, 4))]
    df = screen_particles(err, logvar)
    assert (~df["keep"][2800:]).mean() > 0.8 and df["keep"][:2800].mean() > 0.95


def test_screening_keeps_a_single_population_and_checks_inputs():
    rng = np.random.default_rng(4)
    df = screen_particles(rng.normal(1.0, 0.05, 800), rng.normal(-3, 0.3, (800, 4)))
    assert df["keep"].all() and "one population" in df.attrs["note"]
    # one skewed population of thousands: BIC prefers two Gaussians, but they overlap (no gap)
    err, logvar = rng.lognormal(0, 0.5, 4000), rng.normal(0, 0.3, (4000, 4))
    df = screen_particles(err, logvar)
    assert df["keep"].all() and "overlap" in df.attrs["note"]
    # error only, threshold on the robust z-score
    err = np.r_[np.full(50, 1.0) + rng.normal(0, 0.01, 50), 5.0]
    df = screen_particles(err, method="threshold", threshold=3.0)
    assert list(np.flatnonzero(~df["keep"])) == [50]
    with pytest.raises(InputError, match="rows"):
        screen_particles(np.ones(5), np.zeros((4, 2)))
    with pytest.raises(InputError, match="unknown screening"):
        screen_particles(np.ones(20), method="kmeans")


def test_module_is_headless():
    import subprocess
    import sys

    code = ("import sys, cryovae_nb.analysis, cryovae_nb.analysis.fsc, cryovae_nb.analysis.align, "
            "cryovae_nb.analysis.latent, cryovae_nb.analysis.series, cryovae_nb.analysis.screen, "
            "cryovae_nb.commands.fsc, cryovae_nb.volumes; "
            "print(sorted(m for m in ('tensorflow', 'IPython', 'ipywidgets', 'umap', 'keras') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
