"""Does the latent space recover a known motion? CryoBench-style figures on moving phantoms.

Simulates the project's hinge (the L's short bar lifted 0-60 degrees, 32 levels, uniform) and
two-state phantoms (box 32, SNR 0.1, 8,000 particles, random poses, 1 px shifts), preprocesses them
with the defaults, trains each variant with ``Trainer`` defaults for a wall-clock budget, and
prints side by side, against the simulation's truth:

- ``|rho|``: |Spearman rho| of the latent's best principal component (of 5) with the hinge angle;
- ``R2``: 5-nearest-neighbour regression of the angle from the latent (5-fold cross-validated);
- ``KL``, ``active``: nats per image and latent dimensions in use (Var of the mean > 0.01);
- ``corr``/``FSC``: the volumes decoded at each true state's mean latent, scaled back by the
  posterior's shrinkage (``analysis.latent.deshrink``; hinge: 4 bins of the angle) against that state's truth (mean correlation, mean FSC 0.5 / 0.143 in px), ``own``: every
  decoded state is closest to its own truth; ``cons``: the same correlation for the one volume at
  the mean latent (what a homogeneous reconstruction gives), so the gain is visible;
- ``acc``: two-state phantom, k-means (k = 2) on the latent vs the true state;
- learned poses: ``pose|rho|`` (does the latent hold the view instead? its best PC against the true
  view angles) and ``proj`` (median correlation of the model's image, at its own pose and latent,
  with the noise-free truth image: do the learned poses explain the data?).

First it prints the Bayes limits (cached beside the simulated data): what the exact posterior over
the true maps reads from the same images, with the true poses, and for ``--mode learned`` with the
rotations unknown (marginalised over a 10-degree grid); ``oracle_knn_r2`` is the benchmark's own
k-NN R2 applied to that ideal one-dimensional latent.

    .venv/bin/python benchmarks/quality_heterogeneity.py                      # hinge, known, 12 min
    .venv/bin/python benchmarks/quality_heterogeneity.py --phantom two_state --budget 360
    .venv/bin/python benchmarks/quality_heterogeneity.py --mode learned --budget 1800
    # variants side by side in one run: NAME:key=value,key=value (ModelConfig fields; preset=seed)
    .venv/bin/python benchmarks/quality_heterogeneity.py --variant seed:preset=seed --variant default:

Targets (2 CPU cores): known poses, hinge, 12 min: |rho| >= 0.9, R2 >= 0.8, every decoded state
closest to its own truth; two-state >= 95 % classified; ab initio within 30 min: |rho| >= 0.7.
The simulated data are cached in --workdir.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HINGE_BINS = 4


def prepare_data(args, phantom: str) -> tuple[Path, dict]:
    """Simulate + preprocess once per data configuration: (preprocessed STAR, truth arrays)."""
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, load_truth, simulate

    key = f"{phantom}_b{args.box}_n{args.n_particles}_snr{args.snr}_s{args.seed}"
    out = Path(args.workdir) / key
    star = out / "pre" / "particles.star"
    if not star.exists():
        t0 = time.monotonic()
        sim = SimulationConfig(phantom=phantom, box=args.box, n_particles=args.n_particles,
                               snr=args.snr, shift_std_px=args.shift_std, seed=args.seed,
                               pixel_size=args.pixel_size)
        ds = simulate(sim, out / "sim", progress=False)
        preprocess_stack(ds.star, out / "pre" / "particles", PreprocessConfig(), progress=False)
        print(f"simulated + preprocessed {ds.n_particles} {phantom} images in "
              f"{time.monotonic() - t0:.0f} s -> {star}", flush=True)
    return star, load_truth(out / "sim" / "truth.npz")


def oracle(args, phantom: str, truth: dict, m: int = 8000) -> dict:
    """The Bayes limit: what a method that knew the true maps and poses could read from the raw
    images (white noise of the simulated std): the figures of :func:`_posterior_figures`, on the
    first ``m`` particles."""
    import numpy as np

    from cryovae_nb.io import read_particles
    from cryovae_nb.projection import project_reference
    from cryovae_nb.synthetic import hinge_volume

    base = Path(args.workdir) / f"{phantom}_b{args.box}_n{args.n_particles}_snr{args.snr}_s{args.seed}" / "sim"
    x = np.asarray(read_particles(base / "particles.star").images[:m], np.float64)
    rot, sh, levels = truth["rotations"][:m], truth["shifts"][:m], np.asarray(truth["volume_t"])
    ll = np.stack([-((x - project_reference(hinge_volume(args.box, float(t)), rot, sh)) ** 2).sum((1, 2))
                   for t in levels], 1) / (2 * truth["noise_std"] ** 2)
    return _posterior_figures(ll, levels, np.asarray(truth["t"][:m]))


def _posterior_figures(ll, levels, t) -> dict:
    """Figures of the posterior mean of t from log-likelihoods ``ll`` ``(m, levels)``: |rho|, its
    R2, the benchmark's own k-NN R2 with it as a one-dimensional latent, and for two states the
    accuracy of the posterior's choice."""
    import numpy as np
    from scipy.stats import spearmanr

    from cryovae_nb.heterogeneity import motion_recovery

    post = np.exp(ll - ll.max(1, keepdims=True))
    t_hat = (post / post.sum(1, keepdims=True)) @ levels
    out = {"oracle_rho": float(abs(spearmanr(t_hat, t).statistic)),
           "oracle_r2": float(1 - np.sum((t - t_hat) ** 2) / np.sum((t - t.mean()) ** 2)),
           "oracle_knn_r2": motion_recovery(t_hat[:, None], t)["knn_r2"]}
    if len(levels) == 2:
        out["oracle_accuracy"] = float(np.mean((t_hat > 0.5) == (t > 0.5)))
    return out


