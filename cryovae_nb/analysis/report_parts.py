"""The parts of an analysis report (``analysis/report.py`` runs them in order and times them):
each computes one subject from the latents and the run and writes its files into the report
folder. The run is duck-typed (``inference.TrainedRun``) as in report.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cryovae_nb.analysis import report_figures as figs
from cryovae_nb.analysis.align import align, consistent_hand
from cryovae_nb.analysis.fsc import fsc
from cryovae_nb.analysis.latent import deshrink, embed
from cryovae_nb.analysis.screen import screen_particles, write_screen_selections
from cryovae_nb.analysis.series import save_series
from cryovae_nb.atomic import atomic_path
from cryovae_nb.errors import InputError
from cryovae_nb.io import file_sha256, read_volume
from cryovae_nb.volumes import fourier_resample

if TYPE_CHECKING:
    from cryovae_nb.analysis.report import ReportOptions

STAR_COLUMNS = ("rlnDefocusU", "rlnOpticsGroup", "rlnClassNumber")  # coloured by when present


def cached_arrays(cache: Path, name: str, compute) -> dict:
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


def embed_arrays(z, method, seed) -> dict:
    e = embed(z, method, seed=seed)
    return {"coords": e.coords, "indices": e.indices}


def embed_note(idx, n, method) -> str:
    return f"{method} of all {n} particles" if len(idx) == n else \
        f"{method} of a random {len(idx)} of {n} particles (latent.MAX_POINTS)"


def colour_columns(particles, o: ReportOptions, notes: list) -> dict:
    """name -> (one value per particle, categorical?) from the original STAR's rows (the file the
    particles record, or ``o.star``), falling back to the preprocessed STAR's columns; and the
    simulated truth's hinge parameter when the original is the simulator's."""
    table, where = original_table(particles, o.star, notes)
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
    truth = simulation_truth(particles)
    if truth is not None and "t" in truth[0]:
        out["true hinge parameter t"] = (np.asarray(truth[0]["t"])[truth[1]], False)
    return out


def original_table(particles, star, notes):
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


def simulation_truth(particles):
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


def scatters(folder: Path, embedded: dict, colours: dict, evr) -> list[Path]:
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


def group_volumes(run, folder: Path, z, z_logvar, labels, centres, pca, o: ReportOptions):
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


def nearest_particles(particles, z, labels, centres, folder: Path, n: int) -> Path:
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


def screen_report(run, particles, z_logvar, folder: Path, cache: Path, enc_key: str, o: ReportOptions,
            progress: bool) -> dict:
    """The junk screening (``screen.screen_particles``) on each particle's reconstruction error
    (``run.reconstruction_errors``: the training loss's data term, as notebook 05 screens) and
    posterior variance; the worst particles beside the model's images of them. The default method
    flags outliers only (robust z > 3): a mixture of two populations also splits clean data by view."""
    def errors():
        return {"recon_error": run.reconstruction_errors(particles, progress=progress)}

    # named by the figure: a cache of the mean squared error an earlier version screened on is not reused
    err = cached_arrays(cache, f"loss_data_term-{enc_key}", errors)["recon_error"]
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


def fsc_report(run, particles, z, folder: Path, reference, notes) -> dict | None:
    """The consensus map (decoded at the mean latent) against ``reference`` or the simulated
    truth nearest the middle of the motion, after alignment trying both hands."""
    if reference is not None:
        ref, _ = read_volume(reference)
        what = str(reference)
    else:
        truth = simulation_truth(particles)
        if truth is None or "volume_files" not in truth[0]:
            notes.append("FSC skipped: no --reference map and the data is not simulated")
            return None
        t = np.atleast_1d(truth[0]["volume_t"])
        level = int(np.argmin(np.abs(t - 0.5)))  # the conformation nearest the middle of the motion
        files = np.atleast_1d(truth[0]["volume_files"])
        path = Path(str(particles.provenance["cryovaeSourceStar"])).parent / str(files[level])
        ref, _ = read_volume(path)
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


def selections(particles, labels, screen_table, folder: Path, notes) -> dict:
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


__all__ = ["STAR_COLUMNS", "cached_arrays", "colour_columns", "embed_arrays", "embed_note", "fsc_report", "group_volumes", "nearest_particles", "original_table", "scatters", "screen_report", "selections", "simulation_truth"]
