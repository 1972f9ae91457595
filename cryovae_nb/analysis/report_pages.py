"""The text files of an analysis report (``analysis/report.py``): the ChimeraX script, the copies of
the analysis notebooks with their ``project.yaml``, and ``index.html``. Notebooks are JSON: they are
copied with the json module (no Jupyter import below the applications).
"""
from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import yaml

from cryovae_nb.atomic import write_text_atomic

NOTEBOOKS = ("04_evaluate.ipynb", "05_latent_landscape.ipynb")


def surface_level(volumes) -> float:
    """A contour level for a volume series: half-way between the background (the median voxel)
    and the peak (the 99.9th percentile over the series, robust to a few hot voxels), i.e. the
    half-maximum surface, one level for the whole series so that a moving part keeps its size."""
    v = np.asarray(volumes, np.float32)
    bg, peak = np.percentile(v, [50, 99.9])
    return float(bg + 0.5 * (peak - bg))


def chimerax_script(path: Path, series: dict, root: Path, vols: dict, voxel_size: float) -> dict:
    """``report.cxc``: each volume series opened as a ChimeraX ``vseries`` (model #1, #2, ...)
    with the run's voxel size and `surface_level`. Paths are relative: ChimeraX runs a command
    file from the file's own folder. Returns {series: level}."""
    lines = ["# cryovae analyze: each volume series as a ChimeraX volume series (open this file in ChimeraX:",
             "#   chimerax report.cxc   or File > Open); play one with 'vseries play #N loop true'"]
    levels = {}
    for i, (name, paths) in enumerate(series.items(), start=1):
        rel = Path(paths[0]).relative_to(root)
        pattern = (rel.parent / re.sub(r"_\d+\.mrc$", "_*.mrc", rel.name)).as_posix()
        levels[name] = surface_level(vols[name][0])
        lines += [f"# {name}: {len(paths)} volumes",
                  f"open {pattern} vseries true",
                  f"volume #{i} voxelSize {voxel_size:.6g} level {levels[name]:.6g} style surface"]
    lines += ["tile", "view"]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return levels


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link, target_is_directory=target.is_dir())


def notebook_copies(folder: Path, final: Path, run, particles, source, options, notes: list) -> list[str]:
    """04 / 05 from ``source`` into ``folder``, reading ``folder/project.yaml`` (the format of
    ``tutorial/project.py``) whose ``run`` and ``preprocessed`` are links to the run's folders,
    so the notebooks open this run, at the analysed checkpoint, on its data (``final``: where
    ``folder`` will be published)."""
    if source is None:
        notes.append("analysis notebooks not copied (no notebooks folder given)")
        return []
    if particles.source_rows() is None:
        notes.append("analysis notebooks not copied: the particles record no original STAR (cryovae preprocess)")
        return []
    original = Path(str(particles.provenance["cryovaeSourceStar"]))
    simulated = original.parent.name == "simulated" and (original.parent / "truth.npz").is_file()
    _link(folder / "run", Path(run.run_dir).resolve())
    data = Path(run.config.data).resolve()
    if data.name == "particles.star":
        _link(folder / "preprocessed", data.parent)
    else:  # the project file names particles.star: links to the set's files under that name
        (folder / "preprocessed").mkdir()
        _link(folder / "preprocessed" / "particles.star", data)
        for f in data.parent.iterdir():
            if f.name.startswith((data.stem + ".", data.stem + "_")) and f != data:
                _link(folder / "preprocessed" / f.name, f)
    if simulated:
        _link(folder / "simulated", original.parent)
    project = {"star_file": None if simulated else str(original), "datadir": None, "target_box": None,
               "preprocessed": "preprocessed", "run_name": "run"}
    write_text_atomic(folder / "project.yaml", "# written by cryovae analyze: the notebooks here open this run\n"
                      + yaml.safe_dump(project, sort_keys=False))
    # CHECKPOINT: the analysed one (``cryovae analyze --checkpoint``), not the run's newest
    values = {"WORKDIR": str(final), "N_CLUSTERS": options.k, "SEED": options.seed, "RUN_NAME": None,
              "CHECKPOINT": str(Path(run.checkpoint).resolve()),
              "STAR_FILE": None, "REFERENCE_MAP": None if options.reference is None
              else str(Path(options.reference).resolve())}
    written = []
    for name in NOTEBOOKS:
        src = Path(source) / name
        if not src.is_file():
            notes.append(f"{src} not found: not copied")
            continue
        nb = json.loads(src.read_text(encoding="utf-8"))
        at = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
        if len(at) != 1:
            notes.append(f"{src}: no single cell tagged 'parameters': not copied")
            continue
        declared = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", "".join(nb["cells"][at[0]]["source"]), re.M))
        if "CHECKPOINT" not in declared:
            notes.append(f"{src} has no CHECKPOINT parameter: it opens the run's newest checkpoint")
        text = "# set by cryovae analyze for this run\n" + "\n".join(
            f"{k} = {v!r}" for k, v in values.items() if k in declared)
        cell = {"cell_type": "code", "execution_count": None, "outputs": [],
                "metadata": {"tags": ["injected-parameters"]}, "source": text}
        if "id" in nb["cells"][at[0]]:  # nbformat 4.5 gives every cell an id
            cell["id"] = "cryovae-analyze-parameters"
        nb["cells"].insert(at[0] + 1, cell)
        write_text_atomic(folder / name, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(name)
    return written


def _img(src: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<a href="{html.escape(src)}"><img src="{html.escape(src)}"{w} alt="{html.escape(src)}"></a>'


def _a(href: str, text: str | None = None) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text or href)}</a>'


