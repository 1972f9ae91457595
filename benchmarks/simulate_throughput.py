"""Synthetic-data throughput: the reference projector alone, and a whole simulation to disk.

    python benchmarks/simulate_throughput.py [--box 40] [-n 5000]

Prints images/s for (1) ``projection.project_reference`` on the L-shape at random poses, against a plain
full-grid ``scipy.ndimage.map_coordinates`` projection measured in the same run (the ratio is the
figure that matters on a shared machine), and (2) ``synthetic.simulate`` writing stack + STAR +
truth at SNR 0.1 with shifts, plus peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np
from scipy import ndimage

from cryovae_nb import geometry
from cryovae_nb.projection import project_reference
from cryovae_nb.synthetic import SimulationConfig, lshape_volume, simulate


def naive_project(volume, rotations):
    n = volume.shape[0]
    c = geometry.centred_coords(n)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x.ravel(), y.ravel(), z.ravel()])
    out = np.empty((len(rotations), n, n), np.float32)
    for i, R in enumerate(rotations):
        xyz = R @ r + n // 2
        vals = ndimage.map_coordinates(volume, xyz[::-1], order=1, mode="constant", cval=0.0)
        out[i] = vals.reshape(n, n, n).sum(axis=0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", type=int, default=40)
    ap.add_argument("-n", type=int, default=5000, help="images in the whole-simulation run")
    ap.add_argument("--k", type=int, default=300, help="projections per timing round")
    args = ap.parse_args(argv)

    vol = lshape_volume(args.box)
    rots = geometry.random_rotations(args.k, np.random.default_rng(0))
    fast, slow = [], []
    for _ in range(3):  # interleaved rounds: both see the same machine load
        t = time.perf_counter(); a = project_reference(vol, rots); fast.append(time.perf_counter() - t)
        t = time.perf_counter(); b = naive_project(vol, rots); slow.append(time.perf_counter() - t)
    err = np.linalg.norm(a - b) / np.linalg.norm(b)
    f, s = args.k / np.median(fast), args.k / np.median(slow)
    print(f"projection.project_reference: {f:8.0f} images/s (box {args.box})")
    print(f"full-grid map_coordinates: {s:8.0f} images/s   ratio {f / s:.2f}x   (rel. difference {err:.1e})")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SimulationConfig(phantom="lshape", box=args.box, n_particles=args.n, snr=0.1, shift_std_px=1.0)
        t = time.perf_counter()
        simulate(cfg, tmp, progress=False)
        dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"simulate (stack+STAR+truth): {args.n / dt:8.0f} images/s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
