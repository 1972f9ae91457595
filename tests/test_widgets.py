"""Widgets built from real objects (files from other software, real FSC curves, a real run
directory), their state checked: components sent to NGL, slider ranges, plotted numbers, and a
selection made the way plotly's front-end reports it turned into STAR rows."""
from __future__ import annotations

import warnings

import base64
import io
import json
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from PIL import Image

from cryovae_nb.errors import InputError
from cryovae_nb.widgets import (LatentExplorer, ParticleGallery, TrainingMonitor, TrajectoryPlayer,
                                VolumeViewer, comparison_png, fsc_figure, overlay_rgb, slice_planes)
from cryovae_nb.widgets.images import comparison_grid, normalise01


def l_shape(n=24, dx=0):
    v = np.zeros((n, n, n), np.float32)
    v[6:18, 6:10, 6 + dx:10 + dx] = 1.0
    v[6:10, 6:16, 6 + dx:10 + dx] = 1.0
    return v


def ngl_messages(viewer, method):
    return [m for m in viewer.view._ngl_msg_archive if m["methodName"] == method]


def loaded_map(msg, tmp_path):
    """The MRC nglview was sent, decoded independently (base64 -> file -> mrcfile)."""
    path = tmp_path / "sent.mrc"
    path.write_bytes(base64.b64decode(msg["args"][0]["data"]))
    with mrcfile.open(path) as m:
        return m.data.copy(), float(m.voxel_size.x)


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# -- images -------------------------------------------------------------------------------------

def test_overlay_puts_input_in_magenta_and_projection_in_green():
    a = np.array([[[2.0, 3.0], [4.0, 4.0]]])          # min 2, max 4 -> (v - 2) / 2
    b = np.array([[[0.0, 10.0], [5.0, 0.0]]])         # min 0, max 10 -> v / 10
    rgb = overlay_rgb(a, b)
    np.testing.assert_allclose(rgb[0, ..., 0], [[0, 0.5], [1, 1]])
    np.testing.assert_allclose(rgb[0, ..., 2], rgb[0, ..., 0])
    np.testing.assert_allclose(rgb[0, ..., 1], [[0, 1], [0.5, 0]])
    assert np.all(normalise01(np.full((1, 3, 3), 7.0)) == 0)   # a flat image is not a division by 0
    with pytest.raises(InputError, match="same shape"):
        overlay_rgb(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_comparison_grid_layout():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 40, 40)), rng.random((3, 40, 40))
    grid = comparison_grid(a, b, min_px=96)           # 40 px -> x3 = 120 px tiles, 2 px gaps
    assert grid.shape == (3 * 120 + 2 * 2, 3 * 120 + 2 * 2, 3)
    np.testing.assert_allclose(grid[0, 0], normalise01(a)[0, 0, 0])                   # row 0: input
    np.testing.assert_allclose(grid[122 + 3, 122 + 119, 1], normalise01(b)[1, 1, 39])  # row 1: proj
    np.testing.assert_allclose(grid[244 + 5, 244 + 7], overlay_rgb(a, b)[2, 1, 2])     # row 2: overlay
    assert png_array(comparison_png(a, b)).shape == grid.shape


# -- volume viewer ------------------------------------------------------------------------------

def test_volume_viewer_overlays_a_real_map_on_a_reference(shared_data, tmp_path):
    path = shared_data / "hand-vol.mrc"
    with mrcfile.open(path, permissive=True) as m:
        ref = m.data.astype(np.float32)
    rec = np.roll(ref, 2, axis=2) * 0.5
    viewer = VolumeViewer({"reference": path, "reconstruction": rec}, voxel_size=None,
                          colors=["#aaaaaa", "#ff8800"])
    assert viewer.names == ["reference", "reconstruction"]
    assert len(viewer.view._ngl_component_ids) == 2
    loads, reps = ngl_messages(viewer, "loadFile"), ngl_messages(viewer, "addRepresentation")
    assert len(loads) == 2 and len(reps) == 2
    data, vs = loaded_map(loads[0], tmp_path)
    np.testing.assert_array_equal(data, ref)
    assert vs == pytest.approx(1.0)   # the header's 1 Å/px travels with the map
    assert reps[1]["args"] == ["surface"] and reps[1]["component_index"] == 1
    assert reps[1]["kwargs"]["isolevelType"] == "value"
    assert reps[1]["kwargs"]["color"] == "#ff8800" and reps[1]["kwargs"]["opacity"] == 0.5
    assert reps[0]["kwargs"]["isolevel"] == pytest.approx(ref.mean() + 1.5 * ref.std())

    slider = viewer.maps[1].controls["level"]
    assert (slider.min, slider.max) == pytest.approx((rec.min(), rec.max()))
    viewer.set_level("reconstruction", 0.25 * rec.max())
    upd = ngl_messages(viewer, "setParameters")[-1]
    assert upd["component_index"] == 1 and upd["kwargs"]["isolevel"] == pytest.approx(0.25 * rec.max())
    assert viewer.levels["reconstruction"] == pytest.approx(0.25 * rec.max())

    viewer.maps[0].controls["visible"].value = False
    vis = ngl_messages(viewer, "setVisibility")[-1]
    assert vis["args"] == [False] and vis["component_index"] == 0


