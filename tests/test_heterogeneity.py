"""heterogeneity.py: the figures that judge a latent space against simulated truth, on latents
and decoders built by hand so that the right answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from cryovae_nb.volumes import rotate_volume
from cryovae_nb.errors import InputError
from cryovae_nb.geometry import random_rotations
from cryovae_nb.heterogeneity import motion_recovery, state_volumes, two_state_accuracy
from cryovae_nb.synthetic import hinge_volume


# -- motion_recovery --------------------------------------------------------------------------------
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_motion_recovery_of_a_noisy_monotone_latent_is_near_one(sign):
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 300)
    # two dimensions, both monotone (one nonlinear) in t, plus a little noise; the sign is free
    z = sign * np.stack([np.tanh(3 * t), t**2], 1) + rng.normal(0, 0.02, (300, 2))
    r = motion_recovery(z, t)
    assert r["spearman_pc"] > 0.95 and r["spearman_dim"] > 0.95, r
    assert r["best_pc"] == 0  # the motion is the main variation
    assert r["knn_r2"] > 0.9, r


def test_motion_recovery_of_a_latent_independent_of_the_motion_is_near_zero():
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 1, 2000)
    z = rng.normal(size=(2000, 4))
    r = motion_recovery(z, t)
    assert r["spearman_pc"] < 0.1 and r["spearman_dim"] < 0.1, r
    assert r["knn_r2"] < 0.1, r


def test_motion_recovery_of_a_latent_carrying_the_motion_in_a_minor_direction():
    """The motion in a low-variance direction next to a large irrelevant one: the best PC is the
    second, and the k-NN regression on standardised latents still finds it."""
    rng = np.random.default_rng(2)
    t = rng.uniform(0, 1, 400)
    z = np.stack([rng.normal(0, 10, 400), t + rng.normal(0, 0.01, 400)], 1)
    r = motion_recovery(z, t)
    assert r["best_pc"] == 1 and r["spearman_pc"] > 0.95, r
    assert r["knn_r2"] > 0.9, r


def test_motion_recovery_rejects_bad_inputs():
    rng = np.random.default_rng(3)
    with pytest.raises(InputError):
        motion_recovery(rng.normal(size=(50, 2)), rng.uniform(size=49))  # length mismatch
    with pytest.raises(InputError):
        motion_recovery(rng.normal(size=(6, 2)), rng.uniform(size=6))  # too few for k = 5
    with pytest.raises(InputError):
        motion_recovery(rng.normal(size=50), rng.uniform(size=50))  # not (n, d)
    z = rng.normal(size=(50, 2))
    z[3, 1] = np.nan
    with pytest.raises(InputError):
        motion_recovery(z, rng.uniform(size=50))


# -- two_state_accuracy -----------------------------------------------------------------------------
def test_two_state_accuracy_on_separable_clusters_is_one_whatever_the_labels():
    rng = np.random.default_rng(4)
    states = np.repeat([0, 1], 100)
    rng.shuffle(states)
    z = np.where(states[:, None] == 1, 3.0, -3.0) + rng.normal(0, 0.5, (200, 3))
    assert two_state_accuracy(z, states) == 1.0
    assert two_state_accuracy(z, 1 - states) == 1.0  # the cluster numbering is arbitrary
    # a tenth of the particles labelled wrong: that fraction is lost
    wrong = states.copy()
    wrong[:20] = 1 - wrong[:20]
    assert two_state_accuracy(z, wrong) == pytest.approx(0.9)


def test_two_state_accuracy_of_a_latent_without_the_states_is_chance():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(600, 3))
    states = rng.integers(0, 2, 600)
    acc = two_state_accuracy(z, states)
    assert 0.5 <= acc < 0.58


def test_two_state_accuracy_rejects_bad_inputs():
    z = np.random.default_rng(6).normal(size=(10, 2))
    with pytest.raises(InputError):
        two_state_accuracy(z, np.zeros(9))
    with pytest.raises(InputError):
        two_state_accuracy(z, np.arange(10) % 3)  # states other than 0 and 1


# -- state_volumes ------------------------------------------------------------------------------------
N = 16


@pytest.fixture(scope="module")
def two_states():
    """The closed and the open hinge, and latents: state 0 around x = -1, state 1 around x = +1."""
    truths = np.stack([hinge_volume(N, 0.0), hinge_volume(N, 1.0)]).astype(np.float32)
    rng = np.random.default_rng(7)
    labels = np.repeat([0, 1], 30)
    z = np.stack([np.where(labels == 1, 1.0, -1.0), np.zeros(60)], 1) + rng.normal(0, 0.2, (60, 2))
    centres = np.stack([z[labels == 0].mean(0), z[labels == 1].mean(0)])
    return truths, labels, z, centres


def interpolating_decoder(truths, centres, swap=False):
    """Truth 0 at centre 0, truth 1 at centre 1, linear in between along the first coordinate
    (``swap``: the other way round)."""
    def decode(z):
        z = np.asarray(z, np.float64)
        w = np.clip((z[:, 0] - centres[0, 0]) / (centres[1, 0] - centres[0, 0]), 0, 1)
        w = 1 - w if swap else w
        return ((1 - w)[:, None, None, None] * truths[0] + w[:, None, None, None] * truths[1]).astype(np.float32)
    return decode


def test_state_volumes_of_a_decoder_that_returns_each_truth(two_states):
    truths, labels, z, centres = two_states
    r = state_volumes(interpolating_decoder(truths, centres), z, labels, truths, pixel_size=2.0)
    corr = r["correlation"]
    assert corr.shape == (2, 2) and r["own_closest"]
    np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-6)
    assert corr[0, 1] < 0.99 and corr[1, 0] < 0.99  # the states do differ
    np.testing.assert_allclose(r["volumes"], truths, atol=1e-6)
    np.testing.assert_allclose(r["fsc05"], 2 * 2.0)  # identical volumes: Nyquist
    # the mean latent decodes to the midway blend: worse than each state's own, better than the other
    mean_corr = r["mean_latent_correlation"]
    assert mean_corr.shape == (2,)
    assert np.all(mean_corr < np.diag(corr) - 1e-4) and np.all(mean_corr > corr[[0, 1], [1, 0]])


def test_state_volumes_of_a_decoder_that_swaps_the_states(two_states):
    truths, labels, z, centres = two_states
    r = state_volumes(interpolating_decoder(truths, centres, swap=True), z, labels, truths)
    assert not r["own_closest"]
    np.testing.assert_allclose(r["correlation"][[0, 1], [1, 0]], 1.0, atol=1e-6)
    assert np.all(np.diag(r["correlation"]) < 0.99)


def test_state_volumes_with_align_to_undoes_a_common_rigid_move(two_states):
    """Decoded states in another frame (as with learned poses): aligning state 0 onto its truth and
    moving both by the same rotation recovers both."""
    truths, labels, z, centres = two_states
    R = random_rotations(1, np.random.default_rng(8))[0]
    moved = np.stack([rotate_volume(v, R) for v in truths]).astype(np.float32)
    decode = interpolating_decoder(moved, centres)
    in_place = state_volumes(decode, z, labels, truths)
    aligned = state_volumes(decode, z, labels, truths, align_to=0)
    assert aligned["own_closest"]
    assert np.all(np.diag(aligned["correlation"]) > 0.9), aligned["correlation"]
    assert np.all(np.diag(aligned["correlation"]) > np.diag(in_place["correlation"]) + 0.1)


def test_state_volumes_rejects_bad_inputs(two_states):
    truths, labels, z, centres = two_states
    decode = interpolating_decoder(truths, centres)
    with pytest.raises(InputError):
        state_volumes(decode, z, labels[:-1], truths)  # length mismatch
    with pytest.raises(InputError):
        state_volumes(decode, z, np.zeros_like(labels), truths)  # state 1 has no particle


# -- shrinkage: a group's latent is its mean posterior mean scaled back ------------------------------
def _linear_gaussian_posteriors(n=20000, d=2, seed=3):
    """Exact posteriors of a linear Gaussian model (independent of the library): z ~ N(0, I),
    y = G z + noise (64 pixels, variance s2); per particle a different G (its view)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    s2 = 4.0
    g = rng.normal(0, 0.25, (n, 64, d))                 # weak signal: strong shrinkage
    y = np.einsum("npd,nd->np", g, z) + rng.normal(0, np.sqrt(s2), (n, 64))
    prec = np.einsum("npd,npe->nde", g, g) / s2 + np.eye(d)
    cov = np.linalg.inv(prec)
    mean = np.einsum("nde,ne->nd", cov, np.einsum("npd,np->nd", g, y) / s2)
    return z, mean, np.log(np.diagonal(cov, axis1=1, axis2=2))


