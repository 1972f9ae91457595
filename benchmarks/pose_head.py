"""The pose head alone against the pose search at inference, on a trained ab initio run (issue #13).

A learned-pose run trains with a grid search + local refinement each step and pulls the pose head
towards the searched pose that won (``PoseConfig.distill``). At inference ``TrainedRun.encode``
can report either (``pose="head"`` / ``"search"``, ``cryovae encode --pose``). This script encodes
the run's particles both ways and prints, side by side, against the simulation's true poses:
the median angular error after the best global rotation and hand (``refine.pose_error``), the
fractions within 10 and 20 degrees, the angle between the two, the images/s of each path, and the
FSC 0.5 / 0.143 (px) against the true map of a direct Fourier reconstruction
(``refine.reconstruct``) of the images at each pose set (and at the true poses, for reference),
for all particles and for the run's held-out split. Also the run's own logged ``head_won`` (the
fraction of images whose head rotation the search kept), which ``pose="auto"`` reads.

    # a run of benchmarks/quality_lshape.py (it keeps its run folder in --workdir):
    .venv/bin/python benchmarks/quality_lshape.py --mode learned --learning-rate 1e-4 \\
        --n-particles 5000 --budget 480 --workdir /tmp/lshape
    .venv/bin/python benchmarks/pose_head.py /tmp/lshape/run_learned_...

The data set (``sim/truth.npz`` beside ``pre/particles.star``) is found from the run's config.

Measured (2 shared cores, load ~8; the L at 40 px, SNR 0.1, 5,000 random poses, lr 1e-4; all
particles / the 100 held-out): after 109 steps (8 min, model FSC 0.5 6.06 px) head median 131.8 deg,
0.1 % within 10 deg, search 104.0 deg, 3.6 %; after 340 steps (+10 min, resumed) head 131.5 deg,
0.1 % within 10, 0.4 % within 20 (chance level: the head has not learned the poses) against the
search's 75.5 deg, 20.8 %, 41.1 % (held-out: 130.2 / 75.3 deg); head vs search median 133 deg
apart; logged head_won 0.3 %; encode 2,800 vs 25 images/s; reconstruction FSC 0.5 / 0.143 at the
true poses 3.50 / 2.50 px, head 15.19 / 8.24, search 5.94 / 3.24. So the default stays "search".

The conv pose encoder against the dense one (stop 22; ``quality_lshape.py ... --budget 1500
--max-steps 200 --pose-encoder conv`` (then ``dense``), each then ``pose_head.py RUN --n 2000``;
load ~6-11): conv head 132.8 deg (chance), search 33.9, logged head_won 0.6 %, 714 vs 20 images/s;
dense head 132.1, search 21.6, head_won 0.8 %, 3,607 vs 26 images/s. Neither head is usable yet.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pose_errors(rotations, truth):
    """Per-particle angle (degrees) to the truth after `refine.pose_error`'s global alignment."""
    from cryovae_nb.refine import pose_error

    return pose_error(rotations, truth)["errors_deg"]


def map_resolution(images, rotations, shifts, truth_map) -> tuple[float, float]:
    """FSC 0.5 / 0.143 (px) against the true map of the reconstruction at these poses (either hand)."""
    from cryovae_nb.analysis.align import align
    from cryovae_nb.analysis.fsc import fsc
    from cryovae_nb.refine import prepare_images, reconstruct

    # each image minus its mean in the disc: else the disc's step reconstructs as a ball
    vol = reconstruct(prepare_images(images), rotations, shifts)
    f = fsc(align(vol, truth_map, try_mirror=True).aligned, truth_map)
    return f.resolution_05, f.resolution_0143


def timed_encode(run, particles, pose: str):
    """(Encoding, images/s) of ``run.encode(particles, pose=pose)``, after one warm-up batch."""
    run.encode(particles.subset(range(min(run.batch_size, len(particles)))), progress=False, pose=pose)
    t0 = time.perf_counter()
    enc = run.encode(particles, progress=False, pose=pose)
    return enc, len(particles) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a trained learned-pose run on simulated data")
    ap.add_argument("--data", help="the data set folder (sim/, pre/); default: from the run's config")
    ap.add_argument("--n", type=int, default=0, help="the first n particles only (0: all)")
    ap.add_argument("--no-fsc", action="store_true", help="skip the reconstructions")
    args = ap.parse_args(argv)

    import numpy as np

    from cryovae_nb.geometry import rotation_angle_deg
    from cryovae_nb.inference import AUTO_HEAD_WON, load_run
    from cryovae_nb.synthetic import lshape_volume, load_truth

    run = load_run(args.run_dir)
    data = Path(args.data) if args.data else Path(run.config.data).resolve().parent.parent
    truth = load_truth(data / "sim" / "truth.npz")
    particles = run.particles
    n = len(particles) if args.n <= 0 else min(args.n, len(particles))
    particles = particles.subset(range(n)) if n < len(particles) else particles
    T = np.asarray(truth["rotations"][:n], np.float64)
    logged = [r for r in run.folder.metrics() if r.get("split") == "train" and "head_won" in r]
    print(f"{run}: {n} particles; logged head_won (last 5 records): "
          f"{[round(r['head_won'], 3) for r in logged[-5:]]}, mean {run.head_won_fraction()}, "
          f"auto -> {run.pose_path('auto')} (threshold {AUTO_HEAD_WON})", flush=True)

    enc, speed = {}, {}
    for pose in ("head", "search"):
        enc[pose], speed[pose] = timed_encode(run, particles, pose)
        print(f"encode pose={pose}: {speed[pose]:.0f} images/s", flush=True)
    assert np.array_equal(enc["head"].z_mean, enc["search"].z_mean)  # the latents do not depend on it

    _, test = run.split()
    subsets = {"all": np.arange(n), "held-out": np.asarray(test)[np.asarray(test) < n]}
    print(f"{'subset':>9} {'pose':>6} {'n':>5} {'median_deg':>10} {'within10':>8} {'within20':>8} "
          f"{'img/s':>7}")
    for name, idx in subsets.items():
        if len(idx) == 0:
            continue
        for pose in ("head", "search"):
            err = pose_errors(enc[pose].rotations[idx], T[idx])
            print(f"{name:>9} {pose:>6} {len(idx):5d} {np.median(err):10.1f} {np.mean(err < 10):8.3f} "
                  f"{np.mean(err < 20):8.3f} {speed[pose]:7.0f}")
        between = rotation_angle_deg(enc["head"].rotations[idx], enc["search"].rotations[idx])
        print(f"{name:>9} head vs search: median {np.median(between):.1f} deg, within 10 deg "
              f"{np.mean(between < 10):.3f}, shift difference median "
              f"{np.median(np.linalg.norm(enc['head'].shifts[idx] - enc['search'].shifts[idx], axis=1)):.2f} px",
              flush=True)
    if not args.no_fsc:
        images = np.asarray(particles.images[:n], np.float32)
        truth_map = lshape_volume(run.box)
        print(f"{'poses':>8} {'FSC0.5_px':>9} {'FSC0.143_px':>11}  (direct Fourier reconstruction of all {n} images)")
        sets = {"true": (T, np.asarray(truth["shifts"][:n])),
                **{p: (enc[p].rotations, enc[p].shifts) for p in ("head", "search")}}
        for name, (rot, sh) in sets.items():
            r05, r0143 = map_resolution(images, rot, sh, truth_map)
            print(f"{name:>8} {r05:9.2f} {r0143:11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