def test_hand_flip_reloads_the_mirror_image(tmp_path):
    vol = l_shape(24)
    viewer = VolumeViewer(vol, voxel_size=3.5)
    viewer.set_flipped(0, True)
    assert len(viewer.view._ngl_component_ids) == 1           # replaced, not added
    data, vs = loaded_map(ngl_messages(viewer, "loadFile")[-1], tmp_path)
    # mirror through z = n//2 (even box: z=0 wraps onto itself): W[z] = V[(2*12 - z) % 24]
    np.testing.assert_array_equal(data, vol[(24 - np.arange(24)) % 24])
    assert vs == pytest.approx(3.5)
    np.testing.assert_array_equal(viewer.slices.data[0].z, data[12])   # slices follow the flip


def test_slices_and_projections_show_the_right_planes():
    rng = np.random.default_rng(1)
    vol = rng.random((16, 16, 16)).astype(np.float32)
    viewer = VolumeViewer(vol)
    assert (viewer.slice_pos.min, viewer.slice_pos.max, viewer.slice_pos.value) == (0, 15, 8)
    viewer.slice_pos.value = 3
    z = [np.array(t.z) for t in viewer.slices.data]
    np.testing.assert_allclose(z[0], vol[3])            # XY at z = 3
    np.testing.assert_allclose(z[1], vol[:, 3, :])      # XZ at y = 3
    np.testing.assert_allclose(z[2], vol[:, :, 3])      # YZ at x = 3
    viewer.slice_mode.value = "projections"
    np.testing.assert_allclose(np.array(viewer.slices.data[0].z), vol.sum(axis=0), rtol=1e-5)
    assert viewer.slice_pos.disabled
    assert [p.shape for p in slice_planes(vol, mode="projections")] == [(16, 16)] * 3


def test_set_volume_replaces_data_and_resets_an_out_of_range_threshold(tmp_path):
    viewer = VolumeViewer(l_shape(16, 0) * 10, levels=[5.0])
    viewer.set_volume(0, l_shape(16, 2))                  # range 0..1: level 5 no longer fits
    assert viewer.levels["map 0"] == pytest.approx(l_shape(16).mean() + 1.5 * l_shape(16).std())
    assert viewer.maps[0].controls["level"].max == pytest.approx(1.0)
    data, _ = loaded_map(ngl_messages(viewer, "loadFile")[-1], tmp_path)
    np.testing.assert_array_equal(data, l_shape(16, 2))
    assert len(ngl_messages(viewer, "loadFile")) == 1   # nglview dropped the replaced map's load


def test_volume_viewer_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="n x n x n"):
        VolumeViewer(np.zeros((4, 5, 6)))
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an MRC file at all")
    with pytest.raises(InputError, match="broken.mrc"):
        VolumeViewer(bad)
    viewer = VolumeViewer(l_shape(8))
    with pytest.raises(InputError, match="already shown"):
        viewer.add_volume(l_shape(8), name="map 0")


def sent_orientations(view) -> list:
    """The camera orientations Python asked a view's browser side to take, in order."""
    return [cb._ngl_msg["args"][0] for cb in view._callbacks_before_loaded
            if cb._method_name == "set_camera_orientation"]