def oracle_ab_initio(args, phantom: str, truth: dict, m: int = 400, step_deg: float = 10.0) -> dict:
    """The Bayes limit without poses: the same posterior over the true maps, each image's rotation
    marginalised over a uniform grid (``step_deg``; its shift known, so this still bounds ab initio
    from above). On this data each image says little about its view as well as its conformation."""
    import numpy as np
    import tensorflow as tf

    from cryovae_nb.io import read_particles
    from cryovae_nb.model import ModelConfig, build_model
    from cryovae_nb.model.pose_search import search_grid
    from cryovae_nb.model.rotations import quaternion_to_matrix
    from cryovae_nb.synthetic import hinge_volume

    n = args.box
    base = Path(args.workdir) / f"{phantom}_b{n}_n{args.n_particles}_snr{args.snr}_s{args.seed}" / "sim"
    x = np.asarray(read_particles(base / "particles.star").images[:m], np.float64)
    m = len(x)
    # the images moved back by their true shifts (a phase ramp), so one projection serves them all
    k = np.fft.fftfreq(n)
    ramp = np.exp(2j * np.pi * (np.asarray(truth["shifts"][:m])[:, 0, None, None] * k[None, None, :]
                                + np.asarray(truth["shifts"][:m])[:, 1, None, None] * k[None, :, None]))
    x = np.fft.ifft2(np.fft.fft2(x) * ramp).real.reshape(m, -1)
    model = build_model(ModelConfig().with_options(box=n, pose_mode="learned", encoder_layers=0, decoder_layers=0,
                                                   fourier_kernel_width=6, fourier_pad=2.0, volume_mask=None))
    grid = quaternion_to_matrix(tf.constant(search_grid(step_deg)))
    levels = np.asarray(truth["volume_t"])
    var = float(truth["noise_std"]) ** 2
    ll = np.zeros((m, len(levels)))
    for j, t in enumerate(levels):
        vol = hinge_volume(n, float(t))[None].astype(np.float32)
        proj = np.concatenate([model.project(vol, grid[None, s:s + 2048]).numpy()[0]
                               for s in range(0, int(grid.shape[0]), 2048)]).reshape(-1, n * n)
        proj = proj.astype(np.float64)
        a = (x @ proj.T - 0.5 * np.sum(proj ** 2, 1)[None]) / var          # (m, K) up to const(x)
        amax = a.max(1, keepdims=True)
        ll[:, j] = (amax + np.log(np.mean(np.exp(a - amax), 1, keepdims=True)))[:, 0]
    return {f"ab_initio_{k}": v for k, v in _posterior_figures(ll, levels, np.asarray(truth["t"][:m])).items()}


