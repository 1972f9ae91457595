"""Training throughput of the VAE with the fast (Fourier) and reference (real-space) projectors.

Prints images/s for both projectors measured in the same run (alternating rounds, medians) and their
ratio, the peak RSS, and inference throughput (encode images/s, decode volumes/s).
Target (issue): >= 500 training images/s with the fast projector on 2 CPU cores, box 40, batch 120.

    .venv/bin/python benchmarks/train_throughput.py [--box 40 --batch 120 --rounds 3 --steps 5]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--box", type=int, default=40)
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--latent", type=int, default=21)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per projector")
    ap.add_argument("--threads", type=int, default=None, help="TF intra-op threads (default: all cores)")
    ap.add_argument("--no-jit", action="store_true", help="disable XLA compilation")
    ap.add_argument("--projectors", default="fourier,real")
    ap.add_argument("--pad", type=float, default=1.0, help="fourier_pad of the fast projector")
    ap.add_argument("--pose-mode", default="learned", choices=["learned", "known"])
    args = ap.parse_args(argv)

    from cryovae_nb.model import configure_threads

    configure_threads(args.threads, 1)
    import numpy as np
    import tensorflow as tf

    from cryovae_nb.geometry import random_rotations
    from cryovae_nb.model import ModelConfig, build_model, make_train_step

    rng = np.random.default_rng(0)
    n, b = args.box, args.batch
    images = tf.constant(rng.uniform(0, 1, (b, n, n)).astype(np.float32))
    rot = tf.constant(random_rotations(b, rng).astype(np.float32)) if args.pose_mode == "known" else None
    shifts = tf.zeros((b, 2)) if args.pose_mode == "known" else None
    jit = not args.no_jit
    print(f"box {n}, batch {b}, latent {args.latent}, jit {jit}, pose {args.pose_mode}, "
          f"cores {os.cpu_count()}, TF {tf.__version__}")

    steps, rates, rss = {}, {}, {}
    for name in args.projectors.split(","):
        cfg = ModelConfig(box=n, latent_dim=args.latent, batch_size=b, projector=name,
                          fourier_pad=args.pad, pose_mode=args.pose_mode)
        model = build_model(cfg)
        step = make_train_step(model, jit=jit)
        t = time.perf_counter()
        out = step(images, rot, shifts, seed=[0, 0])
        float(out["total"])
        print(f"{name:8s} compile + first step {time.perf_counter() - t:.1f} s")
        steps[name], rates[name] = step, []
        rss[name] = peak_rss_mib()

    for r in range(args.rounds):  # alternate, so both projectors see the same machine load
        for name, step in steps.items():
            t = time.perf_counter()
            for i in range(args.steps):
                out = step(images, rot, shifts, seed=[r, i])
            float(out["total"])  # wait for the last step
            rates[name].append(args.steps * b / (time.perf_counter() - t))

    print("\ntraining throughput (median of rounds):")
    for name, rs in rates.items():
        print(f"  {name:8s} {statistics.median(rs):8.1f} images/s   rounds: "
              + " ".join(f"{x:.0f}" for x in rs) + f"   peak RSS after its first step {rss[name]:.0f} MiB")
    if "fourier" in rates and "real" in rates:
        ratio = statistics.median(rates["fourier"]) / statistics.median(rates["real"])
        per_round = [f / r for f, r in zip(rates["fourier"], rates["real"])]
        print(f"  speed-up fourier / real: {ratio:.1f}x  (per round: "
              + " ".join(f"{x:.1f}" for x in per_round) + ")")
    print(f"peak RSS (whole run): {peak_rss_mib():.0f} MiB")

    # inference: encode images, decode volumes (batch b, compiled)
    model = build_model(ModelConfig(box=n, latent_dim=args.latent))
    enc = tf.function(lambda x: model.encode(x)["z_mean"], jit_compile=jit)
    dec = tf.function(lambda z: model.decode(z), jit_compile=jit)
    z = tf.constant(rng.standard_normal((b, args.latent)).astype(np.float32))
    for name, fn, arg in (("encode", enc, images), ("decode", dec, z)):
        fn(arg).numpy()
        t = time.perf_counter()
        reps = 4 * args.steps
        for _ in range(reps):
            res = fn(arg)
        res.numpy()
        unit = "images/s" if name == "encode" else "volumes/s"
        print(f"inference {name}: {reps * b / (time.perf_counter() - t):.0f} {unit}")


if __name__ == "__main__":
    main()
