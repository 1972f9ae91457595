"""``cryovae fsc``: the FSC of two MRC maps, optionally after aligning the first onto the second."""
from __future__ import annotations

import argparse

from cryovae_nb.analysis.align import align
from cryovae_nb.analysis.fsc import fsc
from cryovae_nb.argcheck import output_file, positive_float
from cryovae_nb.errors import InputError
from cryovae_nb.io import read_volume

HELP = "FSC between two volumes, resolution at 0.5 / 0.143"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vol1", help="first volume (.mrc)")
    parser.add_argument("vol2", help="second volume / reference (.mrc)")
    parser.add_argument("--pixel-size", type=positive_float, default=None,
                        help="Å per voxel (default: from vol1's header, else 1)")
    parser.add_argument("--mask", default=None,
                        help="'sphere' for a soft spherical mask, or an MRC mask file")
    parser.add_argument("--align", action="store_true",
                        help="align vol1 onto vol2 (rotation, shift, hand) before the FSC")
    parser.add_argument("--out", default=None, help="write the curve to .json or .csv")


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        output_file(args.out, "--out")
    v1, px1 = read_volume(args.vol1)
    v2, _ = read_volume(args.vol2)
    if v1.shape != v2.shape:
        raise InputError(f"shape {v2.shape} differs from {args.vol1}'s {v1.shape}", args.vol2)
    px = args.pixel_size or px1
    if px is None:
        print(f"{args.vol1}: no voxel size in the header; assuming 1 Å (use --pixel-size)")
        px = 1.0
    mask = args.mask
    if mask is not None and mask != "sphere":
        mask, _ = read_volume(mask)
    if args.align:
        res = align(v1, v2)
        v1 = res.aligned
        print(f"aligned: correlation {res.correlation:.3f} (other hand "
              f"{res.correlation_other_hand:.3f}){', mirrored' if res.mirrored else ''}")
    r = fsc(v1, v2, pixel_size=px, mask=mask)
    for name, val, crossed in (("0.5", r.resolution_05, r.crossed_05),
                               ("0.143", r.resolution_0143, r.crossed_0143)):
        note = "" if crossed else " (never crossed: Nyquist-limited)"
        print(f"FSC {name}: {val:.2f} Å{note}")
    print(f"Nyquist: {r.nyquist:.2f} Å")
    if args.out:
        r.save(args.out)
    return 0