def state_labels(phantom: str, truth: dict, box: int):
    """(labels (n,), truth volumes (S, n, n, n)): hinge angle in HINGE_BINS bins, or the two states."""
    import numpy as np

    from cryovae_nb.synthetic import hinge_volume

    t = np.asarray(truth["t"], np.float64)
    if phantom == "two_state":
        labels = np.asarray(truth["conformation"], np.int64)
        return labels, np.stack([hinge_volume(box, float(x)) for x in (0.0, 1.0)])
    labels = np.minimum((t * HINGE_BINS).astype(np.int64), HINGE_BINS - 1)
    centres = [float(t[labels == i].mean()) for i in range(HINGE_BINS)]
    return labels, np.stack([hinge_volume(box, c) for c in centres])


def latent_means(model, images, poses=None, batch: int = 512):
    """(z_mean, z_logvar) of every image (the encoder alone: no decoding, no pose search)."""
    import numpy as np

    from cryovae_nb.model.batch import Batch

    means, logvars = [], []
    for s in range(0, len(images), batch):
        sl = slice(s, s + batch)
        rot = None if poses is None else np.asarray(poses.rotations[sl], np.float32)
        sh = None if poses is None else np.asarray(poses.shifts[sl], np.float32)
        x = np.asarray(images[sl], np.float32)
        if model.linearized:
            enc = model.encode(Batch(x, rot, sh))
            mean, logvar = enc["z_mean"], enc["z_logvar"]
        else:
            h = model._hidden(x, False)
            mean, logvar = model.z_mean_layer(h), model.z_logvar_layer(h)
        means.append(np.asarray(mean))
        logvars.append(np.asarray(logvar))
    return np.concatenate(means), np.concatenate(logvars)


def evaluate(trainer, phantom: str, truth: dict, labels, truths, pixel_size: float) -> dict:
    import numpy as np

    from cryovae_nb.heterogeneity import motion_recovery, state_volumes, two_state_accuracy
    from cryovae_nb.volumes import band_limit

    known = trainer.config.model.pose.mode == "known"
    z, z_logvar = latent_means(trainer.model, trainer.particles.images,
                               trainer.particles.poses if known else None)
    model = trainer.model

    def decode(zz):
        v = np.asarray(model.decode(np.asarray(zz, np.float32)))
        return band_limit(v) if model.config.architecture.projector == "fourier" else v

    learned = trainer.config.model.pose.mode == "learned"
    # each state's mean latent scaled back by the posterior's shrinkage, as the tutorial's group maps
    vols = state_volumes(decode, z, labels, truths, pixel_size, align_to=len(truths) // 2 if learned else None,
                         z_logvar=z_logvar)
    row = {**motion_recovery(z, truth["t"]),
           "active_dims": int(np.sum(np.var(z, axis=0) > 0.01)),
           "state_corr": float(np.mean(np.diag(vols["correlation"]))),
           "state_fsc05_px": float(np.mean(vols["fsc05"]) / pixel_size),
           "state_fsc0143_px": float(np.mean(vols["fsc0143"]) / pixel_size),
           "own_closest": vols["own_closest"],
           "consensus_corr": float(np.mean(vols["mean_latent_correlation"])),
           "consensus_fsc05_px": float(np.mean(vols["mean_latent_fsc05"]) / pixel_size),
           "correlation_matrix": np.round(vols["correlation"], 3).tolist()}
    if phantom == "two_state":
        row["two_state_accuracy"] = two_state_accuracy(z, truth["conformation"])
    if learned:
        # does the latent hold the pose instead? |rho| of its best PC with the true view angles
        from cryovae_nb.heterogeneity import motion_recovery as mr

        euler = np.asarray(truth["euler"])
        row["pose_rho"] = max(mr(z, np.cos(np.deg2rad(euler[:, 1])))["spearman_pc"],
                              mr(z, np.cos(np.deg2rad(euler[:, 0])))["spearman_pc"])
        # do the learned poses (and latents) explain the images? The model's projection at each
        # particle's pose against the noise-free truth image (frame- and hand-free: a rotated or
        # mirrored reconstruction at its own consistent poses scores as well as the truth's)
        row["proj_corr"] = projection_agreement(model, trainer.particles.images, truth)
    return row


