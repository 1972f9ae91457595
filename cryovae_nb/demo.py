"""The tutorial path as library calls, and ``cryovae demo`` (what ``make demo`` runs).

A tutorial *workdir* holds everything the notebooks pass to each other::

    WORKDIR/simulated/        the embedded L-shape dataset (only when no STAR file is given):
                              particles.star/.mrcs, truth.npz, volumes/conformation_000.mrc
    WORKDIR/preprocessed/     particles.star/.mrcs, particles_split.npz  (01_preprocess)
    WORKDIR/<run name>/       the training run                           (02_train)
    WORKDIR/evaluate/         reconstruction, FSC JSON/PNG               (04_evaluate)
    WORKDIR/landscape/        latents, trajectory MRCs, kept particles   (05_latent_landscape)

``ensure_tutorial_data`` / ``ensure_tutorial_run`` create what is missing, so every notebook also
runs on its own. ``cryovae demo`` simulates, preprocesses, trains for a wall-clock budget, writes
a reconstruction and its FSC against the truth, then executes the notebooks on the same workdir
and saves them as HTML. Headless: matplotlib (Agg) draws the PNGs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryovae_nb.atomic import atomic_path, write_json_atomic, write_text_atomic
from cryovae_nb.errors import ConfigError, InputError

NOTEBOOKS = ("01_preprocess.ipynb", "02_train.ipynb", "04_evaluate.ipynb", "05_latent_landscape.ipynb")

# Tutorial-sized model: the thesis' network (10x512 encoder, 20x200 decoder, lr 1e-5) needs hours
# on a CPU; this one learns the L-shape in a few minutes with known poses.
TUTORIAL_MODEL = dict(latent_dim=8, encoder_layers=3, encoder_units=256, decoder_layers=2,
                      decoder_units=256)
TUTORIAL_TRAIN = dict(batch_size=64, learning_rate=1e-3, pose_mode="known")


# ---------------------------------------------------------------------------------------------
# the workdir


@dataclass
class TutorialData:
    """Where a tutorial's data lives; ``truth_*`` are None for a user's own STAR file."""

    workdir: Path
    raw: Path                        # the particles as acquired (STAR or stack)
    particles: Path                  # preprocessed STAR
    split: Path                      # preprocessed split (.npz with is_test)
    truth: Path | None               # simulation truth.npz
    truth_volume: Path | None        # the ground-truth map
    datadir: Path | None = None      # where the raw STAR file's image paths point

    @property
    def simulated(self) -> bool:
        return self.truth is not None

    def run_dir(self, run_name: str = "run") -> Path:
        return self.workdir / run_name


def tutorial_paths(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None,
                   datadir: str | os.PathLike | None = None) -> TutorialData:
    """The paths of a tutorial workdir (nothing is read or written)."""
    w = Path(workdir)
    pre = w / "preprocessed" / "particles"
    if star_file is None:
        sim = w / "simulated"
        return TutorialData(w, sim / "particles.star", pre.with_suffix(".star"),
                            pre.with_name("particles_split.npz"), sim / "truth.npz",
                            sim / "volumes" / "conformation_000.mrc")
    return TutorialData(w, Path(star_file), pre.with_suffix(".star"), pre.with_name("particles_split.npz"),
                        None, None, None if datadir is None else Path(datadir))


def simulate_tutorial_data(workdir: str | os.PathLike, *, box: int = 40, n_particles: int = 2000,
                           snr: float = 0.1, seed: int = 0, progress: bool = True):
    """Simulate the embedded L-shape dataset (random poses, SNR 0.1, thesis §3.4.1) into
    ``WORKDIR/simulated``; an existing dataset made with the same settings is reused."""
    from cryovae_nb.config import load_config, to_dict
    from cryovae_nb.synthetic import SimulatedDataset, SimulationConfig, load_truth, simulate

    cfg = SimulationConfig(phantom="lshape", box=int(box), n_particles=int(n_particles), snr=snr,
                           seed=int(seed))
    out = Path(workdir) / "simulated"
    paths = tutorial_paths(workdir)
    if (out / "config.json").is_file() and paths.raw.is_file() and paths.truth.is_file():
        try:
            same = to_dict(load_config(SimulationConfig, out / "config.json")) == to_dict(cfg)
        except Exception:  # an unreadable old config: simulate again
            same = False
        if same:
            return SimulatedDataset(out, out / "particles.mrcs", paths.raw, paths.truth,
                                    [paths.truth_volume], None, cfg, load_truth(paths.truth))
    return simulate(cfg, out, progress=progress)


def ensure_tutorial_data(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None, *,
                         datadir: str | os.PathLike | None = None, box: int = 40,
                         n_particles: int = 2000, snr: float = 0.1, seed: int = 0,
                         preprocess=None, progress: bool = True) -> TutorialData:
    """Make sure the workdir holds preprocessed particles (what 01_preprocess writes).

    With ``star_file`` None the L-shape dataset is simulated when missing (``box``,
    ``n_particles``, ``snr``, ``seed``); otherwise the user's STAR file is read. Preprocessing
    (``preprocess``: a ``PreprocessConfig``, default tanh + mask) runs only when its output is
    missing: existing data, as a previous notebook left it, is never replaced here.
    """
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack

    paths = tutorial_paths(workdir, star_file, datadir)
    if star_file is None and not paths.raw.is_file():
        simulate_tutorial_data(workdir, box=box, n_particles=n_particles, snr=snr, seed=seed,
                               progress=progress)
    elif star_file is not None and not paths.raw.is_file():
        raise InputError("STAR file not found", paths.raw)
    if not (paths.particles.is_file() and paths.split.is_file()):
        paths.particles.parent.mkdir(parents=True, exist_ok=True)
        preprocess_stack(paths.raw, paths.particles, preprocess or PreprocessConfig(),
                         datadir=datadir, progress=progress)
    return paths


def tutorial_train_config(data: TutorialData | str | os.PathLike, run_dir: str | os.PathLike, *,
                          max_steps: int = 100_000, max_time_s: float | None = 180.0, seed: int = 0,
                          log_every: int = 25, sample_every: int = 100, checkpoint_every: int = 500,
                          **overrides):
    """A ``TrainConfig`` for the tutorial: the small model of ``TUTORIAL_MODEL`` and the settings
    of ``TUTORIAL_TRAIN``; any ``ModelConfig`` or ``TrainConfig`` field can be overridden by name."""
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.train import TrainConfig

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_kw = {**TUTORIAL_MODEL}
    train_kw = {**TUTORIAL_TRAIN}
    for k, v in overrides.items():
        if k in train_fields and k != "model":   # batch_size, learning_rate, pose_mode go here
            train_kw[k] = v
        elif k in model_fields:
            model_kw[k] = v
        else:
            raise ConfigError(f"tutorial_train_config: unknown setting {k!r}")
    if isinstance(data, TutorialData):
        train_kw.setdefault("split_file", str(data.split) if data.split.is_file() else None)
        data = data.particles
    return TrainConfig(data=str(data), run_dir=str(run_dir), model=ModelConfig(**model_kw),
                       max_steps=int(max_steps), max_time_s=max_time_s, seed=int(seed),
                       log_every=int(log_every), sample_every=int(sample_every),
                       checkpoint_every=int(checkpoint_every), **train_kw)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    from cryovae_nb.train import CheckpointManager

    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() and CheckpointManager(run_dir / "checkpoints").latest() is not None


def ensure_tutorial_run(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None, *,
                        run_name: str = "run", datadir: str | os.PathLike | None = None,
                        budget_s: float = 120.0, max_steps: int = 100_000, progress: bool = True,
                        data_kwargs: dict | None = None, **train_overrides) -> Path:
    """The run directory ``WORKDIR/run_name``, trained first (for ``budget_s`` seconds, tutorial
    settings) when it has no checkpoint, so the evaluation notebooks run on their own."""
    run_dir = Path(workdir) / run_name
    if has_checkpoint(run_dir):
        return run_dir
    from cryovae_nb.train import Trainer

    data = ensure_tutorial_data(workdir, star_file, datadir=datadir, progress=progress, **(data_kwargs or {}))
    cfg = tutorial_train_config(data, run_dir, max_steps=max_steps, max_time_s=budget_s, **train_overrides)
    Trainer(cfg, progress=progress).train()
    return run_dir


# ---------------------------------------------------------------------------------------------
# evaluation helpers shared by the notebooks and the demo


def truth_volume(data: TutorialData, box: int | None = None) -> tuple[np.ndarray, float]:
    """The simulated ground truth, Fourier-resampled to ``box`` (the box the model saw after
    coarsening / cropping; the physical extent is kept) -> (volume, voxel size Å)."""
    from cryovae_nb.io import read_volume
    from cryovae_nb.synthetic import resample_volume

    if data.truth_volume is None:
        raise InputError("no ground truth: the data is not the simulated tutorial dataset", data.raw)
    vol, voxel = read_volume(data.truth_volume)
    voxel = voxel or 1.0
    if box is not None and box != vol.shape[0]:
        voxel = voxel * vol.shape[0] / box
        vol = resample_volume(vol, box)
    return vol, float(voxel)


def consensus_volume(run, indices=None, max_particles: int = 2000) -> np.ndarray:
    """The volume at the mean latent of (up to ``max_particles`` of) the run's particles: one
    reconstruction for a homogeneous dataset, the 'average' conformation otherwise."""
    images = run.particles.images
    idx = np.arange(len(images)) if indices is None else np.asarray(indices)
    idx = idx[:max_particles]
    z = run.encode(images[idx], progress=False).z_mean
    return run.decode(z.mean(axis=0))


def compare_to_reference(volume, reference, pixel_size: float, *, frame_known: bool = False) -> dict:
    """FSC of ``volume`` against ``reference`` after rigid alignment trying both hands.

    Returns ``{"aligned": AlignResult, "fsc": FSCResult, "fsc_unaligned": FSCResult | None}``.
    With ``frame_known`` (a known-pose run shares the reference's frame) the FSC without alignment
    is computed too: interpolating onto an aligned grid blurs slightly, so both are worth seeing.
    """
    from cryovae_nb import analysis

    al = analysis.align(volume, reference, try_mirror=True)
    return {"aligned": al, "fsc": analysis.fsc(al.aligned, reference, pixel_size, mask="sphere"),
            "fsc_unaligned": analysis.fsc(volume, reference, pixel_size, mask="sphere") if frame_known else None}


def fsc_summary(result) -> dict:
    """Resolutions of an ``FSCResult`` in Å and px, for a JSON file or a printout."""
    px = result.pixel_size
    return {"resolution_05_A": result.resolution_05, "resolution_0143_A": result.resolution_0143,
            "resolution_05_px": result.resolution_05 / px, "resolution_0143_px": result.resolution_0143 / px,
            "crossed_05": bool(result.crossed_05), "crossed_0143": bool(result.crossed_0143),
            "nyquist_A": result.nyquist, "pixel_size_A": px}


def save_fsc_png(path: str | os.PathLike, curves: dict, title: str = "FSC against the ground truth") -> None:
    """Plot ``{label: FSCResult}`` with the 0.5 / 0.143 thresholds into a PNG (atomic)."""
    fig, ax = _figure(6.4, 4.0)
    for label, r in curves.items():
        ax.plot(r.frequencies, r.curve, marker=".", label=f"{label}: 0.5 at {r.resolution_05:.2f} Å, "
                f"0.143 at {r.resolution_0143:.2f} Å")
    for t, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(t, color="grey", ls=style, lw=1)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def save_preview_png(path: str | os.PathLike, raw: np.ndarray, processed: np.ndarray,
                     titles: tuple[str, str] = ("raw", "preprocessed")) -> None:
    """Two rows of particles, raw above preprocessed, each image scaled to its own range."""
    k = len(raw)
    fig, axes = _figure(1.3 * k, 2.9, rows=2, cols=k)
    axes = np.asarray(axes).reshape(2, k)
    for row, (imgs, title) in enumerate(((raw, titles[0]), (processed, titles[1]))):
        for j in range(k):
            ax = axes[row, j]
            ax.imshow(imgs[j], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(title)
    _save(fig, path)


def _figure(w, h, rows=1, cols=1):
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless; a notebook's inline backend stays as it is
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    axes = fig.subplots(rows, cols)
    return fig, axes


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_images(images, *, ncols: int = 8, title: str | None = None, labels=None, size: float = 1.3):
    """A grid of particle images in a (pyplot, so inline in a notebook) figure; returns it."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    k = len(images)
    rows = max(1, -(-k // ncols))
    cols = min(k, ncols) if k else 1
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < k:
            ax.imshow(images[i], cmap="gray")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_volumes(volumes, labels=None, *, title: str | None = None, size: float = 1.8):
    """Each volume as its three projections (along z, y and x): a row per volume; returns the figure."""
    import matplotlib.pyplot as plt

    vols = [np.asarray(v) for v in (volumes.values() if isinstance(volumes, dict) else volumes)]
    labels = list(volumes) if isinstance(volumes, dict) else (labels or [str(i) for i in range(len(vols))])
    fig, axes = plt.subplots(len(vols), 3, figsize=(3 * size, size * len(vols) + (0.4 if title else 0)),
                             squeeze=False)
    for r, (v, name) in enumerate(zip(vols, labels)):
        for c, (axis, plane) in enumerate(((0, "along z"), (1, "along y"), (2, "along x"))):
            ax = axes[r, c]
            ax.imshow(v.sum(axis=axis), cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane, fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reconstruct_particles(run, particles, indices) -> tuple[np.ndarray, np.ndarray]:
    """(images, projections of their reconstructed volumes in their poses) for particle rows,
    projections through the sigmoid like the loss sees them (comparable with tanh-normalised
    images). Known-pose runs use the particles' poses."""
    idx = np.asarray(indices)
    sub = particles.subset(idx)
    images = np.asarray(sub.images[np.arange(len(idx))], np.float32)
    enc = run.encode(sub, progress=False)
    volumes = run.decode(enc.z_mean)
    proj = run.model.project(volumes, enc.rotations.astype(np.float32), enc.shifts.astype(np.float32))
    # plus the per-image offset the loss adds (ModelConfig.image_offset), as Trainer.reconstruct
    proj = np.asarray(run.model.add_offset(proj, run.model.encode(images).get("offset")))
    return images, 1.0 / (1.0 + np.exp(-proj))


def reconstruction_errors(run, particles, indices=None, batch_size: int = 256) -> np.ndarray:
    """Per-particle reconstruction error (sigmoid cross-entropy summed over pixels, z = z_mean)
    of a trained run: the feature ``analysis.screen_particles`` flags bad particles with.
    Known-pose runs use the particles' poses, learned-pose runs the encoder's."""
    model = run.model
    idx = np.arange(len(particles)) if indices is None else np.asarray(indices)
    poses = particles.poses if run.config.model.pose_mode == "known" else None
    if run.config.model.pose_mode == "known" and poses is None:
        raise InputError("the run used known poses but the particles have none", run.config.data)
    out = []
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        imgs = np.asarray(particles.images[b], np.float32)
        rot = None if poses is None else np.asarray(poses.rotations[b], np.float32)
        sh = None if poses is None else np.asarray(poses.shifts[b], np.float32)
        losses = model.compute_losses(imgs, rot, sh, training=False)
        out.append(np.asarray(losses["recon_per_sample"], np.float64))
    return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------------------------------------
# notebooks


def notebooks_dir() -> Path | None:
    """The repository's ``notebooks/`` (None when the package is installed without it)."""
    d = Path(__file__).resolve().parents[1] / "notebooks"
    return d if (d / NOTEBOOKS[0]).is_file() else None


def execute_notebook(path: str | os.PathLike, parameters: dict, cwd: str | os.PathLike, *,
                     timeout: int = 900, html: str | os.PathLike | None = None):
    """Run a tutorial notebook top to bottom with ``parameters`` injected after its cell tagged
    ``parameters`` (papermill style); optionally write it as HTML. Raises on the first error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    idx = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(idx) != 1:
        raise InputError(f"expected one cell tagged 'parameters', found {len(idx)}", path)
    cell = nbformat.v4.new_code_cell("# injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx[0] + 1, cell)
    env = dict(os.environ)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env)
    if html is not None:
        import logging

        from nbconvert import HTMLExporter

        logging.getLogger("traitlets").setLevel(logging.ERROR)  # "alternative text missing" on plots
        body, _ = HTMLExporter().from_notebook_node(nb)
        write_text_atomic(html, body)
    return nb


# ---------------------------------------------------------------------------------------------
# cryovae demo


@dataclass
class DemoSettings:
    n_particles: int = 5000
    box: int = 40
    snr: float = 0.1
    budget_s: float = 240.0
    pose_mode: str = "known"
    notebook_budget_s: float = 20.0      # extra training 02_train adds to the shared run
    embed_methods: tuple = ("umap", "pca", "tsne")
    model: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def quick(cls) -> "DemoSettings":
        # seconds of everything: for the test suite and a smoke check
        return cls(n_particles=300, box=20, budget_s=8.0, notebook_budget_s=3.0,
                   embed_methods=("pca", "tsne"),
                   model=dict(latent_dim=4, encoder_layers=1, encoder_units=64, decoder_layers=1,
                              decoder_units=64))


def add_demo_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", default="demo_output", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and seconds of training (a smoke test, not a result)")
    parser.add_argument("--budget", type=float, default=None,
                        help="training wall-clock budget in seconds (default 240; 8 with --quick)")
    parser.add_argument("--n-particles", type=int, default=None, help="simulated particles (default 5000)")
    parser.add_argument("--pose-mode", choices=("known", "learned"), default="known",
                        help="known: poses from the STAR file (a good map in minutes); "
                             "learned: ab initio, poses from the encoder and a global pose search "
                             "(about 4x slower per step; give it 10 minutes or more)")
    parser.add_argument("--no-notebooks", action="store_true", help="skip executing the notebooks")
    return parser


def run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no start-up chatter
    s = DemoSettings.quick() if args.quick else DemoSettings()
    if args.budget is not None:
        s.budget_s = float(args.budget)
    if args.n_particles is not None:
        s.n_particles = int(args.n_particles)
    s.pose_mode = args.pose_mode
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = demo(out, s, notebooks=not args.no_notebooks)
    print(format_summary(summary))
    return 0


def demo(out: Path, s: DemoSettings, notebooks: bool = True) -> dict:
    """The main job of ``cryovae demo``; returns the summary written to ``out/summary.json``."""
    from cryovae_nb.inference import load_run, write_volumes
    from cryovae_nb.io import read_particles, write_volume
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.train import Trainer, save_sample_png

    t0 = time.monotonic()
    _say(f"1/5 simulating {s.n_particles} L-shape particles ({s.box} px, SNR {s.snr}) in {out}")
    simulate_tutorial_data(out, box=s.box, n_particles=s.n_particles, snr=s.snr, progress=False)
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
    if (run_dir / "config.json").is_file():  # a previous demo's run in this folder: start afresh
        import shutil

        shutil.rmtree(run_dir)
    _say(f"3/5 training ({s.pose_mode} poses) for {s.budget_s:g} s")
    cfg = tutorial_train_config(paths, run_dir, max_time_s=s.budget_s, pose_mode=s.pose_mode,
                                sample_every=10**9, checkpoint_every=10**9, **s.model)
    trainer = Trainer(cfg, progress=False, resume=False)
    result = trainer.train()
    test = trainer.test_indices[:8] if len(trainer.test_indices) else trainer.train_indices[:8]
    images, proj, _ = trainer.reconstruct(test)
    samples_png = out / "sample_grid.png"
    save_sample_png(samples_png, images, proj, trainer.step)
    del trainer

    _say("4/5 reconstruction and FSC against the truth (aligned, both hands tried)")
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
    save_fsc_png(fsc_png, curves)
    write_json_atomic(fsc_json, {
        "pose_mode": s.pose_mode, "mirrored": bool(cmp["aligned"].mirrored),
        "correlation": cmp["aligned"].correlation,
        "correlation_other_hand": cmp["aligned"].correlation_other_hand,
        **fsc_summary(cmp["fsc"]),
        "curves": {k: v.to_dict() for k, v in curves.items()}})
    # an interpolation between the latents of two particles, as MRC frames (ChimeraX: a series)
    enc = run.encode(run.particles.images[:2], progress=False)
    _, frames = run.interpolate(enc.z_mean[0], enc.z_mean[1], 6)
    traj = write_volumes(out / "trajectory", frames, run.pixel_size, prefix="interpolation")
    del run

    html = []
    if notebooks:
        _say("5/5 executing the tutorial notebooks on the same workdir")
        html = run_tutorial_notebooks(out, s)
    else:
        _say("5/5 notebooks skipped (--no-notebooks)")
    summary = {
        "out": str(out), "particles": str(paths.raw), "preprocessed": str(paths.particles),
        "run_dir": str(run_dir), "steps": result.step, "train_seconds": round(result.elapsed_s, 1),
        "pose_mode": s.pose_mode, "preview_png": str(preview), "sample_grid_png": str(samples_png),
        "reconstruction_mrc": str(recon), "fsc_png": str(fsc_png), "fsc_json": str(fsc_json),
        "trajectory_mrcs": [str(p) for p in traj], "notebooks_html": [str(p) for p in html],
        "fsc": fsc_summary(cmp["fsc"]), "mirrored": bool(cmp["aligned"].mirrored),
        "fsc_unaligned": None if cmp["fsc_unaligned"] is None else fsc_summary(cmp["fsc_unaligned"]),
        "total_seconds": round(time.monotonic() - t0, 1), "truth_voxel_size": voxel,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def notebook_parameters(workdir: Path, s: DemoSettings) -> dict:
    """Parameters for the four notebooks so that they share the demo's data and run."""
    model = {**TUTORIAL_MODEL, **s.model}
    common = {"WORKDIR": str(workdir), "STAR_FILE": None, "SIM_BOX": s.box, "SIM_PARTICLES": s.n_particles,
              "SIM_SNR": s.snr}
    train = {"POSE_MODE": s.pose_mode, "LATENT_DIM": model["latent_dim"],
             "ENCODER_LAYERS": model["encoder_layers"], "ENCODER_UNITS": model["encoder_units"],
             "DECODER_LAYERS": model["decoder_layers"], "DECODER_UNITS": model["decoder_units"],
             "TRAIN_BUDGET_S": s.notebook_budget_s, "SAMPLE_EVERY": 10**9, "CHECKPOINT_EVERY": 10**9}
    return {
        "01_preprocess.ipynb": dict(common),
        "02_train.ipynb": {**common, **train},
        "04_evaluate.ipynb": {**common, "N_GALLERY": 8},
        "05_latent_landscape.ipynb": {**common, "EMBED_METHODS": list(s.embed_methods),
                                      "N_CLUSTERS": 3, "TRAJECTORY_STEPS": 6},
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
    lines += [f"  {k:<20} {summary[k]}" for k in ("preview_png", "sample_grid_png", "reconstruction_mrc",
                                                  "fsc_png", "fsc_json", "run_dir")]
    lines.append(f"  trajectory           {len(summary['trajectory_mrcs'])} MRC frames in "
                 f"{Path(summary['trajectory_mrcs'][0]).parent}" if summary["trajectory_mrcs"] else "")
    for p in summary["notebooks_html"]:
        lines.append(f"  notebook             {p}")
    return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = add_demo_parser(argparse.ArgumentParser(prog="python -m cryovae_nb.demo"))
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
