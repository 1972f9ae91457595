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
(``atomic.atomic_path``), so a reader sees the previous report or the new one, never half of one.

The run is duck-typed (``inference.TrainedRun``: ``encode``, ``decode``, ``reconstruct``,
``particles``, ``pixel_size``, ``checkpoint``, ``config``) so this module never imports the model.
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
from cryovae_nb.analysis.align import align, consistent_hand
from cryovae_nb.analysis.fsc import fsc
from cryovae_nb.analysis.latent import deshrink, embed, kmeans
from cryovae_nb.analysis.screen import screen_particles, write_screen_selections
from cryovae_nb.analysis.series import save_series
from cryovae_nb.atomic import atomic_path, write_json_atomic
from cryovae_nb.errors import InputError
from cryovae_nb.io import file_sha256, read_volume
from cryovae_nb.volumes import fourier_resample

REPORT_FILE = "report.json"
STAR_COLUMNS = ("rlnDefocusU", "rlnOpticsGroup", "rlnClassNumber")  # coloured by when present


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What a report computes; two runs with equal options (and checkpoint, data) give one report."""

    k: int = 5                                  # k-means clusters
    colour_by: tuple[str, ...] = ()             # STAR columns besides STAR_COLUMNS
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


def _cached(cache: Path, name: str, compute) -> dict:
    """``compute()`` (a dict of arrays) stored as ``cache/name.npz`` (no pickle) or read back."""
    path = cache / f"{name}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):
            pass  # a damaged cache entry is computed again
    arrays = compute()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return arrays


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


PARTS = ("encode", "embed", "kmeans", "colours", "scatter", "volumes", "movies", "nearest", "screen",
         "fsc", "selections", "pages")


def _build(run, tmp: Path, final: Path, o: ReportOptions, enc_key: str, notebooks, progress) -> dict:
    part = _Parts(PARTS, progress)
    cache = tmp / "cache"
    particles = run.particles
    notes: list[str] = []

    def encode():
        e = run.encode(particles, progress=progress)
        return {"z_mean": np.asarray(e.z_mean, np.float32), "z_logvar": np.asarray(e.z_logvar, np.float32)}

    enc = part("encode", _cached, cache, f"encoding-{enc_key}", encode)
    z, z_logvar = enc["z_mean"], enc["z_logvar"]

    def embeddings():
        pca = embed(z, "pca", n_components=min(z.shape[1], 10), seed=o.seed)
        found = {"pca": (pca.coords[:, :2], np.arange(len(z)))}
        for m in o.embeddings:
            if m != "pca":
                e = _cached(cache, f"{m}-{_key(enc_key, o.seed)}", lambda m=m: _embed_arrays(z, m, o.seed))
                found[m] = (e["coords"], e["indices"])
        return pca, found

    pca, embedded = part("embed", embeddings)
    labels, centres = part("kmeans", kmeans, z, min(o.k, len(z)), seed=o.seed)
    colours = part("colours", _colour_columns, particles, o, notes)
    colours = {"k-means cluster": (labels, True), **colours}
    written = part("scatter", _scatters, tmp / "latent", embedded, colours, pca.explained_variance_ratio)

    vols, series = part("volumes", _volumes, run, tmp / "volumes", z, z_logvar, labels, centres, pca, o)
    movies = part("movies", lambda: {name: figs.series_gif(tmp / "movies" / f"{name}.gif", v, labels=lab)
                                     for name, (v, lab) in vols.items()})
    nearest_png = part("nearest", _nearest, particles, z, labels, centres, tmp / "particles", o.nearest)
    screen = part("screen", _screen, run, particles, z_logvar, tmp / "particles", cache, enc_key, o, progress)
    fsc_info = part("fsc", _fsc, run, particles, z, tmp / "fsc", o.reference, notes)
    selections = part("selections", _selections, particles, labels, screen["table"], tmp / "selections", notes)

    summary = {
        "run_dir": str(Path(run.run_dir).resolve()), "checkpoint": str(Path(run.checkpoint).resolve()),
        "step": int(run.step), "data": str(Path(run.config.data).resolve()), "particles": int(len(z)),
        "latent_dim": int(z.shape[1]), "pixel_size": float(run.pixel_size), "box": int(vols["kmeans"][0].shape[-1]),
        "options": o.to_dict(), "cluster_sizes": np.bincount(labels, minlength=len(centres)).tolist(),
        "explained_variance_ratio": np.round(pca.explained_variance_ratio, 4).tolist(),
        "embedding_notes": {m: _embed_note(idx, len(z), m) for m, (_, idx) in embedded.items()},
        "screen": {k: v for k, v in screen.items() if k != "table"}, "fsc": fsc_info,
        "series": {name: [str(p.relative_to(tmp)) for p in paths] for name, paths in series.items()},
        "movies": {k: str(p.relative_to(tmp)) for k, p in movies.items()},
        "scatters": [str(p.relative_to(tmp)) for p in written], "nearest_png": str(nearest_png.relative_to(tmp)),
        "selections": selections, "notes": notes,
    }

    def pages():
        files = report_pages.chimerax_script(tmp / "report.cxc", series, tmp, vols, run.pixel_size)
        summary["notebooks"] = report_pages.notebook_copies(tmp, final, run, particles, notebooks, o, notes)
        report_pages.index_html(tmp / "index.html", summary)
        return files

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


def _embed_arrays(z, method, seed) -> dict:
    e = embed(z, method, seed=seed)
    return {"coords": e.coords, "indices": e.indices}


def _embed_note(idx, n, method) -> str:
    return f"{method} of all {n} particles" if len(idx) == n else \
        f"{method} of a random {len(idx)} of {n} particles (latent.MAX_POINTS)"


def _colour_columns(particles, o: ReportOptions, notes: list) -> dict:
    """name -> (one value per particle, categorical?) from the original STAR's rows (the file the
    particles record, or ``o.star``), falling back to the preprocessed STAR's columns; and the
    simulated truth's hinge parameter when the original is the simulator's."""
    table, where = _original_table(particles, o.star, notes)
    wanted = [c for c in STAR_COLUMNS if c in table.columns]
    missing = [c for c in o.colour_by if c not in table.columns]
    if missing:
        raise InputError(f"no column {', '.join(missing)} (it has {', '.join(map(str, table.columns))})", where)
    out = {}
    for c in dict.fromkeys([*wanted, *o.colour_by]):
        v = table[c].to_numpy()
        if c not in o.colour_by and len(np.unique(v)) < 2:
            notes.append(f"not coloured by {c}: one value for every particle")
            continue
        numeric = np.issubdtype(v.dtype, np.number)
        categorical = not numeric or (np.all(np.round(v) == v) and len(np.unique(v)) <= 20)
        out[c] = (v if numeric else v.astype(str), bool(categorical))
    truth = _simulation_truth(particles)
    if truth is not None and "t" in truth[0]:
        out["true hinge parameter t"] = (np.asarray(truth[0]["t"])[truth[1]], False)
    return out


def _original_table(particles, star, notes):
    """The particles' rows of the original STAR table (``star`` or the recorded original), else
    the preprocessed table; (table, its path)."""
    import starfile  # optional: only colouring reads the original

    rows = particles.source_rows()
    path = Path(star) if star is not None else (
        Path(str(particles.provenance["cryovaeSourceStar"])) if rows is not None else None)
    if path is None or path.suffix.lower() != ".star" or not path.is_file():
        if star is not None:
            raise InputError("STAR file not found", path)
        notes.append("coloured by the preprocessed STAR's columns (no original STAR recorded or found)")
        return particles.df, particles.source
    if star is None and file_sha256(path) != str(particles.provenance["cryovaeSourceSha256"]):
        notes.append(f"coloured by the preprocessed STAR's columns: {path} changed since preprocessing")
        return particles.df, particles.source
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as e:  # starfile raises assorted parser errors; the user needs the file name
        raise InputError(f"cannot parse STAR file ({type(e).__name__}: {e})", path) from None
    tables = [v for v in blocks.values() if hasattr(v, "columns") and "rlnImageName" in v.columns]
    if not tables:
        raise InputError("no particle block (rlnImageName)", path)
    table = tables[0].reset_index(drop=True)
    if rows is not None and len(table) > int(rows.max()):
        return table.iloc[rows].reset_index(drop=True), path
    if len(table) == len(particles):
        return table, path
    raise InputError(f"holds {len(table)} particles and records no rows of the {len(particles)} analysed", path)


def _simulation_truth(particles):
    """(truth.npz as a dict, each particle's row in it) when the original is the simulator's."""
    from cryovae_nb.synthetic import load_truth

    rows = particles.source_rows()
    if rows is None:
        return None
    truth = Path(str(particles.provenance["cryovaeSourceStar"])).parent / "truth.npz"
    if not truth.is_file():
        return None
    t = load_truth(truth)
    return (t, rows) if len(np.atleast_1d(t.get("t", []))) > int(rows.max()) else None


def _scatters(folder: Path, embedded: dict, colours: dict, evr) -> list[Path]:
    written = [figs.explained_variance_png(folder / "explained_variance.png", evr)]
    for method, (coords, idx) in embedded.items():
        axis = "PC" if method == "pca" else method.upper()
        for name, (values, categorical) in colours.items():
            slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()
            written.append(figs.scatter_png(
                folder / f"{method}_{slug}.png", coords, np.asarray(values)[idx], categorical=categorical,
                title=f"{method.upper()} of the latent means, by {name}", xlabel=f"{axis} 1",
                ylabel=f"{axis} 2", colour_label=name))
    return written


def _volumes(run, folder: Path, z, z_logvar, labels, centres, pca, o: ReportOptions):
    """k-means centre volumes and the traversals of the first principal components (both as
    group latents, de-shrunk), one hand for all in learned-pose runs; written as MRC series."""
    zc = z - z.mean(0)
    vols, labels_of = {}, {}
    vols["kmeans"] = run.decode(deshrink(centres, z_logvar))
    labels_of["kmeans"] = [f"cluster {i} ({int(n)})" for i, n in enumerate(np.bincount(labels, minlength=len(centres)))]
    for j in range(min(o.pcs, pca.coords.shape[1])):
        s = pca.coords[:, j].astype(np.float64)
        # the component's direction in latent space: the regression of the latents on its score
        # (exact for PCA: scores are the centred latents times the orthonormal component)
        direction = zc.T @ s / max(float(s @ s), 1e-30)
        lo, hi = np.percentile(s, [5, 95])
        t = np.linspace(lo, hi, o.steps)
        vols[f"pc{j + 1}"] = run.decode(deshrink(z.mean(0) + t[:, None] * direction, z_logvar))
        labels_of[f"pc{j + 1}"] = [f"PC{j + 1} = {v:+.2f}" for v in t]
    if run.config.model.pose.mode != "known":  # learned poses: the decoder's hand may differ by region
        ref = vols["kmeans"][0]
        vols = {k: consistent_hand(v, ref)[0] for k, v in vols.items()}
    prefix = {"kmeans": "centre"}
    series = {k: save_series(folder / k, v, run.pixel_size, prefix=prefix.get(k, "frame")) for k, v in vols.items()}
    return {k: (v, labels_of[k]) for k, v in vols.items()}, series


def _nearest(particles, z, labels, centres, folder: Path, n: int) -> Path:
    rows, names, cols = [], [], []
    for c, centre in enumerate(centres):
        members = np.flatnonzero(labels == c)
        d = np.linalg.norm(z[members] - centre, axis=1)
        pick = members[np.argsort(d)[:n]]
        rows.append(np.asarray(particles.images[np.sort(pick)], np.float32)[np.argsort(np.argsort(pick))])
        names.append(f"cluster {c}")
        cols.append([f"#{i}" for i in pick])
    return figs.image_grid_png(folder / "nearest_to_centres.png", rows, names, col_labels=cols,
                               title="particles nearest each k-means centre (latent distance)")


def _screen(run, particles, z_logvar, folder: Path, cache: Path, enc_key: str, o: ReportOptions,
            progress: bool) -> dict:
    """The junk screening (``screen.screen_particles``) on each particle's reconstruction error
    (mean squared difference between the image and the model's image of it) and posterior
    variance; the worst particles beside the model's images of them. The default method flags
    outliers only (robust z > 3): a mixture of two populations also splits clean data by view."""
    bs = int(run.batch_size)

    def errors():
        err = []
        for s in tqdm(range(0, len(particles), bs), desc="reconstruct", unit="batch", leave=False,
                      disable=not progress):
            img, model = run.reconstruct(particles, np.arange(s, min(s + bs, len(particles))))
            err.append(np.mean((np.asarray(img, np.float64) - model) ** 2, axis=(1, 2)))
        return {"recon_error": np.concatenate(err)}

    err = _cached(cache, f"recon_error-{enc_key}", errors)["recon_error"]
    table = screen_particles(err, z_logvar, method=o.screen if len(err) >= 10 else "threshold")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "screen.csv") as tmp:
        table.rename_axis("particle").to_csv(tmp, float_format="%.6g")
    score = table["score"].to_numpy()
    bad = np.argsort(-score)[:o.worst]
    img, model = run.reconstruct(particles, bad)
    png = figs.image_grid_png(folder / "worst_particles.png", [np.asarray(img), np.asarray(model)],
                              ["particle", "model"], col_labels=[[f"#{i} ({score[i]:.1f})" for i in bad],
                                                                 ["" for _ in bad]],
                              title="the screening's worst particles, #row (score: mean robust z of the "
                                    "error and the posterior variance)")
    return {"table": table, "kept": int(table["keep"].sum()), "rejected": int((~table["keep"]).sum()),
            "note": table.attrs.get("note", ""), "png": str(png.name), "csv": "screen.csv"}


def _fsc(run, particles, z, folder: Path, reference, notes) -> dict | None:
    """The consensus map (decoded at the mean latent) against ``reference`` or the simulated
    truth nearest the middle of the motion, after alignment trying both hands."""
    if reference is not None:
        ref, ref_px = read_volume(reference)
        what = str(reference)
    else:
        truth = _simulation_truth(particles)
        if truth is None or "volume_files" not in truth[0]:
            notes.append("FSC skipped: no --reference map and the data is not simulated")
            return None
        t = np.atleast_1d(truth[0]["volume_t"])
        level = int(np.argmin(np.abs(t - 0.5)))  # the conformation nearest the middle of the motion
        path = Path(str(particles.provenance["cryovaeSourceStar"])).parent / str(np.atleast_1d(truth[0]["volume_files"])[level])
        ref, ref_px = read_volume(path)
        what = f"the simulated truth {path.name} (t = {t[level]:.2f})"
    volume = run.decode(z.mean(0))
    if ref.shape != volume.shape:
        if ref.ndim != 3 or len(set(ref.shape)) != 1:
            raise InputError(f"the reference is {ref.shape}, not a cube", reference)
        ref = fourier_resample(ref, volume.shape[0])
    al = align(volume, ref, try_mirror=True)
    curve = fsc(al.aligned, ref, pixel_size=run.pixel_size, mask="sphere")
    folder.mkdir(parents=True, exist_ok=True)
    curve.save(folder / "fsc.json")
    figs.fsc_png(folder / "fsc.png", curve.frequencies, curve.curve, label="consensus (aligned)",
                 title=f"FSC against {what}")
    return {"reference": what, "resolution_05_A": curve.resolution_05, "resolution_0143_A": curve.resolution_0143,
            "nyquist_A": curve.nyquist, "mirrored": bool(al.mirrored), "correlation": float(al.correlation),
            "png": "fsc/fsc.png", "json": "fsc/fsc.json"}


def _selections(particles, labels, screen_table, folder: Path, notes) -> dict:
    """k-means labels always (``kmeans_labels.npy``, rows of the preprocessed particles); each
    cluster and the screening's keep / reject as subsets of the original STAR when recorded."""
    from cryovae_nb.analysis.latent import write_cluster_selections

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "kmeans_labels.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, labels.astype(np.int64), allow_pickle=False)
    try:
        clusters = write_cluster_selections(particles, labels, folder / "kmeans")
        screen = write_screen_selections(particles, screen_table, folder / "screen")
    except InputError as e:
        notes.append(f"selections as STAR subsets skipped: {' '.join(str(e).split())}")
        return {"labels": "selections/kmeans_labels.npy"}
    rel = lambda p: str(Path("selections") / Path(p).name)  # noqa: E731
    return {"labels": "selections/kmeans_labels.npy",
            "clusters": {str(k): {"star": rel(s.star), "indices": rel(s.indices_file), "n": len(s)}
                         for k, s in clusters.items()},
            "screen": {k: {"star": rel(s.star), "indices": rel(s.indices_file), "n": len(s)} for k, s in screen.items()}}


__all__ = ["PARTS", "REPORT_FILE", "STAR_COLUMNS", "ReportOptions", "default_out", "report"]