def projection_agreement(model, images, truth: dict, m: int = 500) -> float:
    """Median correlation, over the first ``m`` particles, of the model's image (its decoded
    volume at its own latent and pose) with the noise-free truth image."""
    import numpy as np

    from cryovae_nb.geometry import quaternion_to_matrix
    from cryovae_nb.model.batch import Batch
    from cryovae_nb.synthetic import hinge_volume

    n, m = model.config.architecture.box, min(m, len(images))
    enc = model.encode(Batch(np.asarray(images[:m], np.float32)))
    mine = model.project(model.decode(enc["z_mean"]),
                         quaternion_to_matrix(np.asarray(enc["quaternion"])).astype(np.float32),
                         enc["shift"]).numpy().reshape(m, -1)
    vols = np.stack([hinge_volume(n, float(t)) for t in truth["t"][:m]]).astype(np.float32)
    clean = model.project(vols, truth["rotations"][:m].astype(np.float32),
                          np.asarray(truth["shifts"][:m], np.float32)).numpy().reshape(m, -1)
    mine, clean = mine - mine.mean(1, keepdims=True), clean - clean.mean(1, keepdims=True)
    corr = np.sum(mine * clean, 1) / np.sqrt(np.sum(mine**2, 1) * np.sum(clean**2, 1))
    return float(np.median(corr))


def cached(path: Path, compute) -> dict:
    """``compute()``'s figures, kept beside the simulated data they describe (minutes to compute)."""
    if path.is_file():
        return json.loads(path.read_text())
    out = compute()
    path.write_text(json.dumps(out))
    return out


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:key=value,key=value`` -> (name, overrides); values parsed as JSON where they can be."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        try:
            overrides[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k.strip()] = v.strip()
    return name or "default", overrides


def run_variant(args, phantom: str, mode: str, name: str, overrides: dict) -> list[dict]:
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    star, truth = prepare_data(args, phantom)
    labels, truths = state_labels(phantom, truth, args.box)
    overrides = dict(overrides)
    preset = overrides.pop("preset", "default")
    # TrainConfig fields (learning rate, batch, ...); the rest are the model's
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "seed"}
    train_over = {k: overrides.pop(k) for k in list(overrides) if k in train_keys}
    model = ModelConfig.preset(preset, pose_mode=mode, **overrides)
    run_dir = Path(args.workdir) / f"run_{phantom}_{mode}_{name}_{int(time.time())}"
    cfg = TrainConfig(data=str(star), run_dir=str(run_dir), model=model,
                      seed=args.seed, max_steps=args.max_steps or 10**9,
                      sample_every=10**9, checkpoint_every=10**9, keep_checkpoints=1, **train_over)
    trainer = Trainer(cfg, progress=False)
    pixel = trainer.pixel_size
    every = args.eval_every or args.budget
    trained, rows = 0.0, []
    while trained < args.budget - 1e-6 and trainer.step < cfg.max_steps:
        trainer.config = dataclasses.replace(trainer.config, max_time_s=min(every, args.budget - trained))
        t0, s0 = time.monotonic(), trainer.step
        trainer.train()
        dt = time.monotonic() - t0
        trained += dt
        test = trainer.evaluate()
        row = {"phantom": phantom, "mode": mode, "variant": name, "train_s": round(trained),
               "step": trainer.step, "images_per_s": round((trainer.step - s0) * cfg.batch_size / dt),
               "kl": test.get("kl"), **evaluate(trainer, phantom, truth, labels, truths, pixel)}
        rows.append(row)
        print(format_row(row), flush=True)
    (run_dir / "heterogeneity.json").write_text(json.dumps(rows, indent=2, default=float))
    return rows


HEADER = (f"{'phantom':>9} {'mode':>7} {'variant':>14} {'train_s':>7} {'step':>6} {'img/s':>5} "
          f"{'KL':>6} {'active':>6} {'|rho|':>5} {'R2':>5} {'corr':>5} {'FSC.5':>5} {'FSC.143':>7} "
          f"{'own':>3} {'cons':>5} {'acc':>5} {'pose|rho|':>9} {'proj':>5}")


