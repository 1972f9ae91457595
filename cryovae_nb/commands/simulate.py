"""``cryovae simulate``: a particle stack (+ STAR, ground-truth volumes) from a phantom."""
from __future__ import annotations

import argparse

from cryovae_nb.argcheck import (finite_float, nonnegative_float, nonnegative_int, number, output_dir,
                                 positive_float, positive_int)
from cryovae_nb.errors import ConfigError
from cryovae_nb.synthetic import SimulationConfig, simulate

HELP = "simulate a particle stack (+ STAR, ground-truth volumes) from a phantom"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimulationConfig()
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--phantom", default=d.phantom,
                        help="lshape | hinge | two_state | path to an .mrc map (default: %(default)s)")
    parser.add_argument("--box", type=positive_int, default=d.box, help="box size in px (default: %(default)s)")
    parser.add_argument("-n", "--n-particles", type=positive_int, default=d.n_particles,
                        help="random poses to draw (ignored with --grid-step) (default: %(default)s)")
    parser.add_argument("--grid-step", type=positive_float, default=None,
                        help="use a regular grid of directions with this step in degrees instead of random poses")
    parser.add_argument("--n-psi", type=positive_int, default=d.grid_n_psi, help="in-plane angles per grid direction")
    parser.add_argument("--copies", type=positive_int, default=d.copies, help="noisy images per clean projection")
    parser.add_argument("--snr", type=nonnegative_float, default=d.snr, help="signal/noise variance; 0 = no noise")
    parser.add_argument("--shift-std", type=nonnegative_float, default=d.shift_std_px, help="in-plane shift std (px)")
    parser.add_argument("--shift-distribution", choices=("gaussian", "uniform"), default=d.shift_distribution)
    parser.add_argument("--ctf", action="store_true", help="apply a CTF (defocus drawn uniformly from the range)")
    parser.add_argument("--defocus", type=nonnegative_float, nargs=2, default=d.defocus_range, metavar=("MIN", "MAX"),
                        help="defocus range in Å (default: %(default)s)")
    parser.add_argument("--astigmatism", type=nonnegative_float, default=d.astigmatism, metavar="A",
                        help="|DefocusU - DefocusV| drawn uniformly from [0, A] Å, at a random angle "
                             "(default: %(default)s)")
    parser.add_argument("--voltage", type=positive_float, default=d.voltage, help="kV")
    parser.add_argument("--cs", type=finite_float, default=d.cs, help="spherical aberration (mm)")
    parser.add_argument("--amp-contrast", type=number(float, ge=0, le=1), default=d.amp_contrast)
    parser.add_argument("--pixel-size", type=positive_float, default=None,
                        help="Å/px (default: 1, or the map's voxel size)")
    parser.add_argument("--hinge-levels", type=number(int, ge=2), default=d.hinge_levels,
                        help="conformations of the hinge phantom")
    parser.add_argument("--seed", type=nonnegative_int, default=d.seed)
    parser.add_argument("--chunk-size", type=positive_int, default=d.chunk_size)
    parser.add_argument("--keep-clean", action="store_true", help="also keep the noiseless projections")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = SimulationConfig(
        phantom=args.phantom, box=args.box, n_particles=args.n_particles,
        pose_sampling="random" if args.grid_step is None else "grid",
        grid_step_deg=args.grid_step or SimulationConfig.grid_step_deg, grid_n_psi=args.n_psi,
        copies=args.copies, shift_std_px=args.shift_std, shift_distribution=args.shift_distribution,
        snr=args.snr or None, hinge_levels=args.hinge_levels, ctf=args.ctf,
        defocus_range=tuple(args.defocus), astigmatism=args.astigmatism, voltage=args.voltage, cs=args.cs, amp_contrast=args.amp_contrast,
        pixel_size=args.pixel_size, seed=args.seed, chunk_size=args.chunk_size, keep_clean=args.keep_clean)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"simulate: {e}") from None
    output_dir(args.out, "-o/--out")
    ds = simulate(cfg, args.out, progress=not args.no_progress)
    print(f"wrote {ds.n_particles} particles ({cfg.box} px, {ds.truth['pixel_size']:g} Å/px, "
          f"noise std {ds.truth['noise_std']:.4g}) to {ds.out_dir}: {ds.stack.name}, {ds.star.name}, "
          f"{ds.truth_file.name}, {len(ds.volumes)} volume(s) in volumes/")
    return 0
