"""The latent explorer at real-data size (issue #14): 200,000 latents are all embedded (UMAP fitted
on a seeded sample, the rest placed from it), a lasso over the map round-trips to ``indices.npy``
and a subset of the original STAR (read back with starfile), and the selection operations are
checked against independent references (Python sets, matplotlib's point-in-polygon)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import starfile
from matplotlib.path import Path as MplPath
from PIL import Image

from cryovae_nb.analysis import selections
from cryovae_nb.analysis.latent import embed, place_by_neighbours, sample_rows
from cryovae_nb.analysis.paths import graph_path
from cryovae_nb.errors import InputError
from cryovae_nb.io import SOURCE_INDEX, read_particles, write_stack
from cryovae_nb.io.star import source_record

N, D, FIT = 200_000, 6, 2_000


def blobs(n, d=D, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(k, d))
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


@pytest.fixture(scope="module")
def landscape():
    z, labels = blobs(N)
    return z, labels, embed(z, "umap", seed=0, fit_points=FIT)


def test_umap_of_200k_latents_covers_every_point(landscape):
    z, labels, e = landscape
    assert e.coords.shape == (N, 2) and np.all(np.isfinite(e.coords))
    np.testing.assert_array_equal(e.indices, np.arange(N))
    np.testing.assert_array_equal(e.fitted, sample_rows(N, FIT, 0))   # the seeded sample
    assert "sample of 2000 of 200000" in e.note
    # the placed points: inverse-distance weighted mean of their 10 nearest sampled neighbours,
    # recomputed here by brute force for some of them
    rest = np.setdiff1d(np.arange(N), e.fitted)
    some = np.random.default_rng(1).choice(rest, 50, replace=False)
    ref = z[e.fitted].astype(np.float64)
    for i in some:
        d = np.linalg.norm(ref - z[i], axis=1)
        nn = np.argsort(d)[:10]
        w = 1 / d[nn]
        np.testing.assert_allclose(e.coords[i], (w[:, None] * e.coords[e.fitted][nn]).sum(0) / w.sum(), rtol=1e-4, atol=1e-4)
    # the blobs stay apart on the map: each point is nearest its own blob's embedded centre
    centres = np.stack([np.median(e.coords[labels == c], axis=0) for c in range(4)])
    nearest = np.argmin(np.linalg.norm(e.coords[:, None] - centres[None], axis=-1), axis=1)
    assert (nearest == labels).mean() > 0.99


@pytest.fixture(scope="module")
def original_and_preprocessed(tmp_path_factory):
    """A RELION 3.1 original of N particles (optics table, columns the tool never reads) and the
    preprocessed set made from it in a shuffled order, with the provenance cryovae preprocess
    records (each particle's row in the original, the original's path and hash)."""
    folder = tmp_path_factory.mktemp("scale")
    write_stack(folder / "parts.mrcs", np.random.default_rng(0).normal(size=(20, 16, 16)).astype(np.float32), 2.0)
    rng = np.random.default_rng(2)
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["og1", "og2"],
                           "rlnAmplitudeContrast": [0.1, 0.1], "rlnSphericalAberration": [2.7, 2.7],
                           "rlnVoltage": [300.0, 300.0], "rlnImagePixelSize": [2.0, 2.0], "rlnImageSize": [16, 16],
                           "rlnImageDimensionality": [2, 2]})
    parts = pd.DataFrame({
        "rlnImageName": [f"{i % 20 + 1:06d}@parts.mrcs" for i in range(N)],
        "rlnMicrographName": [f"mic_{i % 97:03d}.mrc" for i in range(N)],
        "rlnDefocusU": rng.uniform(10000, 25000, N).round(1), "rlnDefocusV": rng.uniform(10000, 25000, N).round(1),
        "rlnDefocusAngle": rng.uniform(0, 180, N).round(2), "rlnOpticsGroup": 1 + (np.arange(N) % 2),
        "rlnClassNumber": rng.integers(1, 4, N)})
    star = folder / "run_data.star"
    starfile.write({"optics": optics, "particles": parts}, star, float_format="%.6f")
    original = read_particles(star)
    order = np.random.default_rng(3).permutation(N)
    prep = original.subset(order)
    prep.df[SOURCE_INDEX] = order
    prep.provenance = source_record(original)
    return star, prep, order


def test_lasso_over_200k_points_round_trips_to_indices_and_the_original_star(
        landscape, original_and_preprocessed, tmp_path):
    from cryovae_nb.widgets import LatentExplorer
    from test_widgets import plotly_event

    z, labels, e = landscape
    star, prep, order = original_and_preprocessed
    ex = LatentExplorer({"umap": e.coords}, latents=z, particles=prep, color_by={"cluster": labels})
    assert ex.figure.data[0].type == "scattergl" and len(ex.figure.data[0].x) == N
    # a lasso around blob 0's part of the map, as plotly.js reports it
    c = np.median(e.coords[labels == 0], axis=0)
    spread = np.ptp(e.coords[labels == 0], axis=0)
    ang = np.linspace(0, 2 * np.pi, 9)[:-1]
    rad = np.where(np.arange(8) % 2, 0.3, 0.6)             # a non-convex star
    poly = c + np.stack([np.cos(ang), np.sin(ang)], 1) * rad[:, None] * spread
    inside = selections.in_polygon(e.coords, poly)
    np.testing.assert_array_equal(inside, np.flatnonzero(MplPath(poly).contains_points(e.coords)))
    assert 1000 < inside.size < N // 4
    plotly_event(ex.figure, "plotly_selected", inside, e.coords)
    np.testing.assert_array_equal(ex.selected, inside)
    png = Image.open(io.BytesIO(ex.gallery.value))             # the selected particles' images
    assert png.size[0] > 0 and "16 of the" in ex.gallery_caption.value

    out = ex.export_selection(tmp_path / "lasso.star")
    idx = np.load(tmp_path / "lasso_indices.npy", allow_pickle=False)
    np.testing.assert_array_equal(idx, np.sort(order[inside]))      # rows of the original
    blocks = starfile.read(out, always_dict=True)
    want = starfile.read(star, always_dict=True)
    assert list(blocks["particles"].columns) == list(want["particles"].columns)
    pd.testing.assert_frame_equal(blocks["particles"].reset_index(drop=True),
                                  want["particles"].iloc[idx].reset_index(drop=True))
    pd.testing.assert_frame_equal(blocks["optics"], want["optics"], check_dtype=False)  # 300.0 is written 300


# -- the selection operations, small and exact --------------------------------------------------

def test_set_operations_match_python_sets():
    rng = np.random.default_rng(0)
    n = 500
    a, b = rng.choice(n, 120, replace=False), rng.choice(n, 200, replace=False)
    sa, sb = set(a.tolist()), set(b.tolist())
    assert selections.combine(a, b, n, "replace").tolist() == sorted(sb)
    assert selections.combine(a, b, n, "add").tolist() == sorted(sa | sb)
    assert selections.combine(a, b, n, "subtract").tolist() == sorted(sa - sb)
    assert selections.combine(a, b, n, "intersect").tolist() == sorted(sa & sb)
    assert selections.invert(a, n).tolist() == sorted(set(range(n)) - sa)
    mask = np.zeros(n, bool)
    mask[a] = True
    assert selections.combine([], mask, n, "add").tolist() == sorted(sa)
    with pytest.raises(InputError, match="unknown selection operation"):
        selections.combine(a, b, n, "xor")
    with pytest.raises(InputError, match="outside 0..499"):
        selections.combine(a, [500], n, "add")


def test_regions_ranges_and_groups():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-2, 2, (5000, 2))
    ang = np.linspace(0, 2 * np.pi, 13)[:-1]
    poly = np.stack([np.cos(ang), np.sin(ang)], 1) * np.where(np.arange(12) % 2, 0.5, 1.5)[:, None]
    np.testing.assert_array_equal(selections.in_polygon(xy, poly),
                                  np.flatnonzero(MplPath(poly).contains_points(xy)))
    box = selections.in_box(xy, (0.5, -1), (0, 1))
    np.testing.assert_array_equal(box, np.flatnonzero((xy[:, 0] >= -1) & (xy[:, 0] <= 0.5) & (xy[:, 1] >= 0)
                                                      & (xy[:, 1] <= 1)))
    v = np.array([1.0, np.nan, 3.0, 5.0])
    assert selections.in_range(v, 1, 3).tolist() == [0, 2]
    assert selections.in_values(np.array(["a", "b", "a", "c"]), ["a", "c"]).tolist() == [0, 2, 3]
    with pytest.raises(InputError, match="not numeric"):
        selections.in_range(np.array(["a", "b"]), 0, 1, "rlnMicrographName")
    with pytest.raises(InputError, match="lo <= hi"):
        selections.in_range(v, 3, 1)
    with pytest.raises(InputError, match="3 vertices"):
        selections.in_polygon(xy, poly[:2])


def test_explorer_operations_combine_ranges_groups_and_inversion():
    from cryovae_nb.widgets import LatentExplorer

    z, labels = blobs(3000, d=3, seed=4)
    images = np.random.default_rng(0).normal(size=(3000, 12, 12)).astype(np.float32)
    defocus = np.random.default_rng(1).uniform(1e4, 3e4, 3000)
    ex = LatentExplorer({"z1-z2": z[:, :2]}, latents=z, images=images,
                        color_by={"cluster": labels, "defocus": defocus})
    assert ex.range_options() == ["z1", "z2", "z3", "defocus"] and list(ex.group_by.options) == ["cluster"]
    ex.select_values("cluster", [2])
    np.testing.assert_array_equal(ex.selected, np.flatnonzero(labels == 2))
    ex.operation.value = "subtract"
    ex.range_by.value, ex.range_lo.value, ex.range_hi.value = "defocus", 1e4, 2e4
    ex.range_button.click()
    np.testing.assert_array_equal(ex.selected, np.flatnonzero((labels == 2) & ~(defocus <= 2e4)))
    lo = float(np.median(z[labels == 2, 0]))      # half of the cluster along z1
    ex.select_range("z1", lo, lo + 100.0, "intersect")
    want = np.flatnonzero((labels == 2) & (defocus > 2e4) & (z[:, 0] >= lo) & (z[:, 0] <= lo + 100))
    assert want.size > 50
    np.testing.assert_array_equal(ex.selected, want)
    np.testing.assert_array_equal(ex.figure.data[1].x, z[want, 0])   # the map draws the same
    ex.invert_button.click()
    np.testing.assert_array_equal(ex.selected, np.setdiff1d(np.arange(3000), want))
    assert "16 of the" in ex.gallery_caption.value
    ex.operation.value = "add"
    ex.select_region(np.array([[-100, -100], [100, -100], [100, 100], [-100, 100]]))
    assert ex.selected.size == 3000
    ex.clear_button.click()
    assert ex.selected.size == 0 and ex.gallery.value == b""
    with pytest.raises(InputError, match="nothing named"):
        ex.select_range("nonsense", 0, 1)
    ex.show_path([0, 5, 9])
    np.testing.assert_allclose(ex.figure.data[2].x, z[[0, 5, 9], 0], rtol=1e-6)
    # two clicks, then the path button: the graph path between them, drawn over the map
    from test_widgets import plotly_event

    a, b = int(np.flatnonzero(labels == 0)[0]), int(np.flatnonzero(labels == 0)[1])
    plotly_event(ex.figure, "plotly_click", [a], z[:, :2])
    assert ex.path_button.disabled
    plotly_event(ex.figure, "plotly_click", [b], z[:, :2])
    ex.path_button.click()
    want = graph_path(z, a, b)
    np.testing.assert_allclose(ex.figure.data[2].x, z[want.particles, 0], rtol=1e-6)
    assert f"path from particle {a} to {b}" in ex.status.value


def test_tsne_places_points_and_transform_is_opt_in():
    z, labels = blobs(1500, d=4, seed=5)
    e = embed(z, "tsne", seed=0, fit_points=300, perplexity=20)
    assert e.coords.shape == (1500, 2) and np.all(np.isfinite(e.coords)) and len(e.fitted) == 300
    np.testing.assert_array_equal(embed(z, "tsne", seed=0, fit_points=300, perplexity=20).coords, e.coords)
    with pytest.raises(InputError, match="t-SNE has no transform"):
        embed(z, "tsne", fit_points=300, place="transform")
    # a sampled point is placed on itself
    np.testing.assert_allclose(place_by_neighbours(z[:10], np.arange(20.0).reshape(10, 2), z[3:4]), [[6, 7]])


@pytest.mark.slow  # umap's transform compiles for minutes on 2 cores; benchmarks/explorer_scale.py times it
def test_umap_transform_placement_is_available():
    z, labels = blobs(400, d=4, seed=5)
    u = embed(z, "umap", seed=0, fit_points=150, place="transform")
    assert u.coords.shape == (400, 2) and np.all(np.isfinite(u.coords)) and "transform" in u.note
    centres = np.stack([np.median(u.coords[labels == c], axis=0) for c in range(4)])
    nearest = np.argmin(np.linalg.norm(u.coords[:, None] - centres[None], axis=-1), axis=1)
    assert (nearest == labels).mean() > 0.95
