"""``cryovae demo`` (what ``make demo`` runs): simulate the embedded hinge dataset, preprocess,
train for a wall-clock budget (or a fixed number of steps), write a reconstruction and its FSC
against the truth, measure how well the latent recovers the hinge angle (``latent_vs_truth``),
then execute the tutorial notebooks on the same workdir and save them as HTML. Headless:
matplotlib (Agg) draws the PNGs.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryovae_nb.atomic import write_json_atomic
from cryovae_nb.inference import load_run, write_volumes
from cryovae_nb.io import read_particles, write_volume
from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
from cryovae_nb.tutorial.evaluation import (STATE_BINS, compare_to_reference, consensus_volume, extreme_states,
                                            format_motion, fsc_summary, latent_vs_truth, reference_t,
                                            truth_volume)
from cryovae_nb.tutorial.notebooks import execute_notebook, notebooks_dir
from cryovae_nb.tutorial.plots import save_fsc_png, save_preview_png, save_states_png
from cryovae_nb.tutorial.workspace import (TUTORIAL_PHANTOM, simulate_tutorial_data, tutorial_paths,
                                           tutorial_train_config)


@dataclass
class DemoSettings:
    """What ``cryovae demo`` does. The model and optimiser are the tutorial's (``TUTORIAL_MODEL``,
    ``TUTORIAL_TRAIN``); ``model`` holds only this demo's overrides (any ModelConfig or
    TrainConfig field, routed by `tutorial_train_config`), passed to 02_train as well."""

    n_particles: int = 5000
    box: int = 40
    snr: float = 0.1
    phantom: str = TUTORIAL_PHANTOM
    budget_s: float = 240.0
    pose_mode: str = "known"
    notebook_budget_s: float = 20.0      # extra training 02_train adds to the shared run
    # a fixed step count instead of the budgets (None: the budgets): the same training whatever
    # the machine's load, so the quick demo's outputs (and the tests on them) do not vary with it
    steps: int | None = None
    notebook_steps: int | None = None    # steps 02_train adds, with ``steps``
    embed_methods: tuple = ("umap", "pca", "tsne")
    model: dict = dataclasses.field(default_factory=dict)
    state_bins: int = STATE_BINS         # latent_vs_truth: the hinge angle cut into this many states
    max_encode: int = 4000               # particles encoded for the latent-vs-truth figures
    trajectory_steps: int = 6

    @classmethod
    def quick(cls) -> "DemoSettings":
        # seconds of everything: for the test suite and a smoke check
        return cls(n_particles=300, box=20, budget_s=8.0, notebook_budget_s=3.0, steps=150,
                   notebook_steps=10,
                   embed_methods=("pca", "tsne"),
                   model=dict(latent_dim=4, encoder_layers=1, encoder_units=64, decoder_layers=1,
                              decoder_units=64))


def demo(out: Path, s: DemoSettings, notebooks: bool = True) -> dict:
    """The main job of ``cryovae demo``; returns the summary written to ``out/summary.json``."""
    # heavy: TensorFlow; `cryovae demo --help` and the tutorial helpers stay light
    from cryovae_nb.training.trainer import Trainer, save_sample_png

    t0 = time.monotonic()
    _say(f"1/5 simulating {s.n_particles} {s.phantom} particles ({s.box} px, SNR {s.snr}) in {out}")
    simulate_tutorial_data(out, box=s.box, n_particles=s.n_particles, snr=s.snr, phantom=s.phantom,
                           progress=False)
    paths = tutorial_paths(out)
    _say("2/5 preprocessing (tanh normalisation, circular mask)")
    paths.particles.parent.mkdir(parents=True, exist_ok=True)
    pre = preprocess_stack(paths.raw, paths.particles, PreprocessConfig(), progress=False)
    raw = read_particles(paths.raw)
    show = np.arange(min(8, len(raw)))
    preview = out / "preview_particles.png"
    save_preview_png(preview, raw.images[show], pre.images[show],
                     ("raw (SNR %g)" % s.snr, "preprocessed"))

    run_dir = paths.run_dir("run")
    # a previous demo's run in this folder: Trainer(resume=False) moves it to run/previous-N
    if s.steps is None:
        _say(f"3/5 training ({s.pose_mode} poses) for {s.budget_s:g} s")
        limits = dict(max_time_s=s.budget_s)
    else:
        _say(f"3/5 training ({s.pose_mode} poses) for {s.steps} steps")
        limits = dict(max_steps=s.steps, max_time_s=None)
    cfg = tutorial_train_config(paths, run_dir, pose_mode=s.pose_mode,
                                sample_every=10**9, checkpoint_every=10**9, **limits, **s.model)
    trainer = Trainer(cfg, progress=False, resume=False)
    result = trainer.train()
    test = trainer.test_indices[:8] if len(trainer.test_indices) else trainer.train_indices[:8]
    images, proj, _ = trainer.reconstruct(test)
    samples_png = out / "sample_grid.png"
    save_sample_png(samples_png, images, proj, trainer.step)
    del trainer

    _say("4/5 reconstruction and FSC against the truth (aligned, both hands tried); "
         "the latent against the true hinge angle")
    run = load_run(run_dir)
    test = run.split()[1]
    vol = consensus_volume(run, test if len(test) else None)
    recon = out / "reconstruction.mrc"
    write_volume(recon, vol, run.pixel_size)
    ref, voxel = truth_volume(paths, run.box)
    cmp = compare_to_reference(vol, ref, run.pixel_size, frame_known=s.pose_mode == "known")
    curves = {"aligned": cmp["fsc"]}
    if cmp["fsc_unaligned"] is not None:
        curves["as trained (known-pose frame)"] = cmp["fsc_unaligned"]
    fsc_png, fsc_json = out / "fsc.png", out / "fsc.json"
    ref_t = reference_t(paths)                          # the reference truth's hinge parameter
    save_fsc_png(fsc_png, curves, title=f"FSC against the truth (t = {ref_t:.2f})")
    write_json_atomic(fsc_json, {
        "pose_mode": s.pose_mode, "mirrored": bool(cmp["aligned"].mirrored),
        "correlation": cmp["aligned"].correlation,
        "correlation_other_hand": cmp["aligned"].correlation_other_hand,
        "reference": str(paths.truth_volume), "reference_t": ref_t,
        **fsc_summary(cmp["fsc"]),
        "curves": {k: v.to_dict() for k, v in curves.items()}})

    # the latent against the simulated motion, and a trajectory from one end of it to the other
    report = latent_vs_truth(run, paths, bins=s.state_bins, max_particles=s.max_encode)
    states_png = None
    if report is not None:
        z0, z1, counts = extreme_states(report.z, report.t, report.z_logvar)
        traj_note = (f"mean latents of the {counts[0]} particles at the lowest and the {counts[1]} "
                     f"at the highest hinge angle")
    else:  # a rigid phantom: between two particles, as before
        enc = run.encode(run.particles.subset([0, 1]), progress=False)
        z0, z1 = enc.z_mean
        traj_note = "latents of particles 0 and 1"
    _, frames = run.interpolate(z0, z1, s.trajectory_steps)
    traj = write_volumes(out / "trajectory", frames, run.pixel_size, prefix="interpolation")
    if report is not None:
        states_png = out / "states.png"
        save_states_png(states_png, report, frames,
                        title="the hinge seen along its axis: truth, decoded states, trajectory")
    del run

    html = []
    if notebooks:
        _say("5/5 executing the tutorial notebooks on the same workdir")
        html = run_tutorial_notebooks(out, s)
    else:
        _say("5/5 notebooks skipped (--no-notebooks)")
    summary = {
        "out": str(out), "particles": str(paths.raw), "preprocessed": str(paths.particles),
        "phantom": s.phantom, "run_dir": str(run_dir), "steps": result.step,
        "notebook_steps": s.notebook_steps if s.steps is not None else None,
        "train_seconds": round(result.elapsed_s, 1),
        "pose_mode": s.pose_mode, "preview_png": str(preview), "sample_grid_png": str(samples_png),
        "reconstruction_mrc": str(recon), "fsc_png": str(fsc_png), "fsc_json": str(fsc_json),
        "fsc_reference_t": ref_t,
        "trajectory_mrcs": [str(p) for p in traj], "trajectory_between": traj_note,
        "notebooks_html": [str(p) for p in html],
        "fsc": fsc_summary(cmp["fsc"]), "mirrored": bool(cmp["aligned"].mirrored),
        "fsc_unaligned": None if cmp["fsc_unaligned"] is None else fsc_summary(cmp["fsc_unaligned"]),
        "latent_vs_truth": None if report is None else report.figures,
        "states_png": None if states_png is None else str(states_png),
        "total_seconds": round(time.monotonic() - t0, 1), "truth_voxel_size": voxel,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def notebook_parameters(workdir: Path, s: DemoSettings) -> dict:
    """Parameters for the four notebooks so that they share the demo's data and run. The model
    reaches 02_train as ``MODEL_OVERRIDES`` (the demo's overrides of ``TUTORIAL_MODEL`` /
    ``TUTORIAL_TRAIN``); its named model parameters stay None, i.e. the tutorial defaults."""
    common = {"WORKDIR": str(workdir), "STAR_FILE": None, "SIM_BOX": s.box, "SIM_PARTICLES": s.n_particles,
              "SIM_SNR": s.snr, "SIM_PHANTOM": s.phantom}
    train = {"POSE_MODE": s.pose_mode, "MODEL_OVERRIDES": dict(s.model),
             "TRAIN_BUDGET_S": s.notebook_budget_s, "SAMPLE_EVERY": 10**9, "CHECKPOINT_EVERY": 10**9}
    if s.steps is not None:
        # MAX_STEPS counts from the run's start: the demo's steps, then the notebook's
        train.update(MAX_STEPS=s.steps + (s.notebook_steps or 0), TRAIN_BUDGET_S=None)
    return {
        "01_preprocess.ipynb": dict(common),
        "02_train.ipynb": {**common, **train},
        "04_evaluate.ipynb": {**common, "N_GALLERY": 8},
        "05_latent_landscape.ipynb": {**common, "EMBED_METHODS": list(s.embed_methods),
                                      "N_CLUSTERS": 3, "TRAJECTORY_STEPS": 6,
                                      "STATE_BINS": s.state_bins},
    }


def run_tutorial_notebooks(workdir: Path, s: DemoSettings) -> list[Path]:
    """Execute 01, 02, 04, 05 on ``workdir``; write each as ``workdir/notebooks/NAME.html``."""
    src = notebooks_dir()
    if src is None:
        _say("   notebooks/ not found next to the package (not a source checkout): skipped")
        return []
    html_dir = workdir / "notebooks"
    html_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, params in notebook_parameters(workdir, s).items():
        t = time.monotonic()
        target = html_dir / (Path(name).stem + ".html")
        execute_notebook(src / name, params, html_dir, html=target)
        _say(f"   {name}: {time.monotonic() - t:.0f} s -> {target}")
        written.append(target)
    return written


def format_summary(summary: dict) -> str:
    f = summary["fsc"]
    lines = [
        "", "cryovae demo: done in %.0f s" % summary["total_seconds"],
        f"  trained {summary['steps']} steps in {summary['train_seconds']} s with "
        f"{summary['pose_mode']} poses"
        + (" (ab initio)" if summary["pose_mode"] == "learned" else
           " (poses from the STAR file: a quick good map; use --pose-mode learned for ab initio)"),
        f"  FSC vs truth (aligned{', mirrored hand' if summary['mirrored'] else ''}): "
        f"0.5 at {f['resolution_05_A']:.2f} Å ({f['resolution_05_px']:.2f} px), "
        f"0.143 at {f['resolution_0143_A']:.2f} Å ({f['resolution_0143_px']:.2f} px); "
        f"Nyquist {f['nyquist_A']:.2f} Å",
    ]
    u = summary.get("fsc_unaligned")
    if u:
        lines.append(f"  FSC as trained (known-pose frame, no interpolation): 0.5 at {u['resolution_05_A']:.2f} Å "
                     f"({u['resolution_05_px']:.2f} px), 0.143 at {u['resolution_0143_A']:.2f} Å "
                     f"({u['resolution_0143_px']:.2f} px)")
    if summary.get("fsc_reference_t") is not None and summary.get("latent_vs_truth"):
        lines.append(f"  (the FSC's truth: the simulated conformation nearest the middle of the motion, "
                     f"t = {summary['fsc_reference_t']:.2f}, a hinge angle of "
                     f"{summary['fsc_reference_t'] * summary['latent_vs_truth']['max_angle_deg']:.0f}°)")
    lines.append("  " + format_motion(summary.get("latent_vs_truth")))
    lines += [f"  {k:<20} {summary[k]}" for k in ("preview_png", "sample_grid_png", "reconstruction_mrc",
                                                  "fsc_png", "fsc_json", "states_png", "run_dir")
              if summary.get(k)]
    if summary["trajectory_mrcs"]:
        lines.append(f"  trajectory           {len(summary['trajectory_mrcs'])} MRC frames in "
                     f"{Path(summary['trajectory_mrcs'][0]).parent} "
                     f"({summary.get('trajectory_between', '')})")
    for p in summary["notebooks_html"]:
        lines.append(f"  notebook             {p}")
    return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, flush=True)
