"""Training throughput of the VAE with the fast (Fourier) and reference (real-space) projectors.

Prints images/s for each projector measured in the same run (alternating rounds, medians) and their
ratios, the peak RSS, and inference throughput (encode images/s, decode volumes/s). ``--accuracy``
first prints the projectors' relative L2 error against exact (analytic) projections of smooth
masked volumes and against the real-space reference, for several Fourier kernels and paddings.
Target (issue): >= 500 training images/s with the fast projector on 2 CPU cores, box 40, batch 120.

    .venv/bin/python benchmarks/train_throughput.py [--box 40 --batch 120 --rounds 3 --steps 5]
        [--projectors fourier,fourier+search,real] [--accuracy] [--cli-steps 200]

``--cli-steps N`` (0: off) also runs ``cryovae train`` with TrainConfig's defaults as a subprocess on a
simulated, preprocessed stack of the same box and pose mode, between two halves of the bare steps'
rounds, and prints its images/s beside the bare compiled step of the same model: the steady rate
(from the first to the last log record: loading, the step, logging, held-out evaluation and its
search) and the whole command's (start-up, compiling, the final checkpoint included).

A projector is ``real``, ``fourier`` (the configured default kernel) or ``fourier:W`` (kernel
width W: 2 = trilinear, 3..6 = Kaiser-Bessel); these time the thesis' step (pose head alone). A
``+search`` suffix (``fourier+search``) adds the global pose search that learned-pose training
does by default (ModelConfig.pose_search_deg = 15), so its cost is measured in the same run;
``+search=fourier`` / ``+search=real_space`` pick how it scores candidates
(``ModelConfig.pose.search_scoring``), so the two searches are timed side by side; a further
``+local`` times the step between a particle's global searches (``PoseConfig.global_every``: the
search refines a cached pose locally):

    .venv/bin/python benchmarks/train_throughput.py --projectors fourier+search=real_space,fourier+search=fourier
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def accuracy_table(n: int, count: int = 8, seed: int = 0) -> None:
    """Relative L2 errors of the projectors on Gaussian-blob volumes (masked at 0.95) at random
    poses and shifts, against the exact line integrals of the blobs and against project_real."""
    import numpy as np

    from cryovae_nb.geometry import random_rotations
    from cryovae_nb.model import project_fourier, project_real
    from cryovae_nb.volumes import diameter_mask

    rng = np.random.default_rng(seed)
    sigma, c = 2.0, np.arange(n) - n // 2
    centres = rng.uniform(-0.2 * n, 0.2 * n, (count, 5, 3))
    amps = rng.uniform(0.5, 1.5, (count, 5))
    R, s = random_rotations(count, rng), rng.uniform(-3, 3, (count, 2))
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    yi, xi = np.meshgrid(c, c, indexing="ij")
    vols, truth = np.zeros((count, n, n, n)), np.zeros((count, n, n))
    for b in range(count):
        for p, a in zip(centres[b], amps[b]):
            vols[b] += a * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2 + (zz - p[2]) ** 2) / (2 * sigma**2))
            r = R[b].T @ p  # a blob at p appears at R^T p + s
            truth[b] += a * np.sqrt(2 * np.pi) * sigma * np.exp(
                -((xi - s[b, 0] - r[0]) ** 2 + (yi - s[b, 1] - r[1]) ** 2) / (2 * sigma**2))
    vols = (vols * diameter_mask(n, 0.95, ndim=3)).astype(np.float32)
    Rf, sf = R.astype(np.float32), s.astype(np.float32)

    def rel(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    real = project_real(vols, Rf, sf).numpy()
    print(f"projector accuracy, box {n}, {count} volumes (relative L2 error vs exact / vs reference):")
    print(f"  real (reference)          {rel(real, truth):7.2%}")
    for width, pad in ((2, 1.0), (2, 1.5), (2, 2.0), (3, 1.0), (4, 1.0), (5, 1.0)):
        fast = project_fourier(vols, Rf, sf, width=width, pad=pad).numpy()
        name = "trilinear" if width == 2 else f"Kaiser-Bessel {width}"
        print(f"  fourier {name:16s} pad {pad:3.1f}: {rel(fast, truth):7.2%} / {rel(fast, real):7.2%}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--box", type=int, default=40)
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--latent", type=int, default=21)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per projector")
    ap.add_argument("--threads", type=int, default=None, help="TF intra-op threads (default: all cores)")
    ap.add_argument("--no-jit", action="store_true", help="disable XLA compilation")
    ap.add_argument("--projectors", default="fourier,fourier+search,real",
                    help="comma-separated: real, fourier (default kernel) or fourier:WIDTH, each optionally +search")
    ap.add_argument("--decoder", default="dense", help="ModelConfig decoder (model/decoders.py's DECODERS)")
    ap.add_argument("--pad", type=float, default=1.0, help="fourier_pad of the fast projector")
    ap.add_argument("--accuracy", action="store_true", help="print the projectors' accuracy first")
    ap.add_argument("--pose-mode", default="learned", choices=["learned", "known"])
    ap.add_argument("--cli-steps", type=int, default=0,
                    help="also time `cryovae train` (defaults) end to end for this many steps (0: off)")
    ap.add_argument("--cli-before", action="store_true",
                    help="with --cli-steps: also time the command with the defaults before issue #13 (jit off)")
    args = ap.parse_args(argv)

    from cryovae_nb.training.steps import configure_threads

    configure_threads(args.threads, 1)
    import numpy as np
    import tensorflow as tf

    from cryovae_nb.geometry import matrix_to_quaternion, random_rotations
    from cryovae_nb.model import ModelConfig, build_model
    from cryovae_nb.model.batch import Batch
    from cryovae_nb.training.steps import make_train_step

    rng = np.random.default_rng(0)
    n, b = args.box, args.batch
    images = tf.constant(rng.uniform(0, 1, (b, n, n)).astype(np.float32))
    rot = tf.constant(random_rotations(b, rng).astype(np.float32)) if args.pose_mode == "known" else None
    shifts = tf.zeros((b, 2)) if args.pose_mode == "known" else None
    batch = Batch(images, rot, shifts, indices=np.arange(b))  # what the Trainer's loader hands over
    jit = not args.no_jit
    gpus = tf.config.list_physical_devices("GPU")
    print(f"box {n}, batch {b}, latent {args.latent}, decoder {args.decoder}, jit {jit}, pose {args.pose_mode}, "
          f"cores {os.cpu_count()}, GPUs {len(gpus)}, TF {tf.__version__}")
    if args.accuracy:
        accuracy_table(n)

    steps, rates, rss, starts = {}, {}, {}, {}
    for name in args.projectors.split(","):
        # "+local": the step between global searches (PoseConfig.global_every), each image's search
        # starting at a cached rotation (random here: the cost does not depend on it)
        local = name.endswith("+local")
        spec, plus, scoring = name.removesuffix("+local").partition("+search")
        kind, _, width = spec.partition(":")
        extra = {"fourier_kernel_width": int(width)} if width else {}
        if not plus:  # the thesis' step; "+search" keeps the config's default search
            extra["pose_search_deg"] = None
        if scoring:  # "+search=fourier": the search scoring candidates so (ModelConfig.pose.search_scoring)
            extra["pose_search_scoring"] = scoring.lstrip("=")
        cfg = ModelConfig().with_options(box=n, latent_dim=args.latent, projector=kind, decoder=args.decoder,
                                         fourier_pad=args.pad, pose_mode=args.pose_mode, **extra)
        model = build_model(cfg)
        step = make_train_step(model, jit=jit)
        starts[name] = (tf.constant(matrix_to_quaternion(random_rotations(b, rng)).astype(np.float32))
                        if local else None)
        t = time.perf_counter()
        out = step(batch, seed=[0, 0], start=starts[name])
        float(out["total"])
        print(f"{name:24s} compile + first step {time.perf_counter() - t:.1f} s")
        steps[name], rates[name] = step, []
        rss[name] = peak_rss_mib()

    cli = {}
    for r in range(args.rounds):  # alternate, so both projectors see the same machine load
        if args.cli_steps and r == args.rounds // 2:  # the commands between the two halves of the rounds
            cli["defaults"] = time_cli(args)
            if args.cli_before:
                cli["jit off (before #13)"] = time_cli(args, jit=False)
        for name, step in steps.items():
            t = time.perf_counter()
            for i in range(args.steps):
                out = step(batch, seed=[r, i], start=starts[name])
            float(out["total"])  # wait for the last step
            rates[name].append(args.steps * b / (time.perf_counter() - t))

    print("\ntraining throughput (median of rounds):")
    for name, rs in rates.items():
        print(f"  {name:24s} {statistics.median(rs):8.1f} images/s   rounds: "
              + " ".join(f"{x:.0f}" for x in rs) + f"   peak RSS after its first step {rss[name]:.0f} MiB")
    names = list(rates)
    for other in names[1:]:  # ratios per round: both saw the same machine load
        per_round = [f / r for f, r in zip(rates[names[0]], rates[other])]
        print(f"  {names[0]} / {other}: {statistics.median(per_round):.2f}x  (per round: "
              + " ".join(f"{x:.2f}" for x in per_round) + ")")
    print(f"peak RSS (whole run): {peak_rss_mib():.0f} MiB")
    # the bare step of the model the command trains: the search's row for learned poses
    same = next((k for k in rates if ("+search" in k) == (args.pose_mode == "learned")
                 and k.startswith("fourier")), None)
    for label, c in cli.items():
        print(f"\n`cryovae train`, {label} (box {n}, batch {b}, {args.pose_mode} poses, {c['steps']} steps):")
        print(f"  steady (log records {c['first']}..{c['last']} steps: loading, step, logging, "
              f"evaluation) {c['steady']:8.1f} images/s")
        print(f"  whole command ({c['wall_s']:.0f} s: start-up and compiling {c['startup_s']:.0f} s, "
              f"final checkpoint) {c['whole']:8.1f} images/s")
        if same is not None:
            bare = statistics.median(rates[same])
            print(f"  steady / bare {same} step: {c['steady'] / bare:.2f}   whole / bare: "
                  f"{c['whole'] / bare:.2f}   (target: steady >= 0.85)")

    # inference: encode images, decode volumes (batch b, compiled)
    model = build_model(ModelConfig().with_options(box=n, latent_dim=args.latent, decoder=args.decoder,
                                                   pose_search_deg=None))
    searching = build_model(ModelConfig().with_options(box=n, latent_dim=args.latent, decoder=args.decoder))
    enc = tf.function(lambda x: model.encode(Batch(x))["z_mean"], jit_compile=jit)
    enc_search = tf.function(lambda x: searching.encode(Batch(x))["quaternion"], jit_compile=jit)
    dec = tf.function(lambda z: model.decode(z), jit_compile=jit)
    z = tf.constant(rng.standard_normal((b, args.latent)).astype(np.float32))
    for name, fn, arg in (("encode", enc, images), ("encode + pose search", enc_search, images),
                          ("decode", dec, z)):
        fn(arg).numpy()
        t = time.perf_counter()
        reps = 4 * args.steps
        for _ in range(reps):
            res = fn(arg)
        res.numpy()
        unit = "volumes/s" if name == "decode" else "images/s"
        print(f"inference {name}: {reps * b / (time.perf_counter() - t):.0f} {unit}")


def time_cli(args, **options) -> dict:
    """``cryovae train`` with TrainConfig's defaults (but the batch, the latent size and the pose
    mode of the bare step, and ``options``) on a simulated stack, run as a user runs it; its
    rates from its log."""
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.config import save_config
    from cryovae_nb.training.rundir import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = simulate(SimulationConfig(box=args.box, n_particles=2000, snr=1.0, seed=0), tmp / "sim", progress=False)
        preprocess_stack(ds.star, tmp / "pre" / "particles", PreprocessConfig(), progress=False)
        cfg = TrainConfig(data=str(tmp / "pre" / "particles.star"), run_dir=str(tmp / "run"),
                          model=ModelConfig().with_options(box=args.box, latent_dim=args.latent,
                                                           pose_mode=args.pose_mode, decoder=args.decoder),
                          batch_size=args.batch, max_steps=args.cli_steps, **options)
        save_config(cfg, tmp / "train.json")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "train", "--config", str(tmp / "train.json"),
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        wall = time.perf_counter() - t
        train = [r for r in read_metrics(tmp / "run") if r["split"] == "train"]
    if len(train) < 3:
        sys.exit(f"--cli-steps {args.cli_steps}: need at least three log records (log_every "
                 f"{TrainConfig.log_every})")
    # from the second record: the first interval holds the step's compiling, the first
    # evaluation (just after the first record) the evaluation's
    first, last = train[1], train[-1]
    steady = (last["step"] - first["step"]) * args.batch / (last["time"] - first["time"])
    # start-up: until the second record, less those steps at the steady rate
    startup = first["time"] - first["step"] * args.batch / steady
    return {"steps": args.cli_steps, "first": first["step"], "last": last["step"], "steady": steady,
            "whole": args.cli_steps * args.batch / wall, "wall_s": wall,
            "startup_s": startup + (wall - last["time"])}


if __name__ == "__main__":
    main()
