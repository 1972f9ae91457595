"""The decoders side by side: size, memory, speed and reconstruction quality at 40, 64 and 128 px.

``throughput``: for each decoder and box, in a fresh process each (so peak RSS is that config's):
the decoder's weights, the training step's images/s (known poses, linearised latents, the default
model otherwise), the decoder alone (forward + backward, ms per volume), peak RSS at two batch
sizes and from them the memory per image (the difference over the extra images).

``quality``: the L-shape simulated at ``--box`` with random known poses, trained for ``--budget``
seconds with each decoder (same data, same seed), then FSC 0.5 / 0.143 in Å of 10 held-out
particles' decoded volumes against the truth (benchmarks/quality_lshape.py's evaluation).

``resolution``: the L-shape simulated at ``--box`` (1 Å/px, edges blurred by 0.6 px: detail to
Nyquist), preprocessed twice, at full size and Fourier-cropped to half the box (2 Å/px, Nyquist
4 Å); one decoder (``--decoder``) trained on each for ``--budget`` seconds, both runs at once in
two processes (so the machine's load hits both alike), each printing its FSC every
``--eval-every`` training seconds (so a plateau shows); FSC in Å against the truth (Fourier-cropped
to the same grid). Shows what a larger box buys beyond the smaller one's Nyquist.

    nice .venv/bin/python benchmarks/decoders.py throughput --boxes 40,64,128 --batch 8
    nice .venv/bin/python benchmarks/decoders.py quality --box 64 --budget 240
    nice .venv/bin/python benchmarks/decoders.py resolution --box 64 --snr 0.1 --budget 1500 \
        --eval-every 500 --learning-rate 1e-5 --latent-dim 2
    nice .venv/bin/python benchmarks/decoders.py resolution --box 128 --snr 0.1 --n-particles 3000 \
        --budget 2700 --eval-every 900 --learning-rate 3e-6 --learning-rate-small 1e-5 --latent-dim 2

(``resolution`` at 3e-5 left the 64 px map behind the 32 px one at FSC 0.5: Adam's per-voxel
fluctuation, README "Why the 64 px map trailed at FSC 0.5".)

Run uncompiled (``TrainConfig.jit`` False, ``--jit`` to change): on a CPU, XLA compiles 3D
convolutions to a naive loop (the conv decoder's step is 10-170x slower; see decoders.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(box: int, decoder: str, batch: int, steps: int, jit: bool) -> dict:
    """One config's figures, in this process (``throughput`` runs it in a fresh one)."""
    import numpy as np
    import tensorflow as tf

    from cryovae_nb.geometry import random_rotations
    from cryovae_nb.model import ModelConfig, build_model
    from cryovae_nb.model.batch import Batch
    from cryovae_nb.training.steps import make_train_step

    rng = np.random.default_rng(0)
    cfg = ModelConfig().with_options(box=box, decoder=decoder, pose_mode="known")
    t = time.perf_counter()
    model = build_model(cfg)
    build_s = time.perf_counter() - t
    weights = int(sum(np.prod(v.shape) for v in model.decoder.trainable_variables))
    images = tf.constant(rng.uniform(0, 1, (batch, box, box)).astype(np.float32))
    rot = tf.constant(random_rotations(batch, rng).astype(np.float32))
    data = Batch(images, rot, tf.zeros((batch, 2)), indices=np.arange(batch))
    step = make_train_step(model, jit=jit)
    t = time.perf_counter()
    float(step(data, seed=[0, 0])["total"])
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(steps):
        out = step(data, seed=[1, i])
    float(out["total"])
    rate = steps * batch / (time.perf_counter() - t)
    rss = peak_rss_mib()
    # the decoder alone: forward and backward of `batch` volumes
    z = tf.constant(rng.standard_normal((batch, cfg.architecture.latent_dim)).astype(np.float32))

    @tf.function(jit_compile=jit)
    def fwd_bwd(z):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model.decoder(z, training=True)))
        return tape.gradient(loss, model.decoder.trainable_variables)

    fwd_bwd(z)
    t = time.perf_counter()
    for _ in range(steps):
        grads = fwd_bwd(z)
    float(tf.reduce_sum(grads[-1]))
    decoder_ms = 1000 * (time.perf_counter() - t) / (steps * batch)
    return {"box": box, "decoder": decoder, "batch": batch, "weights": weights, "build_s": build_s,
            "first_step_s": first_s, "images_per_s": rate, "decoder_ms_per_volume": decoder_ms,
            "peak_rss_mib": rss}


