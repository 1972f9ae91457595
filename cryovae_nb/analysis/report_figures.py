"""The pictures of an analysis report (``analysis/report.py``): latent scatters, the explained
variance, image grids, the FSC curve and volume-series movies, drawn headless with matplotlib's
Agg backend (``Figure`` objects, never pyplot, so a notebook's backend is left alone) and written
atomically. Every function takes arrays and a path; none knows about runs or models.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryovae_nb.atomic import atomic_path


def _figure(w: float, h: float, rows: int = 1, cols: int = 1):
    from matplotlib.figure import Figure  # Figure + its Agg canvas: no pyplot, no GUI backend

    fig = Figure(figsize=(w, h), dpi=100)
    return fig, np.atleast_1d(fig.subplots(rows, cols, squeeze=False))


def _save_png(fig, path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def scatter_png(path, coords, values, *, title: str, xlabel: str, ylabel: str,
                categorical: bool, colour_label: str) -> Path:
    """One 2D embedding coloured by ``values``: a legend for few categories (clusters, optics
    groups), a colour bar for continuous values (defocus). Large sets are drawn with small, faint
    points so that density still shows."""
    coords = np.asarray(coords, np.float64)
    values = np.asarray(values)
    fig, ax = _figure(5.4, 4.6)
    ax = ax[0, 0]
    size, alpha = (6, 0.7) if len(coords) <= 5000 else (1, 0.3)
    if categorical:
        import matplotlib

        cats = np.unique(values)
        cmap = matplotlib.colormaps["tab10" if len(cats) <= 10 else "tab20"]
        for i, c in enumerate(cats):
            m = values == c
            ax.scatter(coords[m, 0], coords[m, 1], s=size, alpha=alpha, color=cmap(i % cmap.N),
                       label=f"{c} ({int(m.sum())})", linewidths=0)
        ax.legend(title=colour_label, fontsize=7, title_fontsize=8, markerscale=3 if size < 6 else 1.5,
                  loc="best", framealpha=0.8)
    else:
        sc = ax.scatter(coords[:, 0], coords[:, 1], s=size, alpha=alpha, c=values.astype(np.float64),
                        cmap="viridis", linewidths=0)
        fig.colorbar(sc, ax=ax, label=colour_label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save_png(fig, path)


def explained_variance_png(path, ratios) -> Path:
    """Bars of each principal component's share of the latent variance, and the cumulative share."""
    r = np.asarray(ratios, np.float64)
    x = np.arange(1, len(r) + 1)
    fig, ax = _figure(5.0, 3.2)
    ax = ax[0, 0]
    ax.bar(x, r, color="tab:blue", label="per component")
    ax.plot(x, np.cumsum(r), "o-", color="tab:orange", label="cumulative")
    ax.set_xticks(x)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("principal component of the latent means")
    ax.set_ylabel("fraction of variance")
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def _normalised(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def image_grid_png(path, rows: list[np.ndarray], row_labels: list[str], *, title: str,
                   col_labels: list[list[str]] | None = None) -> Path:
    """Rows of particle images (each row ``(m, n, n)``, rows may differ in length), each image
    scaled to its own 1..99 percentile range, as a particle gallery shows them."""
    ncols = max(len(r) for r in rows)
    fig, axes = _figure(1.15 * ncols + 1.0, 1.2 * len(rows) + 0.5, len(rows), ncols)
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(_normalised(row[j]), cmap="gray", interpolation="nearest")
                if col_labels is not None:
                    ax.set_title(col_labels[i][j], fontsize=6)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save_png(fig, path)


def fsc_png(path, frequencies, curve, *, title: str, label: str) -> Path:
    """The FSC curve against spatial frequency with the 0.5 and 0.143 lines."""
    f = np.asarray(frequencies, np.float64)
    fig, ax = _figure(5.0, 3.4)
    ax = ax[0, 0]
    ax.plot(f, curve, "o-", ms=3, label=label)
    for thr, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(thr, color="grey", ls=style, lw=1)
        ax.text(f[-1], thr, f" {thr}", va="center", fontsize=7, color="grey")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def orthogonal_projections(volume: np.ndarray) -> np.ndarray:
    """The volume summed along z, y and x (views down each axis), side by side: ``(n, 3n)``."""
    v = np.asarray(volume, np.float32)
    return np.concatenate([v.sum(axis=0), v.sum(axis=1), v.sum(axis=2)], axis=1)


def series_gif(path: str | os.PathLike, volumes, *, labels: list[str] | None = None,
               frame_ms: int = 250) -> Path:
    """A movie of a volume series: each frame the volume's three orthogonal projections, each
    view on one intensity scale for the whole series (so a moving part is seen moving, not
    renormalised away), played forth and back (a loop without a jump). Pillow writes the GIF."""
    from PIL import Image, ImageDraw

    vols = np.asarray(volumes, np.float32)
    n = vols.shape[-1]
    views = np.stack([orthogonal_projections(v) for v in vols])
    grey = np.empty(views.shape, np.uint8)
    for k in range(3):  # a scale per view: the sum along x is not allowed to wash out the others
        part = views[:, :, k * n:(k + 1) * n]
        lo, hi = np.percentile(part, [0.5, 99.8])
        grey[:, :, k * n:(k + 1) * n] = np.clip((part - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255
    scale = max(2, 192 // n)  # frames of ~200 px whatever the box
    frames = []
    for i, g in enumerate(grey):
        im = Image.fromarray(g[::-1]).resize((g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST)
        canvas = Image.new("L", (im.width, im.height + 14), 0)
        canvas.paste(im, (0, 14))
        if labels is not None:
            ImageDraw.Draw(canvas).text((3, 1), labels[i], fill=255)
        frames.append(canvas.convert("P"))
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[order[0]].save(tmp, format="GIF", save_all=True, append_images=[frames[i] for i in order[1:]],
                              duration=frame_ms, loop=0)
    return path


__all__ = ["explained_variance_png", "fsc_png", "image_grid_png", "orthogonal_projections",
           "scatter_png", "series_gif"]