def format_row(r: dict) -> str:
    def f(v, spec):
        return format(v, spec) if v is not None else format("-", spec[:spec.index(".")] + "s"
                                                             if "." in spec else spec)
    return (f"{r['phantom']:>9} {r['mode']:>7} {r['variant']:>14} {r['train_s']:7d} {r['step']:6d} "
            f"{r['images_per_s']:5d} {f(r['kl'], '6.2f')} {r['active_dims']:6d} {r['spearman_pc']:5.2f} "
            f"{r['knn_r2']:5.2f} {r['state_corr']:5.2f} {r['state_fsc05_px']:5.2f} "
            f"{r['state_fsc0143_px']:7.2f} {'yes' if r['own_closest'] else 'no':>3} "
            f"{r['consensus_corr']:5.2f} {f(r.get('two_state_accuracy'), '5.2f')} "
            f"{f(r.get('pose_rho'), '9.2f')} {f(r.get('proj_corr'), '5.2f')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantom", choices=["hinge", "two_state", "both"], default="hinge")
    ap.add_argument("--mode", choices=["known", "learned", "both"], default="known")
    ap.add_argument("--budget", type=float, default=720.0, help="training seconds per variant")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="also stop at this step (variants compared at equal work on a loaded machine)")
    ap.add_argument("--eval-every", type=float, default=None, help="seconds between evaluations")
    ap.add_argument("--variant", action="append", default=None,
                    help="NAME:key=value,... ModelConfig/TrainConfig overrides (repeatable)")
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--n-particles", type=int, default=8000)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--shift-std", type=float, default=1.0, help="px")
    ap.add_argument("--pixel-size", type=float, default=3.0, help="Å")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-oracle", action="store_true",
                    help="skip the Bayes limits (minutes per new dataset; cached beside the data)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cryovae_quality_het"))
    args = ap.parse_args(argv)

    phantoms = ["hinge", "two_state"] if args.phantom == "both" else [args.phantom]
    modes = ["known", "learned"] if args.mode == "both" else [args.mode]
    variants = [parse_variant(v) for v in (args.variant or ["default:"])]
    print(f"box {args.box}, {args.n_particles} particles, SNR {args.snr}, {args.budget:.0f} s per run; "
          f"variants: " + "; ".join(f"{n} {o}" for n, o in variants), flush=True)
    limits = {}
    for phantom in phantoms if not args.no_oracle else []:
        star, truth = prepare_data(args, phantom)
        limits[phantom] = cached(star.parent.parent / "oracle.json", lambda: oracle(args, phantom, truth))
        print(f"{phantom}: the Bayes limit (true maps and poses, {min(8000, args.n_particles)} "
              f"particles): " + ", ".join(f"{k} {v:.3f}" for k, v in limits[phantom].items()), flush=True)
        if "learned" in modes:
            ab = cached(star.parent.parent / "oracle_ab_initio.json",
                        lambda: oracle_ab_initio(args, phantom, truth))
            print(f"{phantom}: the Bayes limit ab initio (true maps and shifts, rotations unknown, "
                  f"400 particles): " + ", ".join(f"{k} {v:.3f}" for k, v in ab.items()), flush=True)
    print(HEADER, flush=True)
    final = []
    for phantom in phantoms:
        for mode in modes:
            for name, over in variants:
                final.append(run_variant(args, phantom, mode, name, over)[-1])
    print("\nfinal, side by side:")
    print(HEADER)
    for r in final:
        print(format_row(r))
    for r in final:
        if r["mode"] == "known" and r["phantom"] == "hinge":
            ok = r["spearman_pc"] >= 0.9 and r["knn_r2"] >= 0.8 and r["own_closest"]
            print(f"{r['variant']}: hinge known target (|rho| >= 0.9, R2 >= 0.8, own closest): "
                  f"{'met' if ok else 'NOT met'}")
        if r["phantom"] == "two_state":
            print(f"{r['variant']} {r['mode']}: two-state target (>= 95 %): "
                  f"{'met' if r['two_state_accuracy'] >= 0.95 else 'NOT met'}")
        if r["mode"] == "learned" and r["phantom"] == "hinge":
            print(f"{r['variant']}: hinge ab initio target (|rho| >= 0.7): "
                  f"{'met' if r['spearman_pc'] >= 0.7 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
