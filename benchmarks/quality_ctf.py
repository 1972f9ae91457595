"""The CTF in the forward model against phase flipping, side by side on one simulated CTF dataset.

Simulates the project's hinge phantom (the L's short bar lifted 0-60 degrees) with a CTF
(``cryovae simulate --ctf``: 300 kV, Cs 2.7 mm, amplitude contrast 0.1, defocus drawn from
1.0-2.5 um), SNR 0.1 after the CTF, random poses and 1 px shifts, then preprocesses it twice:

- ``ctf``: the defaults for data with CTF columns (images standardised by their background; the
  Trainer follows the data: the CTF model, identity link, Gaussian likelihood);
- ``phase-flip``: ``--phase-flip`` (tanh-normalised; the model without a CTF, sigmoid link): what
  the project offered before.

Each is trained with known poses and the Trainer's defaults for the same wall-clock budget, one
after the other in this run, and scored against the simulation's truth:

- ``FSC.5`` / ``FSC.143`` (Å, and px in brackets) and ``corr``: the consensus (the volume at the
  mean latent) against the mean of the true conformations;
- ``end0`` / ``end1``: FSC 0.143 (Å) of the volume decoded at the mean latent of the particles in
  the first / last quarter of the hinge angle against the truth at that quarter's mean angle;
- ``|rho|``: |Spearman rho| of the latent's best principal component with the hinge angle.

    .venv/bin/python benchmarks/quality_ctf.py                   # box 32, 4000 particles, 2 x 200 s
    .venv/bin/python benchmarks/quality_ctf.py --budget 600 --n-particles 8000
    # issue #12's figure: 128 px at 1.5 Å/px cropped to 64 px, astigmatic, SNR 0.05, 20 min each,
    # the two variants in two processes at once (prepare the data first with one of them)
    .venv/bin/python benchmarks/quality_ctf.py --sim-box 128 --box 64 --pixel-size 1.5 \
        --astigmatism 1000 --snr 0.05 --n-particles 8000 --budget 1200 --only ctf

The simulated data are cached in --workdir.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BINS = 4


def prepare(args) -> tuple[dict, dict]:
    """Simulate once, preprocess both ways: ({variant: STAR path}, truth arrays)."""
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, load_truth, simulate

    sim_box = args.sim_box or args.box
    key = (f"hinge_b{sim_box}to{args.box}_n{args.n_particles}_snr{args.snr}_px{args.pixel_size}"
           f"_ast{args.astigmatism:g}_s{args.seed}")
    out = Path(args.workdir) / key
    stars = {"ctf": out / "standardised" / "particles.star", "phase-flip": out / "flipped" / "particles.star"}
    if not all(s.exists() for s in stars.values()):
        t0 = time.monotonic()
        sim = SimulationConfig(phantom="hinge", box=sim_box, n_particles=args.n_particles, snr=args.snr,
                               shift_std_px=1.0 * sim_box / args.box, ctf=True,
                               defocus_range=(10000.0, 25000.0), astigmatism=args.astigmatism,
                               pixel_size=args.pixel_size, seed=args.seed)
        ds = simulate(sim, out / "sim", progress=False)
        crop = None if sim_box == args.box else args.box
        preprocess_stack(ds.star, stars["ctf"], PreprocessConfig(box=crop), progress=False)
        preprocess_stack(ds.star, stars["phase-flip"], PreprocessConfig(box=crop, phase_flip=True), progress=False)
        print(f"simulated + preprocessed {ds.n_particles} images twice in {time.monotonic() - t0:.0f} s", flush=True)
    return stars, load_truth(out / "sim" / "truth.npz")


def latents(trainer, batch: int = 500):
    """Every particle's latent mean, read as the model reads it in training (its Batch: known
    poses and, for the CTF model, each particle's CTF)."""
    import numpy as np

    n = len(trainer.particles)
    return np.concatenate([np.asarray(trainer.model.encode(trainer.batches(np.arange(s, min(n, s + batch))))["z_mean"])
                           for s in range(0, n, batch)])


def truth_volume(t: float, box: int, sim_box: int):
    """The hinge at ``t`` as the model's box sees it: simulated at ``sim_box``, Fourier-cropped."""
    from cryovae_nb.synthetic import hinge_volume
    from cryovae_nb.volumes import fourier_resample

    v = hinge_volume(sim_box, t)
    return v if sim_box == box else fourier_resample(v, box)


