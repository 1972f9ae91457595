"""Volume viewer: isosurfaces in nglview with per-map threshold, colour, opacity, hand flip, and
orthogonal slices / projections beside them in plotly (thesis Fig. 3.12: a reconstruction
overlaid on its reference); and `LinkedViews`, several maps side by side whose cameras turn
together."""
from __future__ import annotations

import html
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import ipywidgets as W
import mrcfile
import nglview
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cryovae_nb.errors import InputError
from cryovae_nb.io import read_volume
from cryovae_nb.volumes import mirror_through_plane

COLORS = ["#9aa0a6", "#e8710a", "#1a73e8", "#d01884", "#188038", "#a142f4"]
PLANES = ("XY (z = p)", "XZ (y = p)", "YZ (x = p)")


@dataclass
class _Map:
    name: str
    data: np.ndarray            # float32 [z, y, x], as given (unflipped)
    voxel_size: float
    level: float
    color: str
    opacity: float
    flipped: bool = False
    visible: bool = True
    component: Any = None       # nglview ComponentViewer
    controls: dict = field(default_factory=dict)


def default_level(volume: np.ndarray) -> float:
    """Mean + 1.5 sigma: a surface around the protein, not the noise, for most maps and phantoms."""
    return float(min(volume.max(), volume.mean() + 1.5 * volume.std()))


def load_volume(source, voxel_size: float | None = None) -> tuple[np.ndarray, float]:
    """Array or MRC path -> (float32 [z,y,x] cube, voxel size in Å; 1.0 when nobody knows)."""
    if isinstance(source, (str, os.PathLike)):
        data, header_size = read_volume(source)
        voxel_size = voxel_size or header_size
    else:
        data = np.asarray(source, dtype=np.float32)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        raise InputError(f"a volume must be an n x n x n array, got shape {data.shape}", where)
    if not np.all(np.isfinite(data)):
        raise InputError("volume holds NaN or infinite values",
                         os.fspath(source) if isinstance(source, (str, os.PathLike)) else None)
    return np.ascontiguousarray(data, dtype=np.float32), float(voxel_size or 1.0)


def mrc_bytes(volume: np.ndarray, voxel_size: float) -> bytes:
    """The MRC file nglview reads: written to a temporary file (mrcfile needs one), then read back."""
    with tempfile.TemporaryDirectory(prefix="cryovae_view_") as tmp:
        path = Path(tmp) / "volume.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = voxel_size
        return path.read_bytes()


def slice_planes(volume: np.ndarray, position: int | None = None, mode: str = "slices") -> list[np.ndarray]:
    """The three orthogonal planes of ``V[z, y, x]``: XY, XZ, YZ (rows = second named axis).

    ``mode="slices"`` cuts through index ``position`` (default n//2) along z, y and x;
    ``mode="projections"`` sums along them instead.
    """
    if mode == "projections":
        return [volume.sum(axis=0), volume.sum(axis=1), volume.sum(axis=2)]
    p = volume.shape[0] // 2 if position is None else int(position)
    return [volume[p], volume[:, p, :], volume[:, :, p]]


