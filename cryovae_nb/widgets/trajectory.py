"""Trajectory player: a Play button linked to a frame slider over a series of volumes (an
interpolation between two latents, or a traversal along one latent dimension)."""
from __future__ import annotations

import html
from typing import Sequence

import ipywidgets as W
import numpy as np

from cryovae_nb.errors import InputError
from cryovae_nb.widgets.volume import VolumeViewer, default_level


class TrajectoryPlayer(W.VBox):
    """Plays ``volumes`` ``(k, n, n, n)`` in the volume viewer, one frame at a time.

    One threshold serves every frame (default: the series' middle frame's), so the surface moves
    because the density moves, not because the level does. ``labels`` names frames (e.g. the latent
    coordinate); ``interval_ms`` is the playback speed.
    """

    def __init__(self, volumes, voxel_size: float | None = None, *, labels: Sequence[str] | None = None,
                 level: float | None = None, interval_ms: int = 400, **viewer_kwargs):
        self.volumes = np.asarray(volumes, dtype=np.float32)
        if self.volumes.ndim != 4 or len(self.volumes) < 1:
            raise InputError(f"a trajectory is a (k, n, n, n) array of volumes, got {self.volumes.shape}")
        k = len(self.volumes)
        if labels is not None and len(labels) != k:
            raise InputError(f"{len(labels)} labels for {k} frames")
        self.labels = list(labels) if labels is not None else [f"frame {i}" for i in range(k)]
        if level is None:
            level = default_level(self.volumes[k // 2])
        self.viewer = VolumeViewer({"trajectory": self.volumes[0]}, voxel_size, levels=[level],
                                   **viewer_kwargs)
        self.frame = W.IntSlider(description="frame", min=0, max=k - 1, value=0, continuous_update=False)
        self.play = W.Play(min=0, max=k - 1, value=0, interval=interval_ms, step=1)
        # jslink: the browser drives the slider while playing, without a kernel round-trip per tick
        self._link = W.jslink((self.play, "value"), (self.frame, "value"))
        self.caption = W.HTML(html.escape(str(self.labels[0])))
        self.frame.observe(self._on_frame, names="value")
        super().__init__([W.HBox([self.play, self.frame, self.caption]), self.viewer])

    def show_frame(self, i: int) -> None:
        self.frame.value = int(i)

    def _on_frame(self, change) -> None:
        i = int(change["new"])
        self.viewer.set_volume(0, self.volumes[i])
        self.caption.value = html.escape(str(self.labels[i]))