def score(trainer, truth: dict, box: int, sim_box: int) -> dict:
    import numpy as np

    from cryovae_nb.analysis.align import correlation
    from cryovae_nb.analysis.fsc import fsc
    from cryovae_nb.heterogeneity import motion_recovery
    from cryovae_nb.volumes import band_limit

    px = trainer.pixel_size
    z = latents(trainer)
    t = np.asarray(truth["t"], np.float64)

    def decode(zz):
        v = np.asarray(trainer.model.decode(np.asarray(zz, np.float32)[None]))[0]
        return band_limit(v) if trainer.config.model.architecture.projector == "fourier" else v

    consensus_truth = np.mean([truth_volume(float(x), box, sim_box) for x in np.unique(t)], axis=0)
    cons = decode(z.mean(0))
    f = fsc(cons, consensus_truth, pixel_size=px)
    row = {"fsc05_A": f.resolution_05, "fsc0143_A": f.resolution_0143, "fsc05_px": f.resolution_05 / px,
           "fsc0143_px": f.resolution_0143 / px, "corr": correlation(cons, consensus_truth),
           "rho": motion_recovery(z, t)["spearman_pc"]}
    bins = np.minimum((t * BINS).astype(np.int64), BINS - 1)
    for name, b in (("end0", 0), ("end1", BINS - 1)):
        sel = bins == b
        ft = fsc(decode(z[sel].mean(0)), truth_volume(float(t[sel].mean()), box, sim_box), pixel_size=px)
        row[f"{name}_A"] = ft.resolution_0143
    return row


def run(args, name: str, star: Path, truth: dict) -> dict:
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    run_dir = Path(args.workdir) / f"run_{name}_{int(time.time())}"
    cfg = TrainConfig(data=str(star), run_dir=str(run_dir), model=ModelConfig().with_options(pose_mode="known"),
                      seed=args.seed, max_steps=10**9, max_time_s=args.budget, sample_every=10**9,
                      checkpoint_every=10**9, keep_checkpoints=1)
    trainer = Trainer(cfg, progress=False)
    loss = trainer.config.model.loss
    t0 = time.monotonic()
    trainer.train()
    dt = time.monotonic() - t0
    return {"variant": name, "model": f"ctf={loss.ctf} link={loss.link}", "train_s": round(dt),
            "step": trainer.step, **score(trainer, truth, args.box, args.sim_box or args.box)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--box", type=int, default=32, help="the model's box")
    p.add_argument("--sim-box", type=int, default=None,
                   help="simulate at this box and Fourier-crop to --box (default: --box)")
    p.add_argument("--astigmatism", type=float, default=0.0, help="max |DefocusU - DefocusV|, Å")
    p.add_argument("--only", choices=["ctf", "phase-flip"], default=None,
                   help="train one variant (run two processes at once to share a loaded machine fairly)")
    p.add_argument("--pixel-size", type=float, default=4.0, help="Å/px of the simulation (default 4)")
    p.add_argument("--n-particles", type=int, default=4000)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--budget", type=float, default=200.0, help="training seconds per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cryovae_quality_ctf"))
    args = p.parse_args(argv)
    stars, truth = prepare(args)
    rows = [run(args, name, star, truth) for name, star in stars.items() if args.only in (None, name)]
    px = args.pixel_size * (args.sim_box or args.box) / args.box
    print(f"\nhinge, simulated at {args.sim_box or args.box} px / {args.pixel_size:g} Å/px, model box "
          f"{args.box}, {px:g} Å/px (Nyquist {2 * px:g} Å), astigmatism up to {args.astigmatism:g} Å, "
          f"{args.n_particles} particles, SNR {args.snr}, defocus 1.0-2.5 um, known poses, "
          f"{args.budget:g} s each")
    print(f"{'variant':>10} {'model':>26} {'train_s':>7} {'step':>6} {'FSC.5 Å (px)':>14} "
          f"{'FSC.143 Å (px)':>15} {'corr':>5} {'end0 Å':>7} {'end1 Å':>7} {'|rho|':>5}")
    for r in rows:
        print(f"{r['variant']:>10} {r['model']:>26} {r['train_s']:>7} {r['step']:>6} "
              f"{r['fsc05_A']:>6.1f} ({r['fsc05_px']:4.2f}) {r['fsc0143_A']:>7.1f} ({r['fsc0143_px']:4.2f}) "
              f"{r['corr']:>5.3f} {r['end0_A']:>7.1f} {r['end1_A']:>7.1f} {r['rho']:>5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
