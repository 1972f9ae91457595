"""``cryovae encode``: latents and poses of a stack from a trained run, optionally a STAR file with
the learned poses."""
from __future__ import annotations

import argparse

from cryovae_nb.argcheck import output_file, positive_int
from cryovae_nb.inference import load_run, write_star
from cryovae_nb.io import read_particles

HELP = "encode a stack with a trained run: latents, poses, STAR with learned poses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="training run directory")
    parser.add_argument("stack", help="particles to encode (.star or .mrcs), preprocessed as for training")
    parser.add_argument("-o", "--output", required=True, help="output .npz (latents and poses)")
    parser.add_argument("--star", help="also write a STAR file of the particles with the learned poses")
    parser.add_argument("--datadir", help="folder the STAR file's image paths are relative to")
    parser.add_argument("--batch-size", type=positive_int)


def run(args: argparse.Namespace) -> int:
    # outputs are checked before the model loads, so a typo costs no time
    output_file(args.output, "-o/--output")
    if args.star is not None:
        output_file(args.star, "--star")
    trained = load_run(args.run_dir, batch_size=args.batch_size)
    particles = read_particles(args.stack, datadir=args.datadir)
    enc = trained.encode(particles)
    enc.save(args.output)
    if args.star:
        write_star(args.star, particles, enc, pixel_size=trained.pixel_size)
    print(f"encoded {len(enc)} particles -> {args.output}" + (f", {args.star}" if args.star else ""))
    return 0
