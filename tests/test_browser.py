"""A real browser: JupyterLab on localhost, a notebook opened in headless Chromium through
Playwright, its cells run from the menu, and the nglview canvas and the plotly scatter checked to
have actually drawn something. Screenshots are kept in test-artifacts/."""
from __future__ import annotations

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
        yield base, token
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


def test_volume_viewer_and_explorer_render_in_jupyterlab(jupyter_lab, repo_root):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token = jupyter_lab
    artifacts = repo_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    console = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.goto(f"{base}/lab/tree/x.ipynb?token={token}", timeout=120_000)
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
        except Exception:
            page.screenshot(path=str(artifacts / "browser_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
            (artifacts / "browser_console.log").write_text("\n".join(console))
