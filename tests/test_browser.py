"""A real browser: JupyterLab on localhost, a notebook opened in headless Chromium through
Playwright, its cells run from the menu, and the nglview canvas and the plotly scatter checked to
have actually drawn something; then the latent explorer at WebGL size driven with the mouse (a
lasso, the invert button, the export button) and the exported STAR and indices checked on disk.
Screenshots are kept in test-artifacts/."""
from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
# generous: the suite shares 2 cores with pytest-xdist workers and other notebooks
TIMEOUT_MS = int(os.environ.get("CRYOVAE_BROWSER_TIMEOUT_MS", 180_000))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # WebGL without a GPU: software rasteriser, so nglview's canvas can draw
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; `make test` installs it)"),
]

CELLS = [
    """import numpy as np
from cryovae_nb.widgets import LatentExplorer, VolumeViewer
n = 32
vol = np.zeros((n, n, n), np.float32)
vol[8:24, 8:13, 8:13] = 1.0
vol[8:13, 8:20, 8:13] = 1.0
viewer = VolumeViewer(vol, voxel_size=2.0, colors=["#ff0000"])
viewer""",
    """rng = np.random.default_rng(0)
z = rng.normal(size=(400, 4))
explorer = LatentExplorer({"pca": z[:, :2]}, color_by={"cluster": (z[:, 0] > 0).astype(int)})
explorer.color.value = "cluster"
explorer""",
    """print("cells done")""",
]

# the explorer past WEBGL_FROM points (a WebGL scatter), over particles of a STAR file of our own
EXPLORER_N = 25_000
EXPLORER_CELLS = [
    f"""import numpy as np, pandas as pd, starfile
from cryovae_nb.io import read_particles, write_stack
from cryovae_nb.widgets import LatentExplorer
n = {EXPLORER_N}
rng = np.random.default_rng(0)
write_stack("parts.mrcs", rng.normal(size=(n, 8, 8)).astype(np.float32), 2.0)
starfile.write({{"particles": pd.DataFrame({{
    "rlnImageName": [f"{{i + 1:06d}}@parts.mrcs" for i in range(n)],
    "rlnDefocusU": rng.uniform(1e4, 3e4, n).round(1)}})}}, "parts.star")
xy = rng.uniform(-1, 1, (n, 2))
np.save("xy.npy", xy)
explorer = LatentExplorer({{"map": xy}}, particles=read_particles("parts.star"))
explorer.path.value = "picked.star"
explorer""",
    """print("cells done")""",
]


def _notebook(cells) -> dict:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """JupyterLab serving tmp_path on 127.0.0.1 with a random token; always shut down."""
    (tmp_path / "x.ipynb").write_text(json.dumps(_notebook(CELLS)))
    (tmp_path / "explorer.ipynb").write_text(json.dumps(_notebook(EXPLORER_CELLS)))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / ".runtime"), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.extension_manager=readonly",  # no PyPI queries from the extension manager
         f"--LabApp.workspaces_dir={tmp_path / '.workspaces'}",
         f"--LabApp.user_settings_dir={tmp_path / '.settings'}"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited ({proc.returncode}):\n{(tmp_path / 'jupyter.log').read_text()}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("jupyter lab did not answer within 120 s")
                time.sleep(0.5)
        yield base, token, tmp_path
    finally:
        # SIGTERM lets the server shut its kernels down; the group kill catches stragglers
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def _colors(png: bytes) -> int:
    return len(np.unique(_pixels(png).reshape(-1, 3), axis=0))


def _assert_drawn(png: bytes, what: str, min_colors: int = 3, min_std: float = 2.0) -> None:
    px, colors = _pixels(png), _colors(png)
    assert px.std() > min_std and colors >= min_colors, f"{what} looks blank (std {px.std():.2f}, {colors} colours)"


def _red_surface(png: bytes) -> bool:
    """The red isosurface is on the canvas: > 500 pixels whose red clearly exceeds green and blue.

    Hue, not brightness: when NGL frames the camera before the canvas takes its final size the
    surface is drawn small and fogged (pale red) -- drawn all the same; a blank canvas has none.
    """
    px = _pixels(png).astype(int)
    return int((px[..., 0] - np.maximum(px[..., 1], px[..., 2]) > 10).sum()) > 500


def _wait_drawn(locator, done, path, timeout_s: float = 90.0) -> bytes:
    """Screenshot ``locator`` until ``done(png)`` or the timeout; the last shot is kept at ``path``."""
    deadline = time.monotonic() + timeout_s
    while True:
        png = locator.screenshot(path=str(path))
        if done(png) or time.monotonic() > deadline:
            return png
        time.sleep(1)


