"""Particle gallery: inputs, the projections of their reconstructions, and the colour overlay of
the two (thesis Fig. 3.11c), a page of particles at a time."""
from __future__ import annotations

import ipywidgets as W
import numpy as np

from cryovae_nb.errors import InputError
from cryovae_nb.widgets.images import _check_pair, comparison_png


class ParticleGallery(W.VBox):
    """Rows: input (grey), projection (grey), overlay (input magenta, projection green).

    ``inputs`` / ``projections``: ``(k, n, n)`` arrays (or anything indexable that way, such as a
    ``ParticleStack``); ``per_page`` columns are drawn at once and a slider pages through the rest.
    """

    def __init__(self, inputs, projections, *, per_page: int = 8, indices=None):
        self.inputs, self.projections = inputs, projections
        if len(inputs) != len(projections):
            raise InputError(f"{len(inputs)} inputs but {len(projections)} projections")
        self.indices = np.arange(len(inputs)) if indices is None else np.asarray(indices)
        self.per_page = max(1, int(per_page))
        n_pages = -(-len(self.indices) // self.per_page)
        self.page = W.IntSlider(description="page", min=0, max=max(0, n_pages - 1),
                                continuous_update=False)
        self.caption = W.HTML()
        self.image = W.Image(format="png")
        self.page.observe(lambda _: self._draw(), names="value")
        self._draw()
        super().__init__([W.HBox([self.page, self.caption]), self.image])

    def page_indices(self) -> np.ndarray:
        p = self.page.value * self.per_page
        return self.indices[p:p + self.per_page]

    def _draw(self) -> None:
        idx = self.page_indices()
        a, b = _check_pair(self.inputs[idx], self.projections[idx])
        self.image.value = comparison_png(a, b)
        self.caption.value = (f"particles {idx[0]}-{idx[-1]} of {len(self.indices)} &nbsp; rows: input, "
                              "projection, overlay (input <span style='color:#c0c'>magenta</span>, "
                              "projection <span style='color:#0a0'>green</span>)")
