"""``cryovae preprocess``: coarsen / crop, normalise, mask a stack; write .mrcs + .star."""
from __future__ import annotations

import argparse

from cryovae_nb.argcheck import (nonnegative_float, nonnegative_int, number, output_file, positive_float,
                                 positive_int)
from cryovae_nb.contrast import detect_contrast
from cryovae_nb.io import read_particles
from cryovae_nb.preprocess import NORMALISE_METHODS, PreprocessConfig, output_paths, preprocess_stack

HELP = "coarsen / crop, normalise, mask a stack; write .mrcs + .star"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PreprocessConfig()
    p = parser
    p.add_argument("input", help="RELION .star file or a bare .mrcs/.mrc stack")
    p.add_argument("-o", "--output", required=True,
                   help="output prefix (or PREFIX.star); writes PREFIX.star and the stack, split and settings it "
                        "names (PREFIX.TAG.mrcs, PREFIX.TAG_split.npz, PREFIX.TAG_preprocess.json)")
    p.add_argument("--datadir", help="folder to look up the STAR file's image stacks in")
    p.add_argument("--coarsen", type=positive_int, default=d.coarsen,
                   help="average c x c pixel blocks (default 1: off)")
    p.add_argument("--box", type=positive_int, default=None, help="Fourier-crop to this box (after coarsening)")
    contrast = p.add_mutually_exclusive_group()
    contrast.add_argument("--invert", dest="invert", action="store_const", const=True, default="auto",
                          help="invert the contrast (default: decided from the images, see --no-invert)")
    contrast.add_argument("--no-invert", dest="invert", action="store_const", const=False,
                          help="keep the contrast as it is (default: decided from the images; particles "
                               "that are bright after phase flipping by their CTF are kept)")
    p.add_argument("--phase-flip", action="store_true", help="CTF phase flip (needs CTF columns)")
    # --normalize: the American spelling users' scripts already pass; one option, two spellings
    p.add_argument("--normalise", "--normalize", choices=NORMALISE_METHODS, default=d.normalise)
    p.add_argument("--spread", type=positive_float, default=d.spread, help="tanh-estimator spread (default 0.3)")
    p.add_argument("--background-radius", type=nonnegative_float, default=None,
                   help="normalise with statistics from outside this radius (px of the output box)")
    p.add_argument("--mask", type=number(float, ge=0, le=1), default=d.mask_diameter,
                   help="circular mask diameter as a fraction of the box (default 0.95; 0: no mask)")
    p.add_argument("--mask-soft-edge", type=nonnegative_float, default=d.mask_soft_edge,
                   help="raised-cosine mask edge width in px (default 0: hard edge)")
    p.add_argument("--test-fraction", type=number(float, ge=0, lt=1), default=d.test_fraction)
    p.add_argument("--seed", type=nonnegative_int, default=d.seed, help="seed of the train/test split")
    p.add_argument("--chunk-size", type=positive_int, default=d.chunk_size, help="images read at a time")
    p.add_argument("--pixel-size", type=positive_float, default=None, help="input Å/px, if the input lacks it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    output_file(args.output, "-o/--output")
    particles = read_particles(args.input, datadir=args.datadir)
    invert = args.invert
    if invert == "auto":  # decided here, not in preprocess_stack, so that the user reads the evidence
        check = detect_contrast(particles)
        print(check.describe())
        invert = bool(check.invert)
    cfg = PreprocessConfig(coarsen=args.coarsen, box=args.box, invert=invert,
                           phase_flip=args.phase_flip, normalise=args.normalise, spread=args.spread,
                           background_radius=args.background_radius, mask_diameter=args.mask or None,
                           mask_soft_edge=args.mask_soft_edge, test_fraction=args.test_fraction,
                           seed=args.seed, chunk_size=args.chunk_size, pixel_size=args.pixel_size)
    out = preprocess_stack(particles, args.output, cfg, progress=not args.no_progress)
    paths = output_paths(args.output)
    print(f"wrote {len(out)} images of {out.box} px at {out.pixel_size:g} Å/px (Nyquist {2 * out.pixel_size:g} Å): "
          f"{paths['stack']}, {paths['star']}, {paths['split']}")
    return 0