def _run_notebook(sync_api, page, url: str) -> None:
    """Open the notebook at ``url`` and run all its cells from the menu, until "cells done"."""
    page.goto(url, timeout=120_000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
    # JupyterLab may ask which kernel to start even with a kernelspec in the metadata
    try:
        page.locator(".jp-Dialog button.jp-mod-accept").click(timeout=15_000)
    except sync_api.TimeoutError:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_selector(".jp-OutputArea-output:has-text('cells done')", timeout=TIMEOUT_MS)


@contextlib.contextmanager
def _notebook_page(jupyter_lab, notebook: str, artifacts, name: str):
    """A headless Chromium page with ``notebook`` of the lab run to its end: (page, console lines).
    On failure a screenshot ``NAME_failure.png``; always the console as ``NAME_console.log``."""
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token, _ = jupyter_lab
    artifacts.mkdir(exist_ok=True)
    console = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            _run_notebook(sync_api, page, f"{base}/lab/tree/{notebook}?token={token}")
            yield page, console
        except Exception:
            if page is not None:
                page.screenshot(path=str(artifacts / f"{name}_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
            (artifacts / f"{name}_console.log").write_text("\n".join(console))


def test_volume_viewer_and_explorer_render_in_jupyterlab(jupyter_lab, repo_root):
    artifacts = repo_root / "test-artifacts"
    with _notebook_page(jupyter_lab, "x.ipynb", artifacts, "browser") as (page, console):
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            viewer_out, explorer_out = (cells.nth(i).locator(".jp-OutputArea") for i in (0, 1))
            viewer_out.locator("canvas").first.wait_for(timeout=TIMEOUT_MS)
            explorer_out.locator(".js-plotly-plot .scatterlayer path.point").first.wait_for(timeout=TIMEOUT_MS)
            toast = page.locator(".jp-toast-button:text-is('No')")  # the "Jupyter news?" toast
            if toast.count():
                toast.first.click()
            for failure in ("Error displaying widget", "Click to show javascript error"):
                assert page.locator(f"text={failure}").count() == 0, "\n".join(console[-20:])

            canvases = viewer_out.locator("canvas")
            areas = [(b["width"] * b["height"], i) for i in range(canvases.count())
                     if (b := canvases.nth(i).bounding_box())]
            ngl_canvas = canvases.nth(max(areas)[1])
            # NGL meshes the surface and fades it in; on a loaded machine that takes a while
            ngl_png = _wait_drawn(ngl_canvas, _red_surface, artifacts / "browser_nglview.png")
            _assert_drawn(ngl_png, "the nglview canvas", min_std=1.0)
            assert _red_surface(ngl_png), "no red isosurface on the nglview canvas"
            plot = explorer_out.locator(".js-plotly-plot").first
            plot_png = _wait_drawn(plot, lambda png: _colors(png) >= 10, artifacts / "browser_explorer.png")
            _assert_drawn(plot_png, "the plotly scatter", min_colors=10)
            page.screenshot(path=str(artifacts / "browser_notebook.png"), full_page=True)
            assert explorer_out.locator(".scatterlayer path.point").count() == 400


def test_explorer_lasso_invert_and_export_in_jupyterlab(jupyter_lab, repo_root):
    """A lasso drawn with the mouse over the right part of a 25,000-point WebGL map, the selection
    inverted with its button and exported with its: the files on disk hold exactly the particles
    left of the lasso's edge (the ones within a hair of the edge are not judged)."""
    import pandas as pd
    import starfile

    _, _, folder = jupyter_lab
    artifacts = repo_root / "test-artifacts"
    with _notebook_page(jupyter_lab, "explorer.ipynb", artifacts, "browser_explorer") as (page, console):
            out = page.locator(".jp-Notebook .jp-CodeCell").nth(0).locator(".jp-OutputArea")
            plot = out.locator(".js-plotly-plot").first
            plot.locator("canvas").first.wait_for(timeout=TIMEOUT_MS)   # WebGL: a canvas, no SVG points
            drag = plot.locator("rect.nsewdrag").first
            drag.wait_for(timeout=TIMEOUT_MS)
            box = drag.bounding_box()
            x_edge = box["x"] + 0.6 * box["width"]
            # the lasso's left edge in data units, from plotly's own axis
            thr = plot.evaluate("(gd, px) => gd._fullLayout.xaxis.p2l(px - gd.getBoundingClientRect().left"
                                " - gd._fullLayout.xaxis._offset)", x_edge)
            top, bottom, right = box["y"] + 2, box["y"] + box["height"] - 2, box["x"] + box["width"] - 2
            page.mouse.move(x_edge, top)
            page.mouse.down()
            for x, y in ((right, top), (right, bottom), (x_edge, bottom), (x_edge, top + 1)):
                page.mouse.move(x, y, steps=15)
            page.mouse.up()
            status = out.locator(".widget-html-content").filter(has_text="selected")
            status.first.wait_for(timeout=TIMEOUT_MS)
            out.locator("button:has-text('invert')").click()
            out.locator("button:has-text('export selection')").click()
            out.locator(".widget-html-content:has-text('wrote')").first.wait_for(timeout=TIMEOUT_MS)
            # the map draws the inverted selection (its own trace), not the lasso's region
            shown = plot.evaluate("gd => [gd.data[1].x.length, Math.max(...gd.data[1].x)]")
            page.screenshot(path=str(artifacts / "browser_explorer_export.png"), full_page=True)

    xy = np.load(folder / "xy.npy", allow_pickle=False)
    idx = np.load(folder / "picked_indices.npy", allow_pickle=False)
    assert 0.0 < thr < 1.0, thr                        # the lasso's edge lies inside the map
    x = xy[:, 0]
    sure_left, sure_right = np.flatnonzero(x < thr - 0.01), np.flatnonzero(x > thr + 0.01)
    assert np.isin(sure_left, idx).all(), "particles left of the lasso are missing from the export"
    assert not np.isin(sure_right, idx).any(), "particles inside the lasso survived the inversion"
    rows = starfile.read(folder / "picked.star", always_dict=True)
    rows = next(v for v in rows.values() if isinstance(v, pd.DataFrame) and "rlnImageName" in v)
    assert [n.split("@")[0] for n in rows["rlnImageName"]] == [f"{i + 1:06d}" for i in idx]
    assert shown[0] == len(idx) and shown[1] == pytest.approx(xy[idx, 0].max()), shown
