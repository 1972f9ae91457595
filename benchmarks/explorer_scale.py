"""What the latent explorer costs at real-data size (issue #14): embedding N latents and finding a
path through them, wall time, one run each.

Latents: ``--dim``-dimensional, a continuous curved motion (a half circle in two dimensions, as a
hinge's angle would be) plus blobs (discrete states) and noise, seeded. For each N:

- ``umap`` / ``tsne``: ``analysis.latent.embed`` with its defaults: fitted on a seeded sample of
  ``MAX_POINTS[method]`` (or ``--fit-points``), every other point placed by its nearest sampled
  neighbours; split into the fit and the placement;
- ``path``: ``analysis.paths.graph_path`` between the motion's two ends (the k-NN graph of all N
  latents and its shortest path), resampled to 10 latents;
- ``umap transform`` (once, ``--transform-points`` points): umap's own placement, the
  alternative to the kNN one, measured to show why it is not the default.

    python benchmarks/explorer_scale.py [--sizes 10000 100000 1000000] [--methods umap tsne]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from cryovae_nb.analysis import latent, paths


def make_latents(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, int, int]:
    """(latents, the motion's two end rows): 70% on a half circle, 20% in two blobs, 10% noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=0.05, size=(n, d))
    m, b = int(0.7 * n), int(0.2 * n)
    a = rng.uniform(0, np.pi, m)
    z[:m, 0] += np.cos(a)
    z[:m, 1] += np.sin(a)
    z[m:m + b, 2] += np.where(rng.random(b) < 0.5, 2.0, -2.0)
    z[m + b:, :3] = rng.uniform(-2, 2, (n - m - b, 3))
    return z.astype(np.float32), int(np.argmin(a)), int(np.argmax(a))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--methods", nargs="+", default=["umap", "tsne"])
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--fit-points", type=int, default=None, help="default: MAX_POINTS[method]")
    ap.add_argument("--transform-points", type=int, default=2000)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    # import umap and compile its numba code once, outside the figures: above 4096 points umap
    # switches to nn-descent, compiled on first use (~80 s here when it fell in the first row)
    small, _, _ = make_latents(4500, args.dim)
    _, warm = timed(lambda: [latent.embed(small, m, fit_points=4200 if m == "umap" else 200)
                             for m in args.methods])
    print(f"warm-up (imports, numba compilation): {warm:.1f} s")
    print(f"{'N':>9} {'what':<8} {'fit on':>7} {'fit s':>7} {'place s':>8} {'total s':>8}")
    for n in args.sizes:
        z, start, end = make_latents(n, args.dim)
        for method in args.methods:
            fit_n = min(n, args.fit_points or latent.MAX_POINTS[method])
            fit = latent.sample_rows(n, fit_n, 0)
            sample, t_fit = timed(lambda: latent.embed(z[fit], method, seed=0, fit_points=fit_n))
            _, t_place = timed(lambda: latent.place_by_neighbours(z[fit], sample.coords, z))
            print(f"{n:>9} {method:<8} {fit_n:>7} {t_fit:>7.1f} {t_place:>8.1f} {t_fit + t_place:>8.1f}")
        path, t_path = timed(lambda: paths.graph_path(z, start, end, steps=10))
        print(f"{n:>9} {'path':<8} {'':>7} {'':>7} {'':>8} {t_path:>8.1f}   "
              f"({len(path.particles)} particles, length {path.length:.2f}; the chord is "
              f"{np.linalg.norm(z[start] - z[end]):.2f})")

    z, _, _ = make_latents(args.transform_points + 2000, args.dim)
    _, t_fit = timed(lambda: latent.embed(z[:2000], "umap", seed=0))
    _, t_all = timed(lambda: latent.embed(z, "umap", seed=0, fit_points=2000, place="transform"))
    print(f"umap transform of {args.transform_points} points (fitted on 2000): {t_all - t_fit:.1f} s "
          f"({t_all:.1f} s with the fit, {t_fit:.1f} s the fit alone)")


if __name__ == "__main__":
    main()
