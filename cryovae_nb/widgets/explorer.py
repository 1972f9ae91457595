"""Latent explorer: a 2-D embedding of the latents (UMAP / PCA / t-SNE), coloured by anything,
where a click, a lasso or a box selects particles (replacing the selection, added to it, taken
from it or intersected with it), and buttons select by cluster, by a latent dimension's or STAR
column's range, or invert. The selected particles' images are shown, their volume decoded into
the volume viewer, and the selection written out for RELION: as rows of the user's original STAR
file plus ``_indices.npy`` (``cryovae_nb.selection``) when the particles were preprocessed by us,
else as a STAR file of the particles shown. A path through the latent space
(``analysis.paths``) can be drawn over the map.

The selection logic is ``analysis.selections`` (headless, tested there); this module only wires
it to widgets. Above WEBGL_FROM points the scatter is WebGL, which draws 10^6 points."""
from __future__ import annotations

import html
import os
from typing import Callable, Mapping, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cryovae_nb.analysis import paths, selections
from cryovae_nb.atomic import atomic_path
from cryovae_nb.errors import ConfigError, CryoVAEError, InputError
from cryovae_nb.io import write_particles_subset
from cryovae_nb.selection import selection_paths, write_selection
from cryovae_nb.widgets.images import normalise01, png_bytes, tile, upscale
from cryovae_nb.widgets.volume import VolumeViewer

