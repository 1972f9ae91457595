"""``cryovae select``: a selection of particles (a k-means cluster, a latent range, or rows from a
file) written as a subset of the original STAR file, for RELION."""
from __future__ import annotations

import argparse
from pathlib import Path

from cryovae_nb.argcheck import finite_float, nonnegative_int, output_file, positive_int

HELP = "write a cluster, latent range or index list as a subset of the original STAR, for RELION"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("source", help="a training run directory (its training data) or a preprocessed .star")
    p.add_argument("-o", "--output", required=True,
                   help="output name: writes OUT.star (rows of the original STAR, every column and optics "
                        "group kept) and OUT_indices.npy (their 0-based rows in it)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--indices", metavar="NPY",
                     help="rows of SOURCE's particles to select (.npy of integers, or a boolean mask)")
    how.add_argument("--cluster", type=nonnegative_int, metavar="K",
                     help="the particles of k-means cluster K (0-based) of the latents")
    how.add_argument("--latent-range", nargs=3, metavar=("DIM", "LO", "HI"),
                     help="the particles whose latent dimension DIM (1-based) lies in [LO, HI]")
    p.add_argument("--k", type=positive_int, default=5, help="k-means clusters for --cluster (default 5)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="k-means seed (default 0)")
    p.add_argument("--encoding", metavar="NPZ",
                     help="latents from 'cryovae encode' of SOURCE's particles (default: encode them with the run)")
    p.add_argument("--datadir", help="folder the STAR file's image paths are relative to")


def _latent_range(values):
    dim, lo, hi = values
    return positive_int(dim), finite_float(lo), finite_float(hi)


def run(args: argparse.Namespace) -> int:
    # heavy: the readers load pandas / starfile, clustering scikit-learn; --help needs none of them
    from cryovae_nb.errors import InputError
    from cryovae_nb.io import read_particles
    from cryovae_nb.selection import read_indices, write_selection

    output_file(args.output, "-o/--output")
    if args.cluster is not None and args.cluster >= args.k:  # before any latent is computed
        raise InputError(f"--cluster {args.cluster} is not one of the {args.k} clusters 0..{args.k - 1}")
    try:
        rng = None if args.latent_range is None else _latent_range(args.latent_range)
    except argparse.ArgumentTypeError as e:
        raise InputError(f"--latent-range: {e}") from None
    source = Path(args.source)
    run_dir = None
    if source.is_dir():
        from cryovae_nb.training.rundir import RunFolder

        folder = RunFolder(source)
        if not folder.has_config():
            raise InputError("not a training run directory (no config) nor a STAR file", source)
        cfg = folder.config()
        run_dir, star, datadir = source, cfg.data, args.datadir or cfg.datadir
    else:
        star, datadir = source, args.datadir
    particles = read_particles(star, datadir=datadir)

    if args.indices is not None:
        rows, what = read_indices(args.indices), f"rows from {args.indices}"
    else:
        z = _latents(args, particles, run_dir)
        if args.cluster is not None:
            from cryovae_nb.analysis.latent import kmeans

            labels, _ = kmeans(z, args.k, seed=args.seed)
            rows, what = labels == args.cluster, f"k-means cluster {args.cluster} of {args.k}"
        else:
            from cryovae_nb.analysis.latent import latent_range

            rows, what = latent_range(z, *rng), f"latent {rng[0]} in [{rng[1]:g}, {rng[2]:g}]"
    sel = write_selection(particles, rows, args.output)
    print(f"{what}: {len(sel)} of {len(particles)} particles -> {sel.star}, {sel.indices_file} "
          f"(rows of {sel.original})")
    return 0


def _latents(args, particles, run_dir):
    from cryovae_nb.errors import InputError

    if args.encoding is not None:
        from cryovae_nb.inference import Encoding

        z = Encoding.load(args.encoding).z_mean
        if len(z) != len(particles):
            raise InputError(f"{len(z)} encoded particles, but {args.source} has {len(particles)}: "
                             "encode the same particles", args.encoding)
        return z
    if run_dir is None:
        raise InputError("latents needed: give a run directory as SOURCE, or --encoding from 'cryovae encode'",
                         args.source)
    from cryovae_nb.inference import load_run  # heavy: TensorFlow

    return load_run(run_dir).encode(particles, progress=False).z_mean
