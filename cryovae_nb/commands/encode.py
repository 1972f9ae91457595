"""``cryovae encode``: latents and poses of a stack from a trained run, optionally a STAR file with
the learned poses, and the same poses written into the user's original STAR (``--original-star``)."""
from __future__ import annotations

import argparse

import numpy as np

from cryovae_nb.argcheck import output_file, positive_int
from cryovae_nb.inference import DEFAULT_POSE, POSE_CHOICES, load_run, write_star
from cryovae_nb.io import Poses, read_particles

HELP = "encode a stack with a trained run: latents, poses, STAR with learned poses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="training run directory")
    parser.add_argument("stack", help="particles to encode (.star or .mrcs), preprocessed as for training")
    parser.add_argument("-o", "--output", required=True, help="output .npz (latents and poses)")
    parser.add_argument("--star", help="also write a STAR file of the particles with the learned poses")
    parser.add_argument("--original-star", metavar="OUT",
                        help="also write the encoded particles' rows of the original STAR file (before "
                             "preprocessing: its images, columns, optics and pixel size) with the learned poses, "
                             "shifts scaled back to the original box: OUT.star + OUT_indices.npy")
    parser.add_argument("--datadir", help="folder the STAR file's image paths are relative to")
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--pose", choices=POSE_CHOICES, default=DEFAULT_POSE,
                        help="learned-pose runs with a pose search: the searched pose (search, as in training), the "
                             "pose head's own (head: no search, ~70-110x faster), or the head when the run's last logged "
                             "training steps kept the head's rotation for most images (auto); default: %(default)s. "
                             "The .npz (pose_source) and STAR (data_cryovae_poses) record which")


def run(args: argparse.Namespace) -> int:
    # outputs are checked before the model loads, so a typo costs no time
    output_file(args.output, "-o/--output")
    if args.star is not None:
        output_file(args.star, "--star")
    if args.original_star is not None:
        output_file(args.original_star, "--original-star")
    trained = load_run(args.run_dir, batch_size=args.batch_size)
    particles = read_particles(args.stack, datadir=args.datadir)
    if args.original_star is not None:
        # heavy: the selection writer loads the preprocessing code; --help and plain encodes skip it
        from cryovae_nb.selection import original_of, write_selection

        original_of(particles)  # a missing or changed original fails before the encoding runs
    enc = trained.encode(particles, pose=args.pose)
    enc.save(args.output)
    written = [args.output]
    if args.star:
        write_star(args.star, particles, enc, pixel_size=trained.pixel_size)
        written.append(args.star)
    if args.original_star is not None:
        poses = Poses(rotations=enc.rotations, euler=enc.euler, shifts=enc.shifts)
        sel = write_selection(particles, np.arange(len(particles)), args.original_star, poses=poses)
        written += [str(sel.star), str(sel.indices_file)]
    print(f"encoded {len(enc)} particles (poses: {enc.pose_source}) -> {', '.join(map(str, written))}")
    return 0
