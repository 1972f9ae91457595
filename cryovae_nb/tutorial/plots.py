"""The tutorial's figures: matplotlib drawings of particles, embeddings, volumes, the simulated
states against their decoded maps, and FSC curves. ``plot_*`` return pyplot figures (a notebook
shows them inline); ``save_*_png`` draw headless (Agg) and write PNGs atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryovae_nb.atomic import atomic_path
from cryovae_nb.tutorial.evaluation import MotionReport


def side_view(volume, axis: int = 2) -> np.ndarray:
    """A volume's projection along ``axis`` (default x: the hinge's axis, so the moving bar's
    angle shows), for display."""
    return np.asarray(volume, np.float32).sum(axis=axis)


def plot_strips(rows: dict, col_titles=None, *, title: str | None = None, axis: int = 2,
                size: float = 1.5, inline: bool = True):
    """Rows of volumes side by side, each shown as its projection along ``axis`` (`side_view`),
    ``{row name: volumes}``; the grey scale is clipped at 60 % of the bright end so that a thin
    moving part stays visible next to a thick one. ``inline``: a pyplot figure (a notebook shows
    it), else a detached one for saving. Returns the figure."""
    rows = {k: [np.asarray(v) for v in vols] for k, vols in rows.items()}
    cols = max(len(v) for v in rows.values())
    shape = (size * cols + 0.6, size * len(rows) + (0.4 if title else 0.1))
    if inline:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(rows), cols, figsize=shape, squeeze=False)
    else:
        fig, axes = _figure(*shape, rows=len(rows), cols=cols)
    axes = np.asarray(axes).reshape(len(rows), cols)
    for r, (name, vols) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(vols):
                ax.set_axis_off()
                continue
            img = side_view(vols[c], axis)
            top = float(np.quantile(img, 0.98))
            ax.imshow(img, cmap="gray", origin="lower", vmin=0.0, vmax=0.6 * top if top > 0 else None)
            label = col_titles.get(name) if isinstance(col_titles, dict) else col_titles
            if label is not None and c < len(label):
                ax.set_title(label[c], fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_states(report: MotionReport, frames=None, *, title: str | None = None, inline: bool = True):
    """`plot_strips` of a `MotionReport`: each state's truth (titled with its hinge angle) above
    the map decoded at its mean latent (titled with their correlation), and, with ``frames``, a
    trajectory below."""
    angle = report.figures["max_angle_deg"]
    rows = {"truth": report.truths, "decoded": report.decoded}
    titles = {"truth": [f"{t * angle:.0f}°" for t in report.state_t],
              "decoded": [("corr n/a" if c is None else f"corr {c:.2f}") for c in report.figures["state_correlation"]]}
    if frames is not None:
        rows["trajectory"] = frames
    return plot_strips(rows, titles, title=title, inline=inline)


def save_states_png(path: str | os.PathLike, report: MotionReport, frames=None,
                    title: str | None = None) -> None:
    """`plot_states` into a PNG (atomic; headless)."""
    _save(plot_states(report, frames, title=title, inline=False), path)


def save_fsc_png(path: str | os.PathLike, curves: dict, title: str = "FSC against the ground truth") -> None:
    """Plot ``{label: FSCResult}`` with the 0.5 / 0.143 thresholds into a PNG (atomic)."""
    fig, ax = _figure(6.4, 4.0)
    for label, r in curves.items():
        ax.plot(r.frequencies, r.curve, marker=".", label=f"{label}: 0.5 at {r.resolution_05:.2f} Å, "
                f"0.143 at {r.resolution_0143:.2f} Å")
    for t, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(t, color="grey", ls=style, lw=1)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def save_preview_png(path: str | os.PathLike, raw: np.ndarray, processed: np.ndarray,
                     titles: tuple[str, str] = ("raw", "preprocessed")) -> None:
    """Two rows of particles, raw above preprocessed, each image scaled to its own range."""
    k = len(raw)
    fig, axes = _figure(1.3 * k, 2.9, rows=2, cols=k)
    axes = np.asarray(axes).reshape(2, k)
    for row, (imgs, title) in enumerate(((raw, titles[0]), (processed, titles[1]))):
        for j in range(k):
            ax = axes[row, j]
            ax.imshow(imgs[j], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(title)
    _save(fig, path)


def _figure(w, h, rows=1, cols=1):
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless; a notebook's inline backend stays as it is
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    axes = fig.subplots(rows, cols)
    return fig, axes


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_images(images, *, ncols: int = 8, title: str | None = None, labels=None, size: float = 1.3):
    """A grid of particle images in a (pyplot, so inline in a notebook) figure; returns it."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    k = len(images)
    rows = max(1, -(-k // ncols))
    cols = min(k, ncols) if k else 1
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < k:
            ax.imshow(images[i], cmap="gray")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_embeddings(embeddings: dict, colour_by: dict, *, size: float = 3.6):
    """2-D embeddings (``{method: analysis.latent.Embedding}``) as scatter plots, one row per colouring
    ``{name: (n,) values}`` (values indexed like the latents; integer labels get a qualitative
    palette, anything else a colour bar). Returns the (pyplot) figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(colour_by), len(embeddings), squeeze=False,
                             figsize=(size * 1.15 * len(embeddings), size * len(colour_by)))
    for r, (name, values) in enumerate(colour_by.items()):
        values = np.asarray(values)
        labels = values.dtype.kind in "iub"
        for c, (m, e) in enumerate(embeddings.items()):
            ax = axes[r, c]
            sc = ax.scatter(e.coords[:, 0], e.coords[:, 1], c=values[e.indices], s=4,
                            cmap="tab10" if labels else "viridis")
            ax.set_title(f"{name}\n{e.note}", fontsize=8)
            ax.set_xlabel(f"{m} 1")
            ax.set_ylabel(f"{m} 2")
            if not labels:
                fig.colorbar(sc, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def plot_volumes(volumes, labels=None, *, title: str | None = None, size: float = 1.8):
    """Each volume as its three projections (along z, y and x): a row per volume; returns the figure."""
    import matplotlib.pyplot as plt

    vols = [np.asarray(v) for v in (volumes.values() if isinstance(volumes, dict) else volumes)]
    labels = list(volumes) if isinstance(volumes, dict) else (labels or [str(i) for i in range(len(vols))])
    fig, axes = plt.subplots(len(vols), 3, figsize=(3 * size, size * len(vols) + (0.4 if title else 0)),
                             squeeze=False)
    for r, (v, name) in enumerate(zip(vols, labels)):
        for c, (axis, plane) in enumerate(((0, "along z"), (1, "along y"), (2, "along x"))):
            ax = axes[r, c]
            ax.imshow(v.sum(axis=axis), cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane, fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
