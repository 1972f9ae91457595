"""Latent explorer: a 2-D embedding of the latents (UMAP / PCA / t-SNE), coloured by anything,
where a click or a lasso selects particles; the selection's volume is decoded into the volume
viewer and the selection can be written out for RELION: as rows of the user's original STAR file
(``cryovae_nb.selection``) when the particles were preprocessed by us, else as a STAR file of the
particles shown."""
from __future__ import annotations

import html
import os
from typing import Callable, Mapping, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cryovae_nb.errors import ConfigError, CryoVAEError, InputError
from cryovae_nb.io import write_particles_subset
from cryovae_nb.selection import selection_paths, write_selection
from cryovae_nb.widgets.volume import VolumeViewer

# above this many points, WebGL scatter (plotly's SVG scatter crawls past ~10^4 points)
WEBGL_FROM = 20_000
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


class LatentExplorer(W.VBox):
    """Parameters
    ----------
    embeddings : ``{method: (n, 2) array}`` or a callable ``method -> (n, 2) array`` (computed on
        first use and cached), e.g. ``lambda m: analysis.embed(z, method=m)``.
    methods : the methods a callable offers (ignored for a dict).
    color_by : ``{name: (n,) array}`` and/or a DataFrame whose columns can colour the points
        (clusters, pose angles, defocus...); ``particles.df`` columns are added automatically.
    latents : ``(n, d)`` latent means, needed to decode.
    decode : callable ``z (k, d) -> volumes (k, m, m, m)``; the clicked point's volume (or the
        selection's mean latent's) is shown in ``viewer``.
    particles : a ``cryovae_nb.io.Particles``; the default export writes the selection as rows of
        the original STAR these particles were preprocessed from, plus ``_indices.npy``
        (``selection.write_selection``); particles that name no original (read from the user's
        own file) are written as ``particles.subset(sel)``.
    export : callable ``(path, indices) -> None`` replacing the default STAR export.
    """

    def __init__(self, embeddings: Mapping[str, np.ndarray] | Callable[[str], np.ndarray], *,
                 methods: Sequence[str] = ("umap", "pca", "tsne"), color_by=None, latents=None,
                 decode: Callable | None = None, particles=None, export: Callable | None = None,
                 viewer=None, voxel_size: float | None = None, height: int = 480):
        if isinstance(embeddings, Mapping):
            self._cache = {k: _check_xy(v, k) for k, v in embeddings.items()}
            self._embed, methods = None, list(self._cache)
        elif callable(embeddings):
            self._cache, self._embed, methods = {}, embeddings, list(methods)
        else:
            raise ConfigError("embeddings must be a dict {method: (n, 2) array} or a callable")
        if not methods:
            raise ConfigError("no embedding method to show")
        self.latents = None if latents is None else np.asarray(latents, dtype=np.float32)
        if decode is not None and self.latents is None:
            raise ConfigError("decode needs the latents to decode")
        self.decode, self.particles, self.export = decode, particles, export
        self.voxel_size = voxel_size
        self.colors = _color_table(color_by, particles)
        self.selected = np.zeros(0, dtype=int)

        xy = self.embedding(methods[0])
        self.n = len(xy)
        for name, values in self.colors.items():
            if len(values) != self.n:
                raise InputError(f"colour {name!r} has {len(values)} values for {self.n} points")
        if self.latents is not None and len(self.latents) != self.n:
            raise InputError(f"{len(self.latents)} latents for {self.n} embedded points")

        self.method = W.Dropdown(description="embedding", options=methods, value=methods[0])
        self.color = W.Dropdown(description="colour", options=["none"] + list(self.colors), value="none")
        self.status = W.HTML("click a point or lasso a group")
        self.path = W.Text(description="STAR", placeholder="selection.star", value="selection.star")
        self.export_button = W.Button(description="export selection", icon="save", disabled=True)
        self.export_button.on_click(lambda _: self._safe_export())
        self.figure = self._make_figure(xy, height)
        self.method.observe(lambda ch: self._show_method(ch["new"]), names="value")
        self.color.observe(lambda ch: self._recolor(ch["new"]), names="value")

        self.viewer = viewer
        if self.viewer is None and decode is not None:
            self.viewer = VolumeViewer({"decoded": self._decode(self.latents.mean(axis=0))}, voxel_size)
        right = [self.viewer] if self.viewer is not None else []
        super().__init__([W.HBox([self.method, self.color]), self.figure,
                          W.HBox([self.path, self.export_button]), self.status] + right)

    # -- data ---------------------------------------------------------------------------------
    def embedding(self, method: str) -> np.ndarray:
        if method not in self._cache:
            if self._embed is None:
                raise KeyError(f"no embedding {method!r}; have {list(self._cache)}")
            self._cache[method] = _check_xy(self._embed(method), method)
        return self._cache[method]

    # -- selection (plotly calls these with the trace, a Points object and a selector/state) --
    def _on_click(self, trace, points, state) -> None:
        if points.point_inds:
            self.select([points.point_inds[-1]])

    def _on_selection(self, trace, points, selector) -> None:
        self.select(points.point_inds)

    def select(self, indices) -> None:
        """Select particles by index (what a click or lasso does) and decode their volume."""
        self.selected = np.unique(np.asarray(indices, dtype=int))
        if self.selected.size and (self.selected.min() < 0 or self.selected.max() >= self.n):
            raise IndexError(f"selection outside 0..{self.n - 1}")
        self.export_button.disabled = self.selected.size == 0
        msg = f"{self.selected.size} particle(s) selected"
        if self.selected.size and self.decode is not None and self.viewer is not None:
            # a group is summarised by its mean latent: the conformation at the group's centre
            z = self.latents[self.selected].mean(axis=0)
            self.viewer.set_volume(0, self._decode(z), self.voxel_size)
            msg += " &middot; volume decoded at " + ("this point" if self.selected.size == 1 else
                                                      "their mean latent")
        self.status.value = msg

    def export_selection(self, path: str | os.PathLike | None = None) -> str:
        """Write the selection: ``export(path, indices)`` if given; else, for preprocessed
        particles, the rows of the original STAR (``PATH.star`` + ``PATH_indices.npy``,
        ``selection.write_selection``), and for particles read from the user's own file, a STAR
        file of ``particles.subset(selection)``. Returns the STAR path written."""
        path = os.fspath(path or self.path.value)
        if self.selected.size == 0:
            raise InputError("nothing selected to export", path)
        if self.export is not None:
            self.export(path, self.selected.copy())
        elif self.particles is not None and self.particles.provenance is not None:
            path = os.fspath(write_selection(self.particles, self.selected, path).star)
            self.status.value = (f"wrote {self.selected.size} particle(s) of the original STAR to "
                                 f"{html.escape(path)} and {html.escape(str(selection_paths(path)[1]))}")
            return path
        elif self.particles is not None:
            write_particles_subset(path, self.particles, self.selected)
        else:
            raise ConfigError("give the explorer `particles` or an `export` callback to export")
        self.status.value = f"wrote {self.selected.size} particle(s) to {html.escape(str(path))}"
        return path

    # -- internals ----------------------------------------------------------------------------
    def _safe_export(self) -> None:
        try:
            self.export_selection()
        except (CryoVAEError, OSError) as e:
            self.status.value = f"<span style='color:#c5221f'>{html.escape(str(e))}</span>"

    def _decode(self, z: np.ndarray) -> np.ndarray:
        vol = np.asarray(self.decode(np.asarray(z, dtype=np.float32)[None]))
        return vol[0]

    def _make_figure(self, xy: np.ndarray, height: int) -> go.FigureWidget:
        scatter = go.Scattergl if self.n >= WEBGL_FROM else go.Scatter
        fig = go.FigureWidget([scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=np.arange(self.n),
                                       marker=dict(size=5 if self.n < 5000 else 3, color="#1a73e8"),
                                       hovertemplate="particle %{customdata}<extra></extra>")])
        fig.update_layout(height=height, dragmode="lasso", margin=dict(l=40, r=20, t=30, b=40),
                          xaxis_title=f"{self.method.value} 1", yaxis_title=f"{self.method.value} 2")
        fig.data[0].on_click(self._on_click)
        fig.data[0].on_selection(self._on_selection)
        return fig

    def _show_method(self, method: str) -> None:
        xy = self.embedding(method)
        with self.figure.batch_update():
            self.figure.data[0].x, self.figure.data[0].y = xy[:, 0], xy[:, 1]
            self.figure.layout.xaxis.title.text = f"{method} 1"
            self.figure.layout.yaxis.title.text = f"{method} 2"

    def _recolor(self, name: str) -> None:
        marker = self.figure.data[0].marker
        with self.figure.batch_update():
            if name == "none":
                marker.color, marker.showscale = "#1a73e8", False
                return
            values = self.colors[name]
            if _is_categorical(values):
                cats = pd.Categorical(values)
                marker.color = [PALETTE[c % len(PALETTE)] if c >= 0 else "#cccccc" for c in cats.codes]
                marker.showscale = False
            else:
                marker.color = np.asarray(values, dtype=float)
                marker.colorscale, marker.showscale = "Viridis", True
                marker.colorbar = dict(title=dict(text=name))


def _check_xy(xy, name) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"embedding {name!r} must be (n, 2), got {xy.shape}")
    return xy


def _color_table(color_by, particles) -> dict[str, np.ndarray]:
    table: dict[str, np.ndarray] = {}
    sources = [particles.df] if particles is not None else []
    sources += color_by if isinstance(color_by, (list, tuple)) else [color_by]
    for src in sources:
        if src is None:
            continue
        items = src.items() if isinstance(src, (Mapping, pd.DataFrame)) else None
        if items is None:
            raise ConfigError("color_by must be a dict of arrays or a DataFrame")
        for k, v in items:
            table[str(k)] = np.asarray(v)
    return table


def _is_categorical(values: np.ndarray) -> bool:
    # cluster labels: strings, booleans or few distinct integers
    if values.dtype.kind in "OUSb":
        return True
    return values.dtype.kind in "iu" and len(np.unique(values)) <= len(PALETTE) * 2
