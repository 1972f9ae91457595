"""Can gold-standard refinement (cryovae_nb.refine) turn an ab initio consensus into poses good
enough for known-pose heterogeneity? Pose error against the simulation's truth, per iteration.

Reads a dataset folder of ``quality_heterogeneity.py`` (``sim/truth.npz``, ``pre/particles.star``)
and refines the first ``--n`` particles' poses from a starting map:

- ``--start run:RUN_DIR``: a trained ab initio run's consensus (decoded at the zero latent); its own
  poses (``encode``: head + search) are scored first, for comparison;
- ``--start truth:BAND``: the true map (hinge at t = 0.5) turned by a random rotation and low-passed
  to BAND cycles per box (an initial model of the right hand from elsewhere);
- ``--start npz:PATH``: a map in an ``.npz`` (array ``volume``).

Printed each iteration: the band searched, the half-maps' FSC 0.5 / 0.143 radius (cycles per box),
the mean score, and the pose error (``refine.pose_error``: median angle and the fraction within 10
degrees after the best global rotation, on either side, and hand). ``--limit M`` first prints what
the same search reaches against the exact true map (global + local, no refinement): the floor the
data set at this SNR. ``--write-star PATH`` writes the preprocessed STAR of those particles with the
refined rotations and shifts (for ``cryovae train --pose-mode known``).

    .venv/bin/python benchmarks/refine_poses.py --data /tmp/cryovae_quality_het/hinge_b32_n8000_snr1.0_s0 \\
        --start run:RUN_DIR --n 1500 --iterations 8 --global-iterations 8 --start-band 4 --limit 500

Measured (2 shared cores, hinge box 32, first 1,500 particles; median pose error / fraction within
10 degrees, after the best global rotation and hand):

- SNR 1, from the 6-minute ab initio run's consensus (its own poses: 97 deg / 7 %): one global
  iteration 37 deg / 21 %; 3 global iterations at start band 4: 18 deg / 29 %; 8: 11.1 deg / 44 %
  (~70 s an iteration); one more from that map 9.4 deg / 54 % (map 0.960 with the truth, 0.878
  with its mirror). From the true map low-passed to 5 cycles: 7.8 deg / 63 % in 3 iterations.
  The search against the exact map (200 particles, band 6 then local): 6.8 deg median.
- SNR 0.1: the search against the exact map (500 particles): 56 deg / 18 % (global band 4),
  24 deg / 20 % (band 8): single images do not fix their view at this SNR and box. From the true
  map low-passed to 5 cycles: 34 deg / 15 %; from the ab initio run's consensus (its own poses
  120 deg / 0.4 %): 117 deg / 0.9 % after 3 iterations.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def consensus_of_run(run_dir: str, n: int):
    """(consensus map, encode's rotations (n, 3, 3)) of a trained run."""
    import numpy as np

    from cryovae_nb.geometry import quaternion_to_matrix
    from cryovae_nb.inference import load_run
    from cryovae_nb.model.batch import Batch

    run = load_run(run_dir)
    m = run.model
    vol = m.decode(np.zeros((1, m.config.architecture.latent_dim), np.float32)).numpy()[0]
    imgs = np.asarray(run.particles.images[:n], np.float32)
    q = np.concatenate([np.asarray(m.encode(Batch(imgs[s:s + 250]))["quaternion"]) for s in range(0, n, 250)])
    return vol, quaternion_to_matrix(q)


def starting_map(spec: str, box: int, n: int, truth_rot):
    import numpy as np
    from scipy.spatial.transform import Rotation

    from cryovae_nb import refine as rf
    from cryovae_nb.synthetic import hinge_volume
    from cryovae_nb.volumes import rotate_volume

    kind, _, arg = spec.partition(":")
    if kind == "run":
        vol, rot = consensus_of_run(arg, n)
        e = rf.pose_error(rot, truth_rot)
        print(f"the run's own poses (encode): median {e['median_deg']:.1f} deg, within 10 deg "
              f"{e['frac_within_10']:.3f}", flush=True)
        return vol
    if kind == "truth":
        g = Rotation.random(random_state=1).as_matrix()
        return rf.fsc_weighted(rotate_volume(hinge_volume(box, 0.5), g), np.ones(box // 2 + 1), float(arg))
    if kind == "npz":
        return np.load(arg, allow_pickle=False)["volume"]
    raise SystemExit(f"--start: run:DIR, truth:BAND or npz:PATH, got {spec!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a quality_heterogeneity.py dataset folder")
    ap.add_argument("--start", required=True, help="run:RUN_DIR, truth:BAND or npz:PATH")
    ap.add_argument("--n", type=int, default=1500, help="particles (the first n)")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--global-iterations", type=int, default=8)
    ap.add_argument("--global-deg", type=float, default=15.0)
    ap.add_argument("--start-band", type=float, default=4.0)
    ap.add_argument("--global-band", type=float, default=6.0)
    ap.add_argument("--limit", type=int, default=0, metavar="M",
                    help="first, the search against the exact map on the first M particles")
    ap.add_argument("--write-star", default=None, help="STAR with the refined poses")
    args = ap.parse_args(argv)

    import numpy as np

    from cryovae_nb import refine as rf
    from cryovae_nb.analysis.align import align
    from cryovae_nb.io import read_particles
    from cryovae_nb.io.star import Poses, write_particles_star
    from cryovae_nb.synthetic import hinge_volume, load_truth

    data = Path(args.data)
    particles = read_particles(data / "pre" / "particles.star")
    n = min(args.n, len(particles))
    images = np.asarray(particles.images[:n], np.float32)
    box = images.shape[-1]
    truth = load_truth(data / "sim" / "truth.npz")
    T = np.asarray(truth["rotations"][:n])
    print(f"{data.name}: {n} particles, box {box}", flush=True)
    if args.limit:
        t0 = time.monotonic()
        x = rf.prepare_images(images[:args.limit])
        exact = hinge_volume(box, 0.5)
        for band in (args.start_band, 8.0, box / 2 - 1):
            R, S, _ = rf.global_search(x, exact, step_deg=args.global_deg, band=band, max_shift=3, shift_step=1)
            R, S, _ = rf.local_search(x, exact, R, S, steps_deg=(7.5, 3.75, 1.875), band=box / 2 - 1,
                                      shift_radius=1, shift_step=0.5, max_shift=3)
            e = rf.pose_error(R, T[:args.limit])
            print(f"limit ({len(x)} particles): the search against the exact map (global band {band:g}, then local to "
                  f"Nyquist): median {e['median_deg']:.1f} deg, within 10 deg {e['frac_within_10']:.3f} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
    vol = starting_map(args.start, box, n, T)
    cfg = rf.RefineConfig(iterations=args.iterations, global_iterations=args.global_iterations,
                          global_deg=args.global_deg, start_band=args.start_band, global_band=args.global_band)
    print(cfg, flush=True)

    def monitor(res):
        e = rf.pose_error(res.rotations, T)
        return {"median_deg": e["median_deg"], "within_10": e["frac_within_10"], "mirrored": int(e["mirrored"])}

    t0 = time.monotonic()
    res = rf.refine_poses(images, vol, cfg, monitor=monitor,
                          log=lambda s: print(f"[{time.monotonic() - t0:4.0f} s] {s}", flush=True))
    al = align(hinge_volume(box, 0.5), res.volume)
    print(f"refined map vs the truth (t = 0.5) after alignment: {al.correlation:.3f} "
          f"(other hand {al.correlation_other_hand:.3f}); {time.monotonic() - t0:.0f} s", flush=True)
    if args.write_star:
        write_particles_star(args.write_star, particles.subset(np.arange(n)),
                             poses=Poses.from_matrices(res.rotations, res.shifts))
        print(f"wrote {args.write_star}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
