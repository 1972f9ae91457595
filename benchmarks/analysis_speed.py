"""Speed of the analysis package: FSC, rigid alignment (+ hand), latent embeddings and k-means.

    .venv/bin/python benchmarks/analysis_speed.py [--n-latents 100000] [--dim 21] [--skip-embed]
        [--threads N]

Prints wall and CPU seconds for:
  * fsc on 64^3, 128^3, 256^3 pairs;
  * align (both hands) of one 64^3 volume (hand-vol.mrc from ../shared/data if present, else a
    synthetic chiral object) with the rotation error it reached -- target < ~1 min on 2 cores;
  * consistent_hand on 10 volumes of 40^3, some mirrored -- target well under a minute;
  * PCA / UMAP / t-SNE (their default subsample limits) and k-means (k=5) on n x d latents.
``--threads 1`` limits BLAS/OpenMP pools (useful when the cores are shared with other jobs:
spinning threads then cost more than they give).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # umap imports TensorFlow

import numpy as np
from scipy import ndimage

from cryovae_nb.analysis.align import align, consistent_hand
from cryovae_nb.analysis.fsc import fsc
from cryovae_nb.analysis.latent import embed, kmeans, latent_statistics
from cryovae_nb.geometry import random_rotations, rotation_angle_deg
from cryovae_nb.volumes import band_limited_crop, mirror_through_plane, rotate_volume

REPO = Path(__file__).resolve().parents[1]
HAND = Path(os.environ.get("CRYOVAE_SHARED_DATA", REPO.parent / "shared" / "data")) / "hand-vol.mrc"


@contextlib.contextmanager
def timed(label: str, extra: str = ""):
    t0, c0 = time.perf_counter(), time.process_time()
    info: dict = {}
    yield info
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{label:<44} wall {wall:7.2f} s   cpu {cpu:7.2f} s   {info.get('note', extra)}",
          flush=True)


def chiral(n: int) -> np.ndarray:
    v = np.zeros((n, n, n), np.float32)
    c = n // 2
    for axis, length in ((0, n // 3), (1, n // 5), (2, n // 8)):
        for t in range(length + 1):
            p = np.array([c - 4, c - 3, c - 2])
            p[axis] += t
            v[p[2], p[1], p[0]] = 1.0
    return ndimage.gaussian_filter(v, 1.0)


def load_reference() -> tuple[np.ndarray, str]:
    if HAND.exists():
        from cryovae_nb.io import read_volume

        return read_volume(HAND)[0], "hand-vol.mrc"
    return chiral(64), "synthetic chiral object"


def bench_fsc() -> None:
    rng = np.random.default_rng(0)
    for n in (64, 128, 256):
        a = rng.standard_normal((n, n, n), dtype=np.float32)
        b = a + rng.standard_normal((n, n, n), dtype=np.float32)
        fsc(a[:8, :8, :8], b[:8, :8, :8])  # warm-up
        with timed(f"fsc {n}^3 (soft sphere mask)") as info:
            r = fsc(a, b, pixel_size=1.0, mask="sphere")
            info["note"] = f"FSC(0.143) at {r.resolution_0143:.2f} Å"


def bench_align() -> None:
    ref, name = load_reference()
    rng = np.random.default_rng(1)
    Rt = random_rotations(1, rng)[0]
    target = rotate_volume(mirror_through_plane(ref), Rt, (2.0, -1.0, 1.5))
    M = np.diag([1.0, 1.0, -1.0])
    with timed(f"align 64^3 {name}, mirrored, both hands") as info:
        res = align(target, ref)
        err = rotation_angle_deg(res.rotation, (M @ Rt @ M).T)
        info["note"] = (f"mirrored={res.mirrored} error {err:.2f} deg corr {res.correlation:.3f} "
                        f"(other hand {res.correlation_other_hand:.3f})")

    small = band_limited_crop(ref, 40)
    truth = np.arange(10) % 3 == 1
    vols = np.stack([rotate_volume(mirror_through_plane(small) if m else small, R,
                                   rng.uniform(-2, 2, 3))
                     for m, R in zip(truth, random_rotations(10, rng))])
    with timed("consistent_hand 10 x 40^3 (with reference)") as info:
        _, flipped = consistent_hand(vols, reference=small)
        info["note"] = f"hands right: {int((flipped == truth).sum())}/10"


def bench_embed(n: int, d: int) -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=3.0, size=(5, d))
    z = (centres[rng.integers(0, 5, n)] + rng.normal(size=(n, d))).astype(np.float32)
    with timed(f"latent_statistics {n} x {d}"):
        latent_statistics(z)
    with timed(f"kmeans k=5 {n} x {d}"):
        kmeans(z, 5)
    for method in ("pca", "umap", "tsne"):
        with timed(f"embed {method} {n} x {d}") as info, warnings.catch_warnings(record=True):
            e = embed(z, method)
            info["note"] = e.note


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-latents", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=21)
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    limit = contextlib.nullcontext()
    if args.threads:
        import sklearn.manifold  # noqa: F401  (load its OpenMP runtime so the limit reaches it)
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(args.threads)
    with limit:
        bench_fsc()
        bench_align()
        if not args.skip_embed:
            bench_embed(args.n_latents, args.dim)


if __name__ == "__main__":
    main()