def index_html(path: Path, s: dict) -> None:
    """One page with every figure, movie and file of the report (relative links)."""
    e = html.escape
    parts = [f"<h1>cryovae analyze: {e(Path(s['run_dir']).name)}</h1>",
             f"<p>run {e(s['run_dir'])}, checkpoint {e(Path(s['checkpoint']).name)} (step {s['step']}); "
             f"{s['particles']} particles of {e(s['data'])}; latent dimension {s['latent_dim']}; "
             f"box {s['box']} px at {s['pixel_size']:.4g} Å/px</p>",
             "<h2>Latent space</h2>",
             "<p>" + "; ".join(e(n) for n in s["embedding_notes"].values()) + "</p>",
             "<div>" + "".join(_img(p, 420) for p in s["scatters"]) + "</div>",
             f"<h2>k-means (k = {s['options']['k']})</h2>",
             "<p>particles per cluster: " + ", ".join(f"{i}: {n}" for i, n in enumerate(s["cluster_sizes"])) + "</p>",
             _img(s["nearest_png"]),
             "<h2>Volumes</h2><p>group latents de-shrunk (analysis.latent.deshrink); each series as MRC "
             f"files ({s['pixel_size']:.4g} Å/voxel), a movie of its projections along z, y and x, and "
             f"in ChimeraX: {_a('report.cxc')} (<code>chimerax report.cxc</code>)</p>"]
    for name, movie in s["movies"].items():
        files = s["series"][name]
        parts.append(f"<h3>{e(name)}</h3><p>{_img(movie)}</p><p>" + " ".join(_a(f, Path(f).name) for f in files) + "</p>")
    sc = s["screen"]
    parts += ["<h2>Particle screening</h2>",
              f"<p>{sc['kept']} kept, {sc['rejected']} flagged ({e(sc['note'])}); per particle: "
              f"{_a('particles/' + sc['csv'], sc['csv'])}</p>", _img("particles/" + sc["png"])]
    if s["fsc"]:
        f = s["fsc"]
        parts += ["<h2>FSC</h2>", f"<p>consensus map against {e(f['reference'])}: 0.5 at {f['resolution_05_A']:.2f} Å, "
                  f"0.143 at {f['resolution_0143_A']:.2f} Å (Nyquist {f['nyquist_A']:.2f} Å); {_a(f['json'])}</p>",
                  _img(f["png"])]
    sel = s["selections"]
    parts += ["<h2>Selections</h2>", f"<p>k-means labels of every particle: {_a(sel['labels'])}</p>"]
    for group in ("clusters", "screen"):
        for k, v in sel.get(group, {}).items():
            parts.append(f"<p>{e(group)} {e(k)}: {v['n']} particles, {_a(v['star'])}, {_a(v['indices'])}</p>")
    if s.get("notebooks"):
        parts += ["<h2>Notebooks</h2><p>set to this run (project.yaml): "
                  + ", ".join(_a(n) for n in s["notebooks"]) + "</p>"]
    if s["notes"]:
        parts += ["<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in s["notes"]) + "</ul>"]
    parts.append(f"<p>{_a('report.json')}: the options, figures and each part's time</p>")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>cryovae analyze</title>"
            "<style>body{font-family:sans-serif;max-width:1400px;margin:1em auto}img{margin:4px;"
            "border:1px solid #ddd}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    write_text_atomic(path, page)


__all__ = ["NOTEBOOKS", "chimerax_script", "index_html", "notebook_copies", "surface_level"]