def throughput(args) -> None:
    rows = []
    for box in [int(b) for b in args.boxes.split(",")]:
        for decoder in args.decoders.split(","):
            res = {}
            for batch in (args.batch // 2, args.batch):
                cmd = [sys.executable, __file__, "one", "--box", str(box), "--decoder", decoder,
                       "--batch", str(batch), "--steps", str(args.steps)] + (["--jit"] if args.jit else [])
                t = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                    res[batch] = {"error": f"exit {proc.returncode} after {time.perf_counter() - t:.0f} s: {tail}"}
                    print(f"box {box} {decoder} batch {batch}: {res[batch]['error']}", flush=True)
                    break
                res[batch] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(json.dumps(res[batch]), flush=True)
            rows.append((box, decoder, res))
    print(f"\nknown poses, linearised latents (latent 8), jit {args.jit}, {os.cpu_count()} cores; "
          f"images/s and decoder ms at batch {args.batch}; memory per image = (peak RSS at batch "
          f"{args.batch} - at {args.batch // 2}) / {args.batch - args.batch // 2}")
    print(f"{'box':>4} {'decoder':>7} {'weights':>11} {'images/s':>9} {'dec ms/vol':>10} "
          f"{'peak RSS MiB':>12} {'MiB/image':>9}")
    for box, decoder, res in rows:
        full, half = res.get(args.batch, {}), res.get(args.batch // 2, {})
        if "images_per_s" not in full:
            err = full.get("error") or half.get("error")
            print(f"{box:4d} {decoder:>7} {'-':>11} did not run: {err}")
            continue
        per_image = (full["peak_rss_mib"] - half["peak_rss_mib"]) / (args.batch - args.batch // 2)
        print(f"{box:4d} {decoder:>7} {full['weights']:11,d} {full['images_per_s']:9.1f} "
              f"{full['decoder_ms_per_volume']:10.1f} {full['peak_rss_mib']:12.0f} {per_image:9.1f}")


def simulate_lshape(workdir: Path, box: int, n: int, snr: float, crops: tuple[int, ...]) -> dict:
    """The L at ``box`` (1 Å/px), random poses, cached in ``workdir``; preprocessed at each of
    ``crops`` (Fourier-cropped when smaller than ``box``) -> {crop: STAR file}."""
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate

    out = workdir / f"lshape_b{box}_n{n}_snr{snr}"
    sim_star = out / "sim" / "particles.star"
    if not sim_star.exists():
        t = time.monotonic()
        simulate(SimulationConfig(box=box, n_particles=n, snr=snr, seed=0), out / "sim", progress=False)
        print(f"simulated {n} images of {box} px in {time.monotonic() - t:.0f} s", flush=True)
    stars = {}
    for crop in crops:
        star = out / f"pre{crop}" / "particles.star"
        if not star.exists():
            preprocess_stack(sim_star, out / f"pre{crop}" / "particles",
                             PreprocessConfig(box=None if crop == box else crop, spread=0.3,
                                              mask_diameter=0.95), progress=False)
        stars[crop] = star
    return stars


def train_and_score(star: Path, box: int, pixel: float, truth, decoder: str, budget: float,
                    batch: int, jit: bool | None, run_dir: Path, learning_rate: float | None = None,
                    latent_dim: int | None = None, eval_every: float | None = None) -> dict:
    """Train with known poses for ``budget`` s; FSC (Å) of 10 held-out decoded volumes vs ``truth``,
    also every ``eval_every`` s of training (printed as JSON lines, so a plateau shows)."""
    from quality_lshape import evaluate  # the L-shape benchmark's evaluation: align, FSC

    from cryovae_nb.model import ModelConfig
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    model = ModelConfig().with_options(box=box, decoder=decoder, pose_mode="known")
    if latent_dim is not None:
        model = model.with_options(latent_dim=latent_dim)
    chunk = min(eval_every or budget, budget)
    cfg = TrainConfig(data=str(star), run_dir=str(run_dir), model=model, batch_size=batch,
                      max_steps=10**9, max_time_s=chunk, log_every=10**6, sample_every=10**9,
                      checkpoint_every=10**9, keep_checkpoints=1, test_fraction=0.05, n_test_eval=0,
                      seed=0, jit=jit)
    if learning_rate is not None:
        cfg = dataclasses.replace(cfg, learning_rate=learning_rate)
    trainer = Trainer(cfg, progress=False)
    dt, curve = 0.0, []
    while not curve or dt < budget - 1:  # each train() runs `chunk` more seconds (and checkpoints); once at least
        t = time.monotonic()
        trainer.train()
        dt += time.monotonic() - t
        score = evaluate(trainer, truth, trainer.test_indices[:10], pixel)
        curve.append((round(dt), trainer.step, score["fsc05_px"] * pixel, score["fsc0143_px"] * pixel))
        if eval_every:
            print(json.dumps({"decoder": decoder, "box": box, "learning_rate": trainer.config.learning_rate,
                              "train_s": curve[-1][0], "steps": trainer.step,
                              "fsc05_A": round(curve[-1][2], 2), "fsc0143_A": round(curve[-1][3], 2)}), flush=True)
    return {"decoder": decoder, "box": box, "pixel_A": pixel, "train_s": round(dt), "steps": trainer.step,
            "images_seen": trainer.step * batch, "images_per_s": trainer.step * batch / dt,
            "fsc05_A": score["fsc05_px"] * pixel, "fsc0143_A": score["fsc0143_px"] * pixel,
            "best05_A": score["best05_px"] * pixel, "correlation": score["correlation"], "curve": curve}


def print_scores(rows) -> None:
    print(f"{'decoder':>7} {'box':>4} {'Å/px':>5} {'train s':>7} {'steps':>6} {'images':>7} {'img/s':>6} "
          f"{'FSC0.5 Å':>8} {'FSC0.143 Å':>10} {'corr':>5}")
    for r in rows:
        print(f"{r['decoder']:>7} {r['box']:4d} {r['pixel_A']:5.1f} {r['train_s']:7d} {r['steps']:6d} "
              f"{r['images_seen']:7d} {r['images_per_s']:6.1f} {r['fsc05_A']:8.2f} {r['fsc0143_A']:10.2f} "
              f"{r['correlation']:5.2f}", flush=True)


def quality(args) -> None:
    from cryovae_nb.synthetic import lshape_volume

    workdir = Path(args.workdir)
    star = simulate_lshape(workdir, args.box, args.n_particles, args.snr, (args.box,))[args.box]
    truth = lshape_volume(args.box)
    rows = []
    for decoder in args.decoders.split(","):
        rows.append(train_and_score(star, args.box, 1.0, truth, decoder, args.budget, args.batch_size,
                                    args.jit, workdir / f"run_{decoder}_{args.box}_{int(time.time())}",
                                    args.learning_rate))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nL-shape, {args.n_particles} images, SNR {args.snr}, known poses, {args.budget:.0f} s each, "
          f"batch {args.batch_size}, learning rate {args.learning_rate or 'default'}, jit {args.jit}:")
    print_scores(rows)


def resolution_one(args) -> dict:
    """One side of ``resolution``: train at ``args.train_box`` (the simulation Fourier-cropped when
    smaller), FSC in Å against the truth cropped alike."""
    from cryovae_nb.synthetic import lshape_volume
    from cryovae_nb.training.steps import configure_threads
    from cryovae_nb.volumes import fourier_resample

    configure_threads(None, 1)
    workdir, box = Path(args.workdir), args.train_box
    star = simulate_lshape(workdir, args.box, args.n_particles, args.snr, (box,))[box]
    truth = fourier_resample(lshape_volume(args.box), box)
    return train_and_score(star, box, args.box / box, truth, args.decoder, args.budget, args.batch_size,
                           args.jit, workdir / f"run_res_{args.decoder}_{box}_{int(time.time())}",
                           args.learning_rate, args.latent_dim, args.eval_every)


def resolution(args) -> None:
    """Both boxes at once, in two processes (so machine load hits both alike)."""
    workdir = Path(args.workdir)
    small = args.box // 2
    simulate_lshape(workdir, args.box, args.n_particles, args.snr, (args.box, small))  # once, before both
    rates = {small: args.learning_rate_small or args.learning_rate, args.box: args.learning_rate}
    procs = {}
    for box in (small, args.box):
        opts = dict(vars(args), learning_rate=rates[box])
        cmd = [sys.executable, __file__, "resolution-one", "--train-box", str(box)] + [
            f"--{k.replace('_', '-')}={v}" for k, v in opts.items()
            if k not in ("what", "jit", "learning_rate_small") and v is not None] + (["--jit"] if args.jit else [])
        procs[box] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    rows = []
    for box, proc in procs.items():
        lines = proc.stdout.read().strip().splitlines()
        if proc.wait() != 0 or not lines:
            for other in procs.values():
                other.kill()
            raise SystemExit(f"the {box} px run failed (exit {proc.returncode})")
        print("\n".join(lines[:-1]), flush=True)  # its FSC against training time
        rows.append(json.loads(lines[-1]))
    print(f"\nL-shape simulated at {args.box} px (1 Å/px), {args.n_particles} images, SNR {args.snr}, "
          f"known poses, decoder {args.decoder}, latent_dim {args.latent_dim or 'default'}, both at once for "
          f"{args.budget:.0f} s, batch {args.batch_size}, learning rate {rates[small] or 'default'} at {small} px, "
          f"{rates[args.box] or 'default'} at {args.box} px; the "
          f"{small} px run is the same data Fourier-cropped (2 Å/px, Nyquist 4 Å):")
    print_scores(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    one = sub.add_parser("one", help="one config's figures as JSON (throughput runs this)")
    one.add_argument("--box", type=int, required=True)
    one.add_argument("--decoder", required=True)
    one.add_argument("--batch", type=int, default=8)
    one.add_argument("--steps", type=int, default=3)
    one.add_argument("--jit", action="store_true")
    tp = sub.add_parser("throughput", help="the table of weights, memory and images/s")
    tp.add_argument("--boxes", default="40,64,128")
    tp.add_argument("--decoders", default="dense,conv3d")
    tp.add_argument("--batch", type=int, default=8)
    tp.add_argument("--steps", type=int, default=3, help="timed steps per config")
    tp.add_argument("--timeout", type=float, default=900, help="seconds per config before giving up")
    tp.add_argument("--jit", action="store_true")
    for name in ("quality", "resolution", "resolution-one"):
        q = sub.add_parser(name)
        q.add_argument("--box", type=int, default=64 if name == "quality" else 128)
        q.add_argument("--budget", type=float, default=240.0, help="training seconds per run")
        q.add_argument("--n-particles", type=int, default=4000)
        q.add_argument("--snr", type=float, default=0.1 if name == "quality" else 1.0)
        q.add_argument("--batch-size", type=int, default=8)
        q.add_argument("--jit", action="store_true")
        q.add_argument("--learning-rate", type=float, default=None, help="default: TrainConfig's")
        q.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cryovae_decoders"))
        if name == "quality":
            q.add_argument("--decoders", default="dense,conv3d")
        else:
            q.add_argument("--decoder", default="conv3d")
            q.add_argument("--latent-dim", type=int, default=2, help="small: each step decodes latent_dim + 1 "
                           "probe volumes besides the batch's (linearised latents)")
            q.add_argument("--eval-every", type=float, default=60.0, help="training seconds between FSCs")
        if name == "resolution":
            # Adam moves each voxel by ~the rate whatever the box, while a voxel of the 2x box holds
            # ~3.5x less signal (README "Why the 64 px map trailed"): each box needs its own rate
            q.add_argument("--learning-rate-small", type=float, default=None,
                           help="the half-box run's rate (default: --learning-rate's)")
        if name == "resolution-one":
            q.add_argument("--train-box", type=int, required=True)
    args = ap.parse_args(argv)
    if args.what == "one":
        from cryovae_nb.training.steps import configure_threads

        configure_threads(None, 1)
        print(json.dumps(measure_one(args.box, args.decoder, args.batch, args.steps, args.jit)))
    elif args.what == "resolution-one":
        print(json.dumps(resolution_one(args)))
    else:
        {"throughput": throughput, "quality": quality, "resolution": resolution}[args.what](args)


if __name__ == "__main__":
    main()
