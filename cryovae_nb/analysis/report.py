"""``cryovae analyze`` / ``report(run)``: one report folder per trained run and checkpoint, for a
user who never opens a notebook (cryoDRGN's ``analyze`` is the peer).

What the folder holds (``index.html`` shows it all, with relative links)::

    latent/        PCA and UMAP scatters coloured by k-means cluster, by STAR columns (defocus,
                   optics group, class) and by the simulated truth when there is one; the
                   explained variance
    volumes/       kmeans/centre_*.mrc, pc1/frame_*.mrc, ... (the run's voxel size), one GIF
                   movie per series (movies/), report.cxc opening each as a ChimeraX vseries
    particles/     the particles nearest each cluster centre; the screening's worst particles
                   beside the model's images of them, screen.csv
    fsc/           the consensus map's FSC against a reference (--reference, or the simulated
                   truth when the data is the simulator's)
    selections/    each cluster (and the screening's keep / reject) as indices.npy + a subset of
                   the original STAR, when the particles record their original (cryovae preprocess)
    04_evaluate.ipynb, 05_latent_landscape.ipynb, project.yaml: the analysis notebooks, set to
                   this run through project.yaml (``run`` / ``preprocessed`` link to its folders)
    report.json    options, figures, the files written and each part's wall time

Groups' latents (cluster centres, points along a principal component) are divided by the
posterior's shrinkage before decoding (``latent.deshrink``), as ``heterogeneity.state_volumes``
does: decoded as they are, they show each motion at a fraction of its size.

Re-running is cheap: the encoding, the UMAP and the reconstruction errors are cached as .npz
(``cache/``, keyed by the checkpoint and the data), and a report whose checkpoint, data and options
are unchanged is returned as it is. The folder is built beside the old one and renamed into place
(``atomic.atomic_path``), so a reader sees the previous report or the new one, never half of one;
what the copied notebooks or the user added to the previous folder is carried into the new one.

The run is duck-typed (``inference.TrainedRun``: ``encode``, ``decode``, ``reconstruct``,
``reconstruction_errors``, ``particles``, ``pixel_size``, ``checkpoint``, ``config``) so this module
never imports the model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cryovae_nb.analysis import report_figures as figs
from cryovae_nb.analysis import report_pages
from cryovae_nb.analysis import report_parts as parts
from cryovae_nb.analysis.latent import embed, kmeans
from cryovae_nb.atomic import atomic_path, write_json_atomic
from cryovae_nb.errors import InputError
from cryovae_nb.io import file_sha256

REPORT_FILE = "report.json"


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What a report computes; two runs with equal options (and checkpoint, data) give one report."""

    k: int = 5                                  # k-means clusters
    colour_by: tuple[str, ...] = ()             # STAR columns besides report_parts.STAR_COLUMNS
    star: str | None = None                     # the original STAR (default: the recorded one)
    reference: str | None = None                # an MRC to take the FSC against
    embeddings: tuple[str, ...] = ("pca", "umap")
    pcs: int = 2                                # principal components traversed
    steps: int = 10                             # volumes per traversal
    nearest: int = 8                            # particles shown per cluster
    worst: int = 12                             # worst particles shown
    screen: str = "threshold"                   # screen_particles' method: outliers only by default
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.k <= 50:
            raise InputError(f"--k must be in 1..50, got {self.k}")
        if self.screen not in ("threshold", "gmm"):
            raise InputError(f"screen must be 'threshold' or 'gmm', got {self.screen!r}")
        if self.steps < 2 or self.pcs < 0 or self.nearest < 1 or self.worst < 1:
            raise InputError("steps >= 2, pcs >= 0, nearest >= 1 and worst >= 1 are needed")
        bad = set(self.embeddings) - {"pca", "umap", "tsne"}
        if bad or "pca" not in self.embeddings:
            raise InputError(f"embeddings must include 'pca' and be among pca / umap / tsne, got {self.embeddings}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_out(run) -> Path:
    """``RUN_DIR/analysis/<checkpoint>`` (e.g. ``analysis/step_00001500``): one per checkpoint."""
    return Path(run.run_dir) / "analysis" / Path(run.checkpoint).name


def report(run, out: str | os.PathLike | None = None, options: ReportOptions | None = None, *,
           notebooks: str | os.PathLike | None = None, progress: bool = True, force: bool = False) -> dict:
    """Write the analysis report of ``run`` (a ``TrainedRun``) into ``out`` (default
    `default_out`) and return its ``report.json`` as a dict (``["out"]``: the folder).
    ``notebooks``: the folder holding 04_evaluate.ipynb / 05_latent_landscape.ipynb to copy
    (``tutorial.notebooks.notebooks_dir()``; None: no copies). ``force`` rebuilds an up-to-date
    report (the caches are still used)."""
    options = options or ReportOptions()
    out = Path(out) if out is not None else default_out(run)
    if out.exists() and not out.is_dir():
        raise InputError("the report folder is a file", out)
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        # the folder is replaced whole: never a folder of the user's that is not a report
        raise InputError(f"is not empty and holds no {REPORT_FILE} (not a report folder); give a new "
                         "or empty folder", out)
    data = Path(run.config.data)
    enc_key = _key(_checkpoint_identity(Path(run.checkpoint)), int(run.step), file_sha256(data))
    key = _key(enc_key, options.to_dict(), None if notebooks is None else str(notebooks))
    done = _read_done(out, key)
    if done is not None and not force:
        if progress:
            print(f"{out}: up to date (same checkpoint, data and options); nothing recomputed")
        return done
    with atomic_path(out) as tmp:
        tmp.mkdir()
        _carry_cache(out / "cache", tmp / "cache")
        summary = _build(run, tmp, out.resolve(), options, enc_key, notebooks, progress)
        summary["key"] = key
        write_json_atomic(tmp / REPORT_FILE, summary)
        _keep_additions(out, tmp)
    summary["out"] = str(out)
    return summary


def _checkpoint_identity(checkpoint: Path) -> list:
    """The checkpoint's path and its files' sizes and times: a run restarted into the same folder
    writes a checkpoint of the same name with other weights, which must not reuse the cache."""
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file()) if checkpoint.is_dir() else [checkpoint]
    return [str(checkpoint.resolve())] + [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files
                                          if p.exists()]