def test_linked_views_turn_every_camera_together():
    from cryovae_nb.widgets import LinkedViews

    maps = {f"frame {i}": l_shape(16, i) for i in range(3)}
    linked = LinkedViews(maps, voxel_size=2.0, levels=0.5)
    assert [v.names for v in linked.viewers] == [["frame 0"], ["frame 1"], ["frame 2"]]
    assert all(v.levels == {n: 0.5} for v, n in zip(linked.viewers, maps))
    a, b, c = linked.views
    # nglview's browser-side sync: each view drives the two others while the mouse is on it
    assert sorted(a._synced_model_ids) == sorted([b.model_id, c.model_id])
    # a view reports a new camera (the user turned it): the others are sent the same matrix, once
    turned = [float(x) for x in np.arange(16) / 10]
    a._camera_orientation = turned
    assert b._camera_orientation == turned and c._camera_orientation == turned
    assert sent_orientations(b) == [turned] and sent_orientations(c) == [turned]
    assert sent_orientations(a) == []                   # no echo back to the view that turned
    b._camera_orientation = [x + 1e-9 for x in turned]  # b reporting what it was given: nothing moves
    assert sent_orientations(a) == [] and sent_orientations(c) == [turned]
    linked.unlink()
    a._camera_orientation = [1.0] * 16
    assert c._camera_orientation == turned and a._synced_model_ids == []
    linked.link()
    linked.set_orientation(np.eye(4).ravel())
    assert all(v._camera_orientation == np.eye(4).ravel().tolist() for v in linked.views)
    with pytest.raises(InputError, match="at least 2 maps"):
        LinkedViews([l_shape(8)])
    with pytest.raises(InputError, match="16 finite numbers"):
        linked.set_orientation([1.0] * 9)


# -- gallery, trajectory, FSC -------------------------------------------------------------------

def test_gallery_pages_through_real_particles(shared_data):
    from cryovae_nb.io import open_stack

    stack = open_stack(shared_data / "toy_projections.mrcs")   # 30 px, no MAP stamp
    inputs = stack[np.arange(20)]
    projections = np.flip(inputs, axis=2)                       # a stand-in "reconstruction"
    gallery = ParticleGallery(stack, np.concatenate([projections, stack[20:]]), per_page=8,
                              indices=np.arange(20))
    assert (gallery.page.min, gallery.page.max) == (0, 2)
    first = png_array(gallery.image.value)
    assert first.shape == (3 * 120 + 4, 8 * 120 + 7 * 2, 3)    # 30 px -> x4 tiles
    gallery.page.value = 2
    np.testing.assert_array_equal(gallery.page_indices(), np.arange(16, 20))
    last = png_array(gallery.image.value)
    assert last.shape[1] == 4 * 120 + 3 * 2
    expect = np.round(overlay_rgb(inputs[16:20], projections[16:20]) * 255)
    np.testing.assert_array_equal(last[244 + 4 * 7, 122 * 3 + 4 * 5], expect[3, 7, 5])


def test_trajectory_player_steps_through_frames(tmp_path):
    frames = np.stack([l_shape(16, dx) for dx in range(5)])
    player = TrajectoryPlayer(frames, voxel_size=2.0, labels=[f"z1 = {t:+.1f}" for t in np.linspace(-2, 2, 5)])
    assert (player.frame.min, player.frame.max) == (0, 4) and player.play.max == 4
    assert player._link.source == (player.play, "value") and player._link.target == (player.frame, "value")
    level = player.viewer.levels["trajectory"]
    player.show_frame(3)
    assert player.caption.value == "z1 = +1.0"
    assert len(player.viewer.view._ngl_component_ids) == 1
    data, vs = loaded_map(ngl_messages(player.viewer, "loadFile")[-1], tmp_path)
    np.testing.assert_array_equal(data, frames[3])
    assert vs == 2.0 and player.viewer.levels["trajectory"] == level
    with pytest.raises(InputError, match="labels"):
        TrajectoryPlayer(frames, labels=["a"])


def test_fsc_plot_marks_thresholds_and_writes_resolutions(shared_data):
    from cryovae_nb.analysis.fsc import fsc

    with mrcfile.open(shared_data / "hand-vol.mrc", permissive=True) as m:
        vol = m.data.astype(np.float32)
    noisy = vol + np.random.default_rng(0).normal(0, 4 * vol.std(), vol.shape).astype(np.float32)
    res = fsc(vol, noisy, pixel_size=1.5)
    same = fsc(vol, vol, pixel_size=1.5)                 # never drops: only a bound at Nyquist
    assert res.crossed_05 and res.crossed_0143 and not same.crossed_0143
    fig = fsc_figure({"noisy": res, "identical": same})
    assert len(fig.data) == 2
    np.testing.assert_allclose(fig.data[0].x, res.frequencies)
    np.testing.assert_allclose(fig.data[0].y, res.curve)
    hlines = sorted(s.y0 for s in fig.layout.shapes if s.y0 == s.y1)
    assert hlines == [0.143, 0.5]
    vlines = sorted(s.x0 for s in fig.layout.shapes if s.x0 == s.x1 and s.xref == "x")
    assert vlines == pytest.approx(sorted([1 / res.resolution_05, 1 / res.resolution_0143]))
    text = fig.layout.annotations[-1].text
    assert f"{res.resolution_05:.2f} Å" in text and f"{res.resolution_0143:.2f} Å" in text
    assert f"≤ {same.nyquist:.2f} Å" in text and res.resolution_0143 < res.resolution_05