# above this many points, WebGL scatter (plotly's SVG scatter crawls past ~10^4 points)
WEBGL_FROM = 20_000
# the selected particles' images shown: at most this many, spread evenly over the selection
MAX_IMAGES = 16
# a column with more distinct values than this (image names, coordinates) is not offered as groups
MAX_GROUPS = 200
SELECTED_COLOR = "#e8710a"
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
    images : ``(n, h, w)`` images of the points (anything indexable so, e.g. a ``ParticleStack``);
        default ``particles.images``. Up to MAX_IMAGES of the selected ones are shown.
    """

    def __init__(self, embeddings: Mapping[str, np.ndarray] | Callable[[str], np.ndarray], *,
                 methods: Sequence[str] = ("umap", "pca", "tsne"), color_by=None, latents=None,
                 decode: Callable | None = None, particles=None, export: Callable | None = None,
                 viewer=None, voxel_size: float | None = None, height: int = 480, images=None):
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
        self.selected = np.zeros(0, dtype=np.int64)
        self._path = None  # the particles a path shown on the map visits
        self.clicked: list[int] = []  # the last two particles clicked: a path's ends
        self.images = images if images is not None else (particles.images if particles is not None else None)

        xy = self.embedding(methods[0])
        self.n = len(xy)
        for name, values in self.colors.items():
            if len(values) != self.n:
                raise InputError(f"colour {name!r} has {len(values)} values for {self.n} points")
        if self.latents is not None and len(self.latents) != self.n:
            raise InputError(f"{len(self.latents)} latents for {self.n} embedded points")
        if self.images is not None and len(self.images) != self.n:
            raise InputError(f"{len(self.images)} images for {self.n} embedded points")

        self.method = W.Dropdown(description="embedding", options=methods, value=methods[0])
        self.color = W.Dropdown(description="colour", options=["none"] + list(self.colors), value="none")
        self.status = W.HTML("click a point or lasso a group")
        self.path = W.Text(description="STAR", placeholder="selection.star", value="selection.star")
        self.export_button = W.Button(description="export selection", icon="save", disabled=True)
        self.export_button.on_click(lambda _: self._safe(self.export_selection))
        self.figure = self._make_figure(xy, height)
        self.method.observe(lambda ch: self._show_method(ch["new"]), names="value")
        self.color.observe(lambda ch: self._recolor(ch["new"]), names="value")

        # selection operations: what a lasso / box / click does to the selection, and the rest
        self.operation = W.ToggleButtons(options=list(selections.OPERATIONS), value="replace",
                                         tooltips=["a region replaces the selection", "adds to it",
                                                   "is taken from it", "keeps only the overlap"],
                                         style=W.ToggleButtonsStyle(button_width="80px"))
        self.invert_button = W.Button(description="invert", icon="exchange")
        self.clear_button = W.Button(description="clear", icon="times")
        self.invert_button.on_click(lambda _: self._safe(self.invert_selection))
        self.clear_button.on_click(lambda _: self._safe(lambda: self.select([])))
        ranges = self.range_options()
        self.range_by = W.Dropdown(description="range of", options=ranges, value=ranges[0] if ranges else None,
                                   layout=W.Layout(width="260px"))
        self.range_lo = W.FloatText(description="from", layout=W.Layout(width="160px"))
        self.range_hi = W.FloatText(description="to", layout=W.Layout(width="160px"))
        self.range_button = W.Button(description="select range", icon="filter", disabled=not ranges)
        self.range_button.on_click(lambda _: self._safe(lambda: self.select_range(
            self.range_by.value, self.range_lo.value, self.range_hi.value)))
        self.range_by.observe(lambda _: self._reset_range(), names="value")
        groups = [k for k, v in self.colors.items() if _is_categorical(v) and len(pd.unique(v)) <= MAX_GROUPS]
        self.group_by = W.Dropdown(description="group of", options=groups, value=groups[0] if groups else None,
                                   layout=W.Layout(width="260px"))
        self.group_value = W.Dropdown(description="value", layout=W.Layout(width="200px"))
        self.group_button = W.Button(description="select group", icon="object-group", disabled=not groups)
        self.group_button.on_click(lambda _: self._safe(lambda: self.select_values(
            self.group_by.value, [self.group_value.value])))
        self.group_by.observe(lambda _: self._reset_groups(), names="value")
        self._reset_range()
        self._reset_groups()
        self.path_button = W.Button(description="path: last 2 clicks", icon="route", disabled=True,
                                    tooltip="the path between the last two clicked particles through "
                                            "the crowd of latents (k-nearest-neighbour graph)")
        self.path_button.on_click(lambda _: self._safe(lambda: self.path_between(*self.clicked)))
        self.gallery = W.Image(format="png", layout=W.Layout(max_width="100%"))
        self.gallery_caption = W.HTML()

        self.viewer = viewer
        if self.viewer is None and decode is not None:
            self.viewer = VolumeViewer({"decoded": self._decode(self.latents.mean(axis=0))}, voxel_size)
        right = [self.viewer] if self.viewer is not None else []
        shown = [self.gallery_caption, self.gallery] if self.images is not None else []
        super().__init__([W.HBox([self.method, self.color]), self.figure,
                          W.HBox([self.operation, self.invert_button, self.clear_button, self.path_button],
                                 layout=W.Layout(flex_flow="row wrap")),
                          W.HBox([self.range_by, self.range_lo, self.range_hi, self.range_button],
                                 layout=W.Layout(flex_flow="row wrap")),
                          W.HBox([self.group_by, self.group_value, self.group_button]),
                          W.HBox([self.path, self.export_button]), self.status] + shown + right)

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
            self.clicked = (self.clicked + [int(points.point_inds[-1])])[-2:]
            self.apply([points.point_inds[-1]])
            self.path_button.disabled = self.latents is None or len(self.clicked) < 2

    def _on_selection(self, trace, points, selector) -> None:
        # the region plotly.js reports, combined with the selection by the chosen operation
        self.apply(points.point_inds)

    def apply(self, rows, operation: str | None = None) -> None:
        """Combine ``rows`` with the selection (``operation``: one of
        ``analysis.selections.OPERATIONS``, default the one chosen in the widget)."""
        self.select(selections.combine(self.selected, np.asarray(rows, dtype=np.int64), self.n,
                                       operation or self.operation.value))

    def select_region(self, polygon, operation: str | None = None) -> None:
        """The points of the current map inside a lasso ``polygon`` ``(m, 2)``."""
        self.apply(selections.in_polygon(self.embedding(self.method.value), polygon), operation)

    def select_range(self, name: str, lo: float, hi: float, operation: str | None = None) -> None:
        """Points whose ``name`` (``"z1"``... a latent dimension, or a numeric colour / STAR
        column) lies in [lo, hi]."""
        self.apply(selections.in_range(self._values(name), lo, hi, name), operation)

    def select_values(self, name: str, values, operation: str | None = None) -> None:
        """Points whose label ``name`` (a cluster column, optics group...) is one of ``values``."""
        self.apply(selections.in_values(self._values(name), values), operation)

    def invert_selection(self) -> None:
        self.select(selections.invert(self.selected, self.n))

    def range_options(self) -> list[str]:
        """What a range can select by: latent dimensions (``z1``...), then numeric columns."""
        dims = [] if self.latents is None else [f"z{j + 1}" for j in range(self.latents.shape[1])]
        return dims + [k for k, v in self.colors.items() if v.dtype.kind in "iuf" and not _is_categorical(v)]

    def select(self, indices) -> None:
        """Select particles by index (a click, a lasso, the operations), show their images and
        decode their volume."""
        self.selected = np.unique(np.asarray(indices, dtype=np.int64))
        if self.selected.size and (self.selected.min() < 0 or self.selected.max() >= self.n):
            raise IndexError(f"selection outside 0..{self.n - 1}")
        self.export_button.disabled = self.selected.size == 0
        # the selection is drawn by its own trace, from what Python holds: plotly.js's own
        # highlight follows only its lasso (an operation, a range or an inversion is not its own)
        self._draw_selection(self.embedding(self.method.value))
        self._show_images()
        msg = f"{self.selected.size} particle(s) selected"
        if self.selected.size and self.decode is not None and self.viewer is not None:
            # a group is summarised by its mean latent: the conformation at the group's centre
            z = self.latents[self.selected].mean(axis=0)
            self.viewer.set_volume(0, self._decode(z), self.voxel_size)
            msg += " &middot; volume decoded at " + ("this point" if self.selected.size == 1 else
                                                      "their mean latent")
        self.status.value = msg

    def path_between(self, start: int, end: int, steps: int = 10, **kwargs):
        """The path from particle ``start`` to ``end`` through the latents' nearest-neighbour graph
        (``analysis.paths.graph_path``, keyword arguments go there), drawn on the map; returns the
        ``LatentPath`` (its ``points`` decode with ``paths.path_volumes``)."""
        if self.latents is None:
            raise ConfigError("a path through the latent space needs the explorer's latents")
        path = paths.graph_path(self.latents, start, end, steps, **kwargs)
        self.show_path(path.particles, f"path {start} -> {end}")
        self.status.value = (f"path from particle {start} to {end}: {len(path.particles)} particles, "
                             f"length {path.length:.3g}")
        return path

    def show_path(self, particles, name: str = "path") -> None:
        """Draw a path through the map: the particles it visits, in order (``LatentPath.particles``
        of ``analysis.paths``), joined by a line. A second call replaces it."""
        order = np.asarray(particles, np.int64).ravel()
        if order.size < 2 or order.min() < 0 or order.max() >= self.n:
            raise InputError(f"a path visits at least 2 of the particles 0..{self.n - 1}")
        self._path = order
        if len(self.figure.data) < 3:
            self.figure.add_scatter(x=[], y=[], mode="lines+markers", hoverinfo="skip", showlegend=False,
                                    line=dict(color="#d93025", width=3), marker=dict(size=6))
        self.figure.data[2].name = name
        self._draw_path(self.embedding(self.method.value))

    def export_selection(self, path: str | os.PathLike | None = None) -> str:
        """Write the selection: ``export(path, indices)`` if given; else, for preprocessed
        particles, the rows of the original STAR (``PATH.star`` + ``PATH_indices.npy``,
        ``selection.write_selection``), and for particles read from the user's own file, a STAR
        file of ``particles.subset(selection)`` and ``PATH_indices.npy``, the selected rows of
        ``particles``. Returns the STAR path written."""
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
            # the user's own file: the subset and the rows of ``particles`` (no original to map to)
            star, index_file = selection_paths(path)
            write_particles_subset(star, self.particles, self.selected)
            with atomic_path(index_file) as tmp, open(tmp, "wb") as f:
                np.save(f, self.selected, allow_pickle=False)
            path = os.fspath(star)
        else:
            raise ConfigError("give the explorer `particles` or an `export` callback to export")
        self.status.value = f"wrote {self.selected.size} particle(s) to {html.escape(str(path))}"
        return path

    # -- internals ----------------------------------------------------------------------------
    def _safe(self, action) -> None:
        try:
            action()
        except (CryoVAEError, OSError) as e:
            self.status.value = f"<span style='color:#c5221f'>{html.escape(str(e))}</span>"

    def _values(self, name: str) -> np.ndarray:
        if name in self.colors:
            return self.colors[name]
        if self.latents is not None and name.startswith("z") and name[1:].isdigit() \
                and 1 <= int(name[1:]) <= self.latents.shape[1]:
            return self.latents[:, int(name[1:]) - 1]
        raise InputError(f"nothing named {name!r} to select by; have {self.range_options() + list(self.colors)}")

    def _reset_range(self) -> None:
        # the chosen quantity's whole span, to narrow down from
        if self.range_by.value is None:
            return
        v = np.asarray(self._values(self.range_by.value), np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            self.range_lo.value, self.range_hi.value = float(v.min()), float(v.max())

    def _reset_groups(self) -> None:
        if self.group_by.value is None:
            return
        values = pd.unique(pd.Series(self.colors[self.group_by.value]))
        self.group_value.options = [(str(v), v) for v in sorted(values, key=str)]

    def _show_images(self) -> None:
        if self.images is None:
            return
        if self.selected.size == 0:
            self.gallery.value, self.gallery_caption.value = b"", ""
            return
        k = min(MAX_IMAGES, self.selected.size)
        shown = self.selected[np.linspace(0, self.selected.size - 1, k).round().astype(int)]
        imgs = normalise01(np.asarray(self.images[shown], np.float32))
        self.gallery.value = png_bytes(tile(upscale(imgs, 64), ncols=8))
        self.gallery_caption.value = (f"{k} of the {self.selected.size} selected particles: "
                                      + ", ".join(str(i) for i in shown))

    def _decode(self, z: np.ndarray) -> np.ndarray:
        vol = np.asarray(self.decode(np.asarray(z, dtype=np.float32)[None]))
        return vol[0]

    def _make_figure(self, xy: np.ndarray, height: int) -> go.FigureWidget:
        scatter = go.Scattergl if self.n >= WEBGL_FROM else go.Scatter
        size = 5 if self.n < 5000 else 3
        # plotly.js dims what lies outside its lasso; the selection trace says what is selected
        keep = dict(marker=dict(opacity=1.0))
        fig = go.FigureWidget([
            scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=np.arange(self.n),
                    marker=dict(size=size, color="#1a73e8"), selected=keep, unselected=keep,
                    hovertemplate="particle %{customdata}<extra></extra>", showlegend=False),
            scatter(x=[], y=[], mode="markers", name="selected", hoverinfo="skip", showlegend=False,
                    marker=dict(size=size, color=SELECTED_COLOR), selected=keep, unselected=keep)])
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
            self._draw_path(xy)
            self._draw_selection(xy)

    def _draw_path(self, xy: np.ndarray) -> None:
        if self._path is not None:
            self.figure.data[2].x, self.figure.data[2].y = xy[self._path, 0], xy[self._path, 1]

    def _draw_selection(self, xy: np.ndarray) -> None:
        with self.figure.batch_update():
            self.figure.data[1].x, self.figure.data[1].y = xy[self.selected, 0], xy[self.selected, 1]

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