def _read_done(out: Path, key: str) -> dict | None:
    try:
        summary = json.loads((out / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if summary.get("key") != key or not all((out / f).exists() for f in summary.get("files", [])):
        return None
    summary["out"] = str(out)
    return summary


def _carry_cache(old: Path, new: Path) -> None:
    """The previous report's cache into the new folder (hard links where the disk allows)."""
    new.mkdir()
    if old.is_dir():
        for f in old.glob("*.npz"):
            try:
                os.link(f, new / f.name)
            except OSError:
                shutil.copy2(f, new / f.name)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _keep_additions(old: Path, new: Path) -> None:
    """What the user or the copied notebooks added to the previous report (``landscape/``,
    ``evaluate/``, their own files) into the new one, and a notebook changed since the report
    was written as ``NAME.edited.ipynb``: rebuilding replaces the report, never the user's work.
    Linked or copied (not moved), so a failure before the new folder is published loses nothing."""
    if not (old / REPORT_FILE).is_file():
        return
    written = json.loads((old / REPORT_FILE).read_text()).get("files", [])
    ours = {Path(f).parts[0] for f in written} | {"cache", REPORT_FILE}
    stamp = (old / REPORT_FILE).stat().st_mtime
    for entry in old.iterdir():
        target = new / entry.name
        if entry.name not in ours and not target.exists():
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, target)
        elif entry.suffix == ".ipynb" and entry.stat().st_mtime > stamp:
            _link_or_copy(entry, new / f"{entry.stem}.edited.ipynb")


class _Parts:
    """Each part's wall time (report.json ``timings_s``; benchmarks/analyze_report.py prints them)."""

    def __init__(self, names, progress):
        self.timings: dict[str, float] = {}
        self.bar = tqdm(total=len(names), desc="analyze", unit="part", disable=not progress)

    def __call__(self, name, fn, *args, **kwargs):
        self.bar.set_postfix_str(name)
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - t, 3)
        self.bar.update()
        return result


PARTS = ("colours", "encode", "embed", "kmeans", "scatter", "volumes", "movies", "nearest", "screen",
         "fsc", "selections", "pages")