# -- training monitor ---------------------------------------------------------------------------

def _records(steps, split="train"):
    return [{"step": s, "split": split, "recon": 100.0 / s, "kl": 0.5 * s, "averaging": 1e-3,
             "total": 100.0 / s + 0.5 * s, "images_per_s": 50.0} for s in steps]


def test_monitor_reads_a_run_directory_incrementally(tmp_path):
    (tmp_path / "samples").mkdir()
    lines = [json.dumps(r) for r in _records([1, 2, 3]) + _records([3], "test")]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 4, "spl')  # torn line
    rng = np.random.default_rng(0)
    pngs = {s: comparison_png(rng.random((2, 8, 8)), rng.random((2, 8, 8))) for s in (10, 200)}
    for s, data in pngs.items():
        (tmp_path / "samples" / f"step_{s:08d}.png").write_bytes(data)
    (tmp_path / "samples" / "step_00000200").mkdir()          # the trainer's volume folder

    mon = TrainingMonitor(tmp_path)
    train_total = next(t for t in mon.figure.data if t.meta == ("train", "total"))
    assert train_total.x == (1, 2, 3) and train_total.y == pytest.approx((100.5, 51.0, 34.8333), rel=1e-4)
    assert next(t for t in mon.figure.data if t.meta == ("test", "kl")).y == (1.5,)
    assert all(mon.figure.layout[f"yaxis{i or ''}"].type == "log" for i in range(4))
    assert mon.sample_step == 200 and mon.samples.value == pngs[200]

    with open(tmp_path / "metrics.jsonl", "a") as f:            # the writer finishes its line
        f.write('lit": "train", "recon": 20, "kl": 2, "averaging": 0.001, "total": 22}\n')
    assert mon.refresh() == 1
    assert train_total.x == (1, 2, 3, 4) and train_total.y[-1] == 22

    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(InputError, match=r"metrics.jsonl: line 6 is not JSON"):
        mon.refresh()