class VolumeViewer(W.VBox):
    """One or several maps as isosurfaces plus their orthogonal slices.

    ``volumes``: an array / MRC path, a list of them, or a dict ``{name: array or path}``. The
    first map is the reference; later ones are drawn over it (give them an ``opacity`` < 1 to see
    both). Each map gets a row of controls: threshold, colour, opacity, hand flip, visibility.
    """

    def __init__(self, volumes, voxel_size: float | None = None, *, colors: Sequence[str] | None = None,
                 opacities: Sequence[float] | None = None, levels: Sequence[float] | None = None,
                 slices: bool = True, width: str = "480px", height: str = "400px"):
        # size through nglview's own kwargs/layout traits: replacing .layout would drop the observer
        # that resizes NGL's canvas, which then spills over its neighbours
        self.view = nglview.NGLWidget(width=width, height=height)
        self.view.layout.width, self.view.layout.height = width, height
        self.maps: list[_Map] = []
        self._framed = False
        self._map_rows = W.VBox()
        self.slice_mode = W.ToggleButtons(options=["slices", "projections"], value="slices",
                                          style=W.ToggleButtonsStyle(button_width="90px"))
        self.slice_map = W.Dropdown(description="map", options=[], layout=W.Layout(width="220px"))
        self.slice_pos = W.IntSlider(description="p", min=0, max=0, continuous_update=False)
        self.slices = _slice_figure() if slices else None
        for w in (self.slice_mode, self.slice_map, self.slice_pos):
            w.observe(lambda _: self._draw_slices(), names="value")
        items = _as_items(volumes)
        colors = list(colors) if colors else COLORS
        for i, (name, source) in enumerate(items):
            self.add_volume(source, name=name, voxel_size=voxel_size, color=colors[i % len(colors)],
                            opacity=opacities[i] if opacities else (1.0 if i == 0 else 0.5),
                            level=levels[i] if levels else None)
        panel = [self.view]
        if self.slices is not None:
            panel.append(W.VBox([W.HBox([self.slice_mode, self.slice_map, self.slice_pos],
                                        layout=W.Layout(flex_flow="row wrap")), self.slices]))
        # side by side when the notebook is wide enough, slices below the 3-D view otherwise
        super().__init__([self._map_rows, W.HBox(panel, layout=W.Layout(flex_flow="row wrap"))])

    # -- public API ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [m.name for m in self.maps]

    @property
    def levels(self) -> dict[str, float]:
        return {m.name: m.level for m in self.maps}

    def add_volume(self, source, *, name: str | None = None, voxel_size: float | None = None,
                   color: str | None = None, opacity: float = 1.0, level: float | None = None) -> None:
        data, vs = load_volume(source, voxel_size)
        name = name or _default_name(source, len(self.maps))
        if name in self.names:
            raise InputError(f"a map named {name!r} is already shown")
        m = _Map(name, data, vs, default_level(data) if level is None else float(level),
                 color or COLORS[len(self.maps) % len(COLORS)], float(opacity))
        self.maps.append(m)
        m.controls = self._make_controls(m)
        self._map_rows.children = self._map_rows.children + (m.controls["row"],)
        self._load(m)
        current = self.slice_map.value
        self.slice_map.options = self.names
        self.slice_map.value = current or self.names[0]  # ipywidgets 8 leaves None after new options
        self._draw_slices()

    def set_volume(self, key: int | str, source, voxel_size: float | None = None) -> None:
        """Replace a map's data (e.g. a freshly decoded volume), keeping its colour and settings.

        The threshold is kept if it still lies inside the new map's range, else reset to default.
        """
        m = self._get(key)
        m.data, m.voxel_size = load_volume(source, voxel_size or m.voxel_size)
        lo, hi = float(m.data.min()), float(m.data.max())
        if not lo <= m.level <= hi:
            m.level = default_level(m.data)
        self._set_slider_range(m)
        self._reload(m)
        self._draw_slices()

    def set_level(self, key: int | str, level: float) -> None:
        self._get(key).controls["level"].value = level  # the observer updates the surface

    def set_flipped(self, key: int | str, flipped: bool = True) -> None:
        self._get(key).controls["flip"].value = flipped

    def displayed(self, key: int | str) -> np.ndarray:
        """The array drawn for a map (flipped when the hand is flipped)."""
        m = self._get(key)
        return mirror_through_plane(m.data) if m.flipped else m.data

    # -- nglview ------------------------------------------------------------------------------
    def _load(self, m: _Map) -> None:
        blob = io.BytesIO(mrc_bytes(self.displayed(m.name), m.voxel_size))
        # NGL frames the camera only when it builds a default representation (an explicit
        # autoView before the surface exists leaves the canvas blank, as the browser test showed),
        # so the first map gets one, swapped for ours; later loads keep the user's camera.
        frame = not self._framed
        m.component = self.view.add_component(blob, ext="mrc", defaultRepresentation=frame)
        if frame:
            m.component.clear_representations()
            self._framed = True
        m.component.add_surface(isolevelType="value", isolevel=m.level, color=m.color,
                                opacity=m.opacity, opaqueBack=False)
        if not m.visible:
            m.component.hide()

    def _reload(self, m: _Map) -> None:
        # A component's data cannot be swapped in NGL; drop it and load the new map. nglview
        # trims both messages from its replay archive, so old maps do not pile up there.
        self.view.remove_component(m.component)
        self._load(m)

    def _update_surface(self, m: _Map, **params) -> None:
        self.view.update_representation(component=m.component._index, repr_index=0, **params)

    # -- controls -----------------------------------------------------------------------------
    def _make_controls(self, m: _Map) -> dict:
        c = dict(
            label=W.HTML(f"<b>{html.escape(m.name)}</b>", layout=W.Layout(width="140px")),
            level=W.FloatSlider(description="threshold", value=m.level, continuous_update=False,
                                readout_format=".3g"),
            color=W.ColorPicker(value=m.color, concise=True, layout=W.Layout(width="40px")),
            opacity=W.FloatSlider(description="opacity", value=m.opacity, min=0, max=1, step=0.05,
                                  continuous_update=False),
            flip=W.Checkbox(description="flip hand", value=m.flipped, indent=False,
                            layout=W.Layout(width="90px")),
            visible=W.Checkbox(description="show", value=True, indent=False, layout=W.Layout(width="70px")),
        )
        m.controls = c
        self._set_slider_range(m)

        def on_level(ch):
            m.level = float(ch["new"])
            self._update_surface(m, isolevel=m.level, isolevel_type="value")

        def on_color(ch):
            m.color = ch["new"]
            self._update_surface(m, color=m.color)

        def on_opacity(ch):
            m.opacity = float(ch["new"])
            self._update_surface(m, opacity=m.opacity)

        def on_flip(ch):
            m.flipped = bool(ch["new"])
            self._reload(m)
            self._draw_slices()

        def on_visible(ch):
            m.visible = bool(ch["new"])
            (m.component.show if m.visible else m.component.hide)()

        for key, fn in (("level", on_level), ("color", on_color), ("opacity", on_opacity),
                        ("flip", on_flip), ("visible", on_visible)):
            c[key].observe(fn, names="value")
        c["row"] = W.HBox([c[k] for k in ("label", "level", "color", "opacity", "flip", "visible")])
        return c

    def _set_slider_range(self, m: _Map) -> None:
        s = m.controls["level"]
        lo, hi = float(m.data.min()), float(m.data.max())
        # widen min/max in an order that never puts value outside [min, max] (traitlets would clip it)
        s.min, s.max = min(lo, s.min), max(hi, s.max)
        s.step = (hi - lo) / 200 if hi > lo else 0.01
        s.value = m.level
        s.min, s.max = lo, max(hi, lo + s.step)

    def _get(self, key: int | str) -> _Map:
        if isinstance(key, str):
            for m in self.maps:
                if m.name == key:
                    return m
            raise KeyError(f"no map named {key!r}; maps: {self.names}")
        return self.maps[key]

    # -- slices -------------------------------------------------------------------------------
    def _draw_slices(self) -> None:
        if self.slices is None or not self.maps or self.slice_map.value is None:
            return
        vol = self.displayed(self.slice_map.value)
        n = vol.shape[0]
        if self.slice_pos.max != n - 1:
            self.slice_pos.max = n - 1
            self.slice_pos.value = n // 2
        self.slice_pos.disabled = self.slice_mode.value == "projections"
        planes = slice_planes(vol, self.slice_pos.value, self.slice_mode.value)
        with self.slices.batch_update():
            for trace, plane in zip(self.slices.data, planes):
                trace.z = plane