def test_deshrunk_group_means_recover_the_groups_true_mean_latent():
    from cryovae_nb.analysis.latent import deshrink, shrinkage

    z, mean, logvar = _linear_gaussian_posteriors()
    s = shrinkage(logvar)
    assert np.all(s > 0.2) and np.all(s < 0.8)          # the posterior means are pulled in a lot
    groups = np.digitize(z[:, 0], [-1.0, 0.0, 1.0])      # four groups along the first dimension
    true = np.stack([z[groups == k].mean(0) for k in range(4)])
    raw = np.stack([mean[groups == k].mean(0) for k in range(4)])
    fixed = deshrink(raw, logvar)
    # raw group means sit a factor ~s towards 0; scaled back they match the truth
    assert np.all(np.abs(raw[[0, 3], 0]) < 0.85 * np.abs(true[[0, 3], 0]))
    np.testing.assert_allclose(fixed[:, 0], true[:, 0], atol=0.12)


def test_shrinkage_of_an_uninformative_dimension_is_clipped():
    from cryovae_nb.analysis.latent import MIN_SHRINKAGE, deshrink, shrinkage

    logvar = np.zeros((50, 3))                           # posterior = prior: no information
    logvar[:, 0] = np.log(0.5)
    np.testing.assert_allclose(shrinkage(logvar), [0.5, MIN_SHRINKAGE, MIN_SHRINKAGE])
    np.testing.assert_allclose(deshrink([[1.0, 0.01, 0.0]], logvar), [[2.0, 0.2, 0.0]], rtol=1e-6)
    with pytest.raises(InputError, match="dimensions"):
        deshrink([[1.0, 2.0]], logvar)
    with pytest.raises(InputError, match="z_logvar"):
        shrinkage(np.full((3, 2), np.nan))


def test_state_volumes_decode_the_deshrunk_state_means(two_states):
    truths, labels, z, centres = two_states
    seen = []

    def decode(zz):
        seen.append(np.asarray(zz))
        return interpolating_decoder(truths, centres)(zz)

    logvar = np.full_like(z, np.log(0.5))                # shrinkage 0.5 in every dimension
    state_volumes(decode, z * 0.5, labels, truths, z_logvar=logvar)
    np.testing.assert_allclose(seen[-1][:2], centres, rtol=1e-5, atol=1e-6)