def test_monitor_polls_in_the_background(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("")
    mon = TrainingMonitor(tmp_path, poll_interval=0.05)
    try:
        assert mon.polling
        path.write_text("".join(json.dumps(r) + "\n" for r in _records([1, 2])))
        deadline = time.monotonic() + 300  # a hang guard only: the verdict is the content
        while len(mon.history["train"]["recon"][0]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mon.history["train"]["recon"] == ([1, 2], [100.0, 50.0])
    finally:
        mon.stop_polling()
    assert not mon.polling


def test_monitor_takes_the_trainers_callbacks_in_process():
    mon = TrainingMonitor()
    for rec in _records([5, 10]) + _records([10], "test"):
        mon.on_metrics(rec)
    recon = next(t for t in mon.figure.data if t.meta == ("train", "recon"))
    assert recon.x == (5, 10) and recon.y == (20.0, 10.0)
    rng = np.random.default_rng(2)
    images, proj = rng.random((12, 40, 40)), rng.random((12, 40, 40))
    mon.on_samples(images, proj, step=10)
    assert png_array(mon.samples.value).shape[1] == 8 * 120 + 7 * 2    # max_samples=8 columns
    assert mon.sample_step == 10 and "step 10" in mon.status.value
    with pytest.raises(InputError, match="no run directory"):
        mon.refresh()


def _test_record(step, kl_per_dim, active, collapsed=False):
    rec = {**_records([step], "test")[0], "kl": float(sum(kl_per_dim)), "kl_per_dim": kl_per_dim,
           "active_dims": active, "noise_var": 0.01}
    if collapsed:
        rec["latent_collapsed"] = True
    return rec


def test_monitor_shows_kl_per_dimension_active_dims_and_a_collapse_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = _records([10]) + [_test_record(10, [0.5, 0.25, 1e-4], 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    mon = TrainingMonitor(tmp_path)
    bars = mon.kl_figure.data[0]
    assert bars.type == "bar" and bars.x == ("z1", "z2", "z3") and bars.y == pytest.approx((0.5, 0.25, 1e-4))
    assert "step 10" in mon.kl_figure.layout.title.text
    assert "active latent dims 2/3" in mon.status.value
    assert mon.warning.layout.display == "none" and "collapsed" not in mon.warning.value
    assert mon.warning in mon.children

    # the trainer flags a collapse on a later held-out evaluation: the newest test record rules
    with open(path, "a") as f:
        for r in _records([600]) + [_test_record(600, [1e-4, 0.0, 2e-4], 0, collapsed=True)]:
            f.write(json.dumps(r) + "\n")
    assert mon.refresh() == 2
    assert bars.y == pytest.approx((1e-4, 0.0, 2e-4)) and "step 600" in mon.kl_figure.layout.title.text
    assert "active latent dims 0/3" in mon.status.value
    assert mon.warning.layout.display != "none"
    assert "latent collapsed at step 600" in mon.warning.value and "0 of 3" in mon.warning.value
    assert "kl_warmup_steps" in mon.warning.value

    # in-process: a recovered latent hides the warning again; train records leave the bars alone
    mon.on_metrics(_test_record(700, [0.3, 0.0, 0.0], 1))
    mon.on_metrics(_records([800])[0])
    assert bars.y == pytest.approx((0.3, 0.0, 0.0)) and mon.warning.layout.display == "none"
    assert "active latent dims 1/3 (test, step 700)" in mon.status.value


def test_monitor_without_latent_statistics_shows_no_bars():
    mon = TrainingMonitor()
    for rec in _records([5]) + _records([5], "test"):   # a log from before kl_per_dim existed
        mon.on_metrics(rec)
    assert mon.latent is None and mon.kl_figure.data[0].y in (None, ())
    assert "active" not in mon.status.value and mon.warning.layout.display == "none"


# -- latent explorer ----------------------------------------------------------------------------

def blob_decoder(n=16):
    """A real decode callable: a Gaussian blob whose x position follows z[0]."""
    c = np.arange(n) - n // 2

    def decode(z):
        z = np.asarray(z, np.float32)
        x0 = 3 * np.tanh(z[:, 0])
        g = np.exp(-((c[None, None, None, :] - x0[:, None, None, None]) ** 2
                     + c[None, None, :, None] ** 2 + c[None, :, None, None] ** 2) / 8)
        return g.astype(np.float32)

    return decode


def plotly_event(fig, event, indices, xy):
    """What plotly.js sends to the kernel for a click or a lasso over ``indices`` of trace 0."""
    msg = {"event_type": event,
           "points": {"point_indexes": list(indices), "trace_indexes": [0] * len(indices),
                      "xs": [float(v) for v in xy[indices, 0]], "ys": [float(v) for v in xy[indices, 1]]}}
    if event == "plotly_selected":
        msg["selector"] = {"type": "lasso", "selector_state": {"xs": [0, 1, 1], "ys": [0, 0, 1]}}
    else:
        msg["device_state"] = {"ctrl": False, "alt": False, "shift": False, "meta": False,
                               "button": 0, "buttons": 1}
    fig._js2py_pointsCallback = msg


def test_explorer_lasso_selection_becomes_star_rows(shared_data, tmp_path):
    from cryovae_nb.io import read_particles

    particles = read_particles(shared_data / "toy_projections.star")
    n = len(particles)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, 4)).astype(np.float32)
    zc = z - z.mean(0)
    pca = zc @ np.linalg.svd(zc, full_matrices=False)[2][:2].T
    clusters = (z[:, 0] > 0).astype(int)
    decode = blob_decoder()
    ex = LatentExplorer({"pca": pca, "z1-z2": z[:, :2]}, latents=z, decode=decode, particles=particles,
                        color_by={"cluster": clusters})
    assert ex.n == n and "rlnDefocusU" in ex.color.options and "cluster" in ex.color.options

    sel = np.flatnonzero((pca[:, 0] > 1) & (pca[:, 1] < 0))
    plotly_event(ex.figure, "plotly_selected", sel, pca)
    np.testing.assert_array_equal(ex.selected, sel)
    assert not ex.export_button.disabled
    np.testing.assert_allclose(ex.viewer.maps[0].data, decode(z[sel].mean(0)[None])[0], rtol=1e-6)

    out = ex.export_selection(tmp_path / "picked.star")
    star = starfile.read(out)
    rows = star["particles"] if isinstance(star, dict) else star
    assert len(rows) == len(sel)
    assert [n.split("@")[0] for n in rows["rlnImageName"]] == \
        [n.split("@")[0] for n in particles.df["rlnImageName"].iloc[sel]]
    from cryovae_nb.io import read_particles

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # toy_projections.mrcs has no MAP stamp
        np.testing.assert_array_equal(read_particles(out).images[:], particles.images[sel])

    plotly_event(ex.figure, "plotly_click", [17], pca)
    np.testing.assert_array_equal(ex.selected, [17])
    np.testing.assert_allclose(ex.viewer.maps[0].data, decode(z[17:18])[0], rtol=1e-6)


def test_explorer_switches_embedding_and_colour():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 3))
    calls = []

    def embed(method):
        calls.append(method)
        return {"pca": z[:, :2], "umap": z[:, 1:], "tsne": z[:, ::2]}[method]

    clusters = rng.integers(0, 4, 300)
    ex = LatentExplorer(embed, color_by={"cluster": clusters, "tilt": rng.uniform(0, 180, 300)})
    assert list(ex.method.options) == ["umap", "pca", "tsne"] and calls == ["umap"]
    ex.method.value = "tsne"
    np.testing.assert_allclose(ex.figure.data[0].x, z[:, 0])
    np.testing.assert_allclose(ex.figure.data[0].y, z[:, 2])
    ex.method.value = "umap"
    assert calls == ["umap", "tsne"]                       # cached, not recomputed
    ex.color.value = "cluster"
    colors = ex.figure.data[0].marker.color
    assert len(set(colors)) == 4 and all(colors[i] == colors[j] for i, j in zip(
        np.flatnonzero(clusters == 2)[:-1], np.flatnonzero(clusters == 2)[1:]))
    ex.color.value = "tilt"
    assert ex.figure.data[0].marker.showscale and len(ex.figure.data[0].marker.color) == 300

    exported = []
    ex.export = lambda path, idx: exported.append((path, idx))
    with pytest.raises(InputError, match="nothing selected"):
        ex.export_selection("x.star")
    ex.select([5, 3, 5])
    ex.export_selection("x.star")
    assert exported[0][0] == "x.star" and list(exported[0][1]) == [3, 5]
    with pytest.raises(InputError, match="must be \\(n, 2\\)"):
        LatentExplorer({"pca": z})


