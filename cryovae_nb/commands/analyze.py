"""``cryovae analyze``: the analysis report of a trained run (``cryovae_nb.analysis.report``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from cryovae_nb.argcheck import nonnegative_int, number, output_dir, positive_int

HELP = "write a report folder of a trained run: latent maps, cluster and PC volumes, movies, ChimeraX, HTML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("run_dir", help="training run directory")
    p.add_argument("--checkpoint", help="a checkpoint folder of the run (default: the newest intact one)")
    p.add_argument("--out", help="report folder (default: RUN_DIR/analysis/<checkpoint>)")
    p.add_argument("--star", metavar="ORIGINAL.star",
                   help="your original STAR file, for colouring by its columns (default: the one "
                        "cryovae preprocess recorded)")
    p.add_argument("--k", type=positive_int, default=5, help="k-means clusters (default 5)")
    p.add_argument("--colour-by", "--color-by", nargs="+", default=[], metavar="COLUMN",
                   help="also colour the latent maps by these STAR columns (rlnDefocusU, "
                        "rlnOpticsGroup and rlnClassNumber are used when present)")
    p.add_argument("--reference", metavar="MAP.mrc",
                   help="a map to take the consensus map's FSC against (default: the simulated truth "
                        "for simulated data, else none)")
    p.add_argument("--no-umap", action="store_true", help="PCA only (UMAP compiles for ~30 s at first use)")
    p.add_argument("--steps", type=number(int, ge=2), default=10, help="volumes along each principal component (default 10)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="k-means / UMAP seed (default 0)")
    p.add_argument("--force", action="store_true", help="rebuild even when the report is up to date")


def run(args: argparse.Namespace) -> int:
    # heavy: the report loads scikit-learn and matplotlib, the run TensorFlow; --help needs none
    from cryovae_nb.analysis.report import ReportOptions, report
    from cryovae_nb.errors import InputError
    from cryovae_nb.inference import load_run
    from cryovae_nb.tutorial.notebooks import notebooks_dir

    options = ReportOptions(k=args.k, colour_by=tuple(args.colour_by), star=args.star,
                            reference=args.reference, steps=args.steps, seed=args.seed,
                            embeddings=("pca",) if args.no_umap else ("pca", "umap"))
    for path, what in ((args.star, "--star"), (args.reference, "--reference")):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{what}: file not found", path)
    if args.out is not None:
        output_dir(args.out, "--out")
    trained = load_run(args.run_dir, checkpoint=args.checkpoint)
    summary = report(trained, args.out, options, notebooks=notebooks_dir(), force=args.force)
    out = Path(summary["out"])
    print(f"report of {trained.run_dir} at step {trained.step}: {out / 'index.html'}")
    print(f"  ChimeraX: chimerax {out / 'report.cxc'}")
    for note in summary["notes"]:
        print(f"  note: {note}")
    return 0
