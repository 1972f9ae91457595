"""``cryovae generate``: volumes decoded from given latents, along an interpolation or a traversal,
or from prior samples."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cryovae_nb.argcheck import nonnegative_int, number, output_dir, positive_int
from cryovae_nb.atomic import atomic_path
from cryovae_nb.errors import InputError
from cryovae_nb.inference import load_run, write_volumes

HELP = "decode volumes: latents, interpolation, traversal, prior samples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="training run directory")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--z-file", help=".npy (k, d) latents, or .npz with 'z' or 'z_mean' (from `encode`)")
    what.add_argument("--interpolate", nargs=2, type=nonnegative_int, metavar=("I", "J"),
                      help="between the latents of particles I and J of the training data")
    what.add_argument("--traverse", type=nonnegative_int, metavar="DIM", help="along one latent dimension")
    what.add_argument("--prior", type=positive_int, metavar="K", help="K volumes from prior samples")
    parser.add_argument("--steps", type=number(int, ge=2), default=10, help="volumes along --interpolate / --traverse")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of --prior")
    parser.add_argument("-o", "--outdir", required=True, help="folder for the MRC volumes and z.npy")


def _read_latents(path: str) -> np.ndarray:
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                key = "z" if "z" in f else "z_mean"
                return f[key]
        return np.load(path, allow_pickle=False)
    except KeyError:
        raise InputError("no array 'z' or 'z_mean' in the file", path) from None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read latents ({e})", path) from None


def run(args: argparse.Namespace) -> int:
    output_dir(args.outdir, "-o/--outdir")
    trained = load_run(args.run_dir)
    if args.z_file:
        z = np.atleast_2d(_read_latents(args.z_file)).astype(np.float32)
        vols, prefix = trained.decode(z), "volume"
    elif args.interpolate:
        i, j = args.interpolate
        images, _ = trained._as_images(trained.particles)
        for k in (i, j):
            if not 0 <= k < len(images):
                raise InputError(f"particle {k} out of range 0..{len(images) - 1}", trained.config.data)
        zz = trained.encode(trained.particles.subset([i, j]), progress=False).z_mean
        z, vols = trained.interpolate(zz[0], zz[1], args.steps)
        prefix = f"interp_{i}_{j}"
    elif args.traverse is not None:
        z, vols = trained.traverse(args.traverse, args.steps)
        prefix = f"traverse_dim{args.traverse}"
    else:
        z, vols = trained.sample_prior(args.prior, seed=args.seed)
        prefix = "prior"
    paths = write_volumes(args.outdir, vols, trained.pixel_size, prefix=prefix)
    with atomic_path(Path(args.outdir) / f"{prefix}_z.npy") as tmp:
        np.save(tmp, np.asarray(z, np.float32))
    print(f"wrote {len(paths)} volumes to {args.outdir} ({prefix}_000.mrc ...)")
    return 0