def _slice_figure() -> go.FigureWidget:
    fig = make_subplots(rows=1, cols=3, subplot_titles=PLANES, horizontal_spacing=0.04)
    for col in (1, 2, 3):
        fig.add_trace(go.Heatmap(z=[[0]], colorscale="Greys_r", showscale=False,
                                 hovertemplate="%{x}, %{y}: %{z:.3g}<extra></extra>"), row=1, col=col)
        # image orientation: equal axis units, row 0 at the bottom as in ChimeraX
        fig.update_yaxes(scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col, showticklabels=False)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
    fig.update_layout(width=600, height=250, margin=dict(l=10, r=10, t=30, b=10))
    return go.FigureWidget(fig)


def _as_items(volumes) -> list[tuple[str | None, Any]]:
    if isinstance(volumes, Mapping):
        return list(volumes.items())
    if isinstance(volumes, (str, os.PathLike)) or (isinstance(volumes, np.ndarray) and volumes.ndim == 3):
        return [(None, volumes)]
    return [(None, v) for v in volumes]


def _default_name(source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return f"map {index}"


# two camera orientations closer than this (entries of NGL's 4x4 matrix) are the same: a view
# reports back the orientation it was just given, and must not send it on again (no echo loop)
_SAME_ORIENTATION = 1e-6


class LinkedViews(W.VBox):
    """Two or more maps side by side, each in its own `VolumeViewer`, with linked cameras: turning
    or zooming one turns the others (e.g. the volumes along a path, its two ends, or two k-means
    centres, seen from one angle).

    Linked twice over: nglview's own camera sync runs in the browser while the mouse drags one
    view (``NGLWidget._set_sync_camera``), and the orientation each view reports to the kernel
    (its ``_camera_orientation`` trait, NGL's 4x4 matrix) is sent to the others, so a camera set
    from Python or a view drawn later follows too.

    ``volumes``: a list of arrays / MRC paths or a dict ``{label: array or path}``; ``levels`` one
    threshold per map (default each its own; give one value to compare maps at one level).
    """

    def __init__(self, volumes, voxel_size: float | None = None, *, levels: Sequence[float] | float | None = None,
                 colors: Sequence[str] | None = None, slices: bool = False, link: bool = True,
                 width: str = "320px", height: str = "320px"):
        items = _as_items(volumes)
        if len(items) < 2:
            raise InputError(f"linked views need at least 2 maps, got {len(items)}")
        if levels is not None and not isinstance(levels, Sequence):
            levels = [float(levels)] * len(items)
        if levels is not None and len(levels) != len(items):
            raise InputError(f"{len(levels)} thresholds for {len(items)} maps")
        colors = list(colors) if colors else COLORS
        self.viewers = [VolumeViewer({name or _default_name(src, i): src}, voxel_size,
                                     colors=[colors[i % len(colors)]], slices=slices,
                                     levels=None if levels is None else [levels[i]], width=width, height=height)
                        for i, (name, src) in enumerate(items)]
        self.views = [v.view for v in self.viewers]
        self.linked = False
        if link:
            self.link()
        super().__init__([W.HBox(self.viewers, layout=W.Layout(flex_flow="row wrap"))])

    def link(self) -> None:
        """Link the cameras (idempotent)."""
        if self.linked:
            return
        for view in self.views:
            view._set_sync_camera([v for v in self.views if v is not view])
            view.observe(self._follow, names="_camera_orientation")
        self.linked = True

    def unlink(self) -> None:
        if not self.linked:
            return
        for view in self.views:
            view._set_unsync_camera([v for v in self.views if v is not view])
            view.unobserve(self._follow, names="_camera_orientation")
        self.linked = False

    def set_orientation(self, orientation: Sequence[float]) -> None:
        """Turn every view to NGL's 4x4 camera matrix ``orientation`` (16 numbers, column-major,
        as ``_camera_orientation`` holds it)."""
        m = [float(x) for x in orientation]
        if len(m) != 16 or not np.all(np.isfinite(m)):
            raise InputError(f"a camera orientation is 16 finite numbers, got {len(m)}")
        for view in self.views:
            view._set_camera_orientation(m)
            view._camera_orientation = m

    def _follow(self, change) -> None:
        new = list(change["new"] or [])
        if len(new) != 16:
            return
        for view in self.views:
            if view is change["owner"]:
                continue
            old = list(view._camera_orientation or [])
            if len(old) == 16 and np.max(np.abs(np.subtract(old, new))) < _SAME_ORIENTATION:
                continue  # already there: this is the echo of our own update
            view._set_camera_orientation(new)
            view._camera_orientation = new