def _build(run, tmp: Path, final: Path, o: ReportOptions, enc_key: str, notebooks, progress) -> dict:
    part = _Parts(PARTS, progress)
    cache = tmp / "cache"
    particles = run.particles
    notes: list[str] = []

    def encode():
        e = run.encode(particles, progress=progress)
        return {"z_mean": np.asarray(e.z_mean, np.float32), "z_logvar": np.asarray(e.z_logvar, np.float32)}

    # first: a column asked for that the STAR file lacks fails before minutes of encoding
    colours = part("colours", parts.colour_columns, particles, o, notes)
    enc = part("encode", parts.cached_arrays, cache, f"encoding-{enc_key}", encode)
    z, z_logvar = enc["z_mean"], enc["z_logvar"]

    def embeddings():
        pca = embed(z, "pca", n_components=min(z.shape[1], 10), seed=o.seed)
        found = {"pca": (pca.coords[:, :2], np.arange(len(z)))}
        for m in o.embeddings:
            if m != "pca":
                e = parts.cached_arrays(cache, f"{m}-{_key(enc_key, o.seed)}",
                                        lambda m=m: parts.embed_arrays(z, m, o.seed))
                found[m] = (e["coords"], e["indices"])
        return pca, found

    pca, embedded = part("embed", embeddings)
    labels, centres = part("kmeans", kmeans, z, min(o.k, len(z)), seed=o.seed)
    colours = {"k-means cluster": (labels, True), **colours}
    written = part("scatter", parts.scatters, tmp / "latent", embedded, colours, pca.explained_variance_ratio)

    vols, series = part("volumes", parts.group_volumes, run, tmp / "volumes", z, z_logvar, labels, centres,
                        pca, o)
    movies = part("movies", lambda: {name: figs.series_gif(tmp / "movies" / f"{name}.gif", v, labels=lab)
                                     for name, (v, lab) in vols.items()})
    nearest_png = part("nearest", parts.nearest_particles, particles, z, labels, centres, tmp / "particles",
                       o.nearest)
    screen = part("screen", parts.screen_report, run, particles, z_logvar, tmp / "particles", cache, enc_key,
                  o, progress)
    fsc_info = part("fsc", parts.fsc_report, run, particles, z, tmp / "fsc", o.reference, notes)
    selections = part("selections", parts.selections, particles, labels, screen["table"], tmp / "selections", notes)

    summary = {
        "run_dir": str(Path(run.run_dir).resolve()), "checkpoint": str(Path(run.checkpoint).resolve()),
        "step": int(run.step), "data": str(Path(run.config.data).resolve()), "particles": int(len(z)),
        "latent_dim": int(z.shape[1]), "pixel_size": float(run.pixel_size), "box": int(vols["kmeans"][0].shape[-1]),
        "options": o.to_dict(), "cluster_sizes": np.bincount(labels, minlength=len(centres)).tolist(),
        "explained_variance_ratio": np.round(pca.explained_variance_ratio, 4).tolist(),
        "embedding_notes": {m: parts.embed_note(idx, len(z), m) for m, (_, idx) in embedded.items()},
        "screen": {k: v for k, v in screen.items() if k != "table"}, "fsc": fsc_info,
        "series": {name: [str(p.relative_to(tmp)) for p in paths] for name, paths in series.items()},
        "movies": {k: str(p.relative_to(tmp)) for k, p in movies.items()},
        "scatters": [str(p.relative_to(tmp)) for p in written], "nearest_png": str(nearest_png.relative_to(tmp)),
        "selections": selections, "notes": notes,
    }

    def pages():
        levels = report_pages.chimerax_script(tmp / "report.cxc", series, tmp, vols, run.pixel_size)
        summary["notebooks"] = report_pages.notebook_copies(tmp, final, run, particles, notebooks, o, notes)
        report_pages.index_html(tmp / "index.html", summary)
        return levels

    summary["chimerax_levels"] = part("pages", pages)
    part.bar.close()
    summary["timings_s"] = part.timings
    summary["files"] = _listing(tmp)
    return summary


def _listing(folder: Path) -> list[str]:
    """Every file of the report (links to the run's folders as themselves, not followed; the
    cache left out: it is not part of what a re-run must find)."""
    found = []
    for root, dirs, files in os.walk(folder):  # os.walk does not follow the links
        rel = Path(root).relative_to(folder)
        found += [str(rel / f) for f in files if rel.parts[:1] != ("cache",)]
        found += [str(rel / d) for d in dirs if (Path(root) / d).is_symlink()]
    return sorted(found)


__all__ = ["PARTS", "REPORT_FILE", "ReportOptions", "default_out", "report"]