def test_nglview_frontend_matches_its_python_side():
    """nglview 4.0.1's wheel ships the 3.1.5 lab extension but asks the browser for 4.0, so every
    viewer shows a JavaScript error (nglview issue #1181); the browser test saw it. Catch it here
    without a browser: the installed lab extension must be the version the Python side requests."""
    import nglview._frontend
    from jupyter_core.paths import jupyter_path

    found = [json.loads(p.read_text())["version"] for d in jupyter_path("labextensions")
             for p in [Path(d) / "nglview-js-widgets" / "package.json"] if p.exists()]
    assert found, "the nglview-js-widgets lab extension is not installed"
    assert found[0] == nglview._frontend.__frontend_version__, (
        f"nglview requests nglview-js-widgets {nglview._frontend.__frontend_version__} but "
        f"{found[0]} is installed; use nglview!=4.0.1")


def test_names_labels_and_messages_are_shown_escaped(tmp_path):
    # a map name, a frame label, a checkpoint name or an error text is text, never markup
    import html

    import ipywidgets as W

    def html_values(widget):
        found = [widget.value] if isinstance(widget, W.HTML) else []
        for child in getattr(widget, "children", ()):
            found += html_values(child)
        return found

    evil = "<img src=x onerror=alert(1)>"
    viewer = VolumeViewer({evil: l_shape(8)})
    shown = " ".join(html_values(viewer))
    assert html.escape(evil) in shown and evil not in shown
    player = TrajectoryPlayer(np.stack([l_shape(8), l_shape(8, 1)]), labels=[evil, "b"])
    assert player.caption.value == html.escape(evil)
    mon = TrainingMonitor()
    mon.on_checkpoint(str(tmp_path / evil.replace("/", "")))
    assert "&lt;img" in mon.status.value and "<img" not in mon.status.value
    run_dir = tmp_path / "<b>run"                      # the error names this folder
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    polled = TrainingMonitor(run_dir)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    polled._safe_refresh()                              # what the poll thread does
    assert "&lt;b&gt;run" in polled.status.value and "<b>" not in polled.status.value
