"""The tutorial workspace: where a tutorial's files live, the embedded dataset it simulates and
preprocesses, and the training run it launches.

A tutorial *workdir* holds everything the notebooks pass to each other::

    WORKDIR/project.yaml      which dataset, box and folders the notebooks use  (01_preprocess;
                              ``tutorial/project.py``: another input gets folders of its own)
    WORKDIR/simulated/        the embedded hinge dataset (only when no STAR file is given):
                              particles.star/.mrcs, truth.npz (per-particle hinge parameter t),
                              volumes/conformation_XXX.mrc (the truth map of every hinge level)
    WORKDIR/preprocessed/     particles.star and the files it names:     (01_preprocess)
                              particles.TAG.mrcs, particles.TAG_split.npz,
                              particles.TAG_preprocess.json (TAG: the run's 8 hex digits)
    WORKDIR/<run name>/       the training run                           (02_train)
    WORKDIR/evaluate/         reconstruction, FSC JSON/PNG               (04_evaluate)
    WORKDIR/landscape/        latents, trajectory MRCs, kept particles   (05_latent_landscape)

The embedded dataset is the project's *hinge* phantom (``synthetic.hinge_volume``): the thesis'
L whose short bar is lifted out of plane by 0..60 degrees in 32 equally spaced levels, one level
drawn per particle, so the latent landscape has a real, known motion to recover.
``ensure_tutorial_data`` / ``ensure_tutorial_run`` create what is missing, so every notebook also
runs on its own.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryovae_nb.config import load_config, to_dict
from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.io import read_output_files
from cryovae_nb.model.config import OPTION_NAMES, ModelConfig
from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
from cryovae_nb.synthetic import SimulatedDataset, SimulationConfig, load_truth, simulate
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.rundir import RunFolder
from cryovae_nb.tutorial.project import check_folders, current_project


# The tutorial's model and optimiser settings, in this one place: tutorial_train_config starts
# from them, and so do ensure_tutorial_run, 02_train (its parameters default to None = these) and
# `cryovae demo` (DemoSettings.model holds only the demo's overrides). Any ModelConfig or
# TrainConfig field can be added here. The thesis' network (10x512 encoder, 20x200 decoder,
# lr 1e-5) needs hours on a CPU; this one trains in minutes with known poses.
TUTORIAL_MODEL = dict(latent_dim=8, encoder_layers=3, encoder_units=256, decoder_layers=2,
                      decoder_units=256)
TUTORIAL_TRAIN = dict(batch_size=64, learning_rate=1e-3, pose_mode="known")

TUTORIAL_PHANTOM = "hinge"   # the embedded dataset (synthetic.PHANTOMS: lshape, hinge, two_state)


@dataclass
class TutorialData:
    """Where a tutorial's data lives; ``truth*`` are None / empty for a user's own STAR file."""

    workdir: Path
    raw: Path                        # the particles as acquired (STAR or stack)
    particles: Path                  # preprocessed STAR
    truth: Path | None               # simulation truth.npz
    datadir: Path | None = None      # where the raw STAR file's image paths point
    run_name: str = "run"            # the project's training run (WORKDIR/run_name)

    @property
    def split(self) -> Path | None:
        """The preprocessed split (.npz with is_test) that the preprocessed STAR file names; None
        before preprocessing."""
        files = read_output_files(self.particles) if self.particles.is_file() else None
        return None if files is None else files["split"]

    @property
    def simulated(self) -> bool:
        return self.truth is not None

    @property
    def truth_volume_files(self) -> list[Path]:
        """The truth map of every simulated conformation, in order of the hinge parameter t (as
        ``truth.npz`` lists them; before simulating, those the default tutorial phantom will write)."""
        return [] if self.truth is None else truth_table(self.truth)[1]

    @property
    def truth_volume(self) -> Path | None:
        """The *reference* truth map, for a single (consensus) reconstruction's FSC: the simulated
        conformation nearest the middle of the motion (t = 0.5; the only one of a rigid phantom)."""
        if self.truth is None:
            return None
        t, files = truth_table(self.truth)
        return files[reference_level(t)]

    def run_dir(self, run_name: str | None = None) -> Path:
        """``WORKDIR/run_name`` (None: the project's run)."""
        return self.workdir / (run_name or self.run_name)


def reference_level(volume_t) -> int:
    """Index of the conformation nearest the middle of the motion (t = 0.5; ties: the lower)."""
    return int(np.argmin(np.abs(np.asarray(volume_t, np.float64) - 0.5)))


def truth_table(truth: Path) -> tuple[np.ndarray, list[Path]]:
    """(hinge parameter t of each truth map, their paths) from ``truth.npz``, or, before the simulation, those of
    the default tutorial phantom (nothing is written)."""
    sim = truth.parent
    if truth.is_file():
        try:
            with np.load(truth, allow_pickle=False) as f:  # lazy: only these two small arrays are read
                return np.asarray(f["volume_t"], np.float64), [sim / str(p) for p in f["volume_files"]]
        except (KeyError, OSError, ValueError) as e:
            raise InputError(f"cannot read the simulation truth ({e})", truth) from None
    cfg = SimulationConfig(phantom=TUTORIAL_PHANTOM)
    levels = {"hinge": cfg.hinge_levels, "two_state": 2}.get(cfg.phantom, 1)
    t = np.linspace(0.0, 1.0, levels) if levels > 1 else np.zeros(1)
    return t, [sim / "volumes" / f"conformation_{j:03d}.mrc" for j in range(levels)]


def tutorial_paths(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None,
                   datadir: str | os.PathLike | None = None) -> TutorialData:
    """The paths of a tutorial workdir for the project's dataset (``project.yaml``; ``star_file``
    overrides it). Nothing is written; the truth maps' names are looked up in ``truth.npz`` only
    when ``truth_volume`` / ``truth_volume_files`` are asked for."""
    w = Path(workdir)
    project = current_project(w, star_file, datadir)
    pre = w / project.preprocessed / "particles.star"
    if project.star_file is None:
        sim = w / "simulated"
        return TutorialData(w, sim / "particles.star", pre, sim / "truth.npz", run_name=project.run_name)
    data = project.datadir if star_file is None else (None if datadir is None else Path(datadir))
    return TutorialData(w, project.star_file, pre, None, data, run_name=project.run_name)


def simulate_tutorial_data(workdir: str | os.PathLike, *, box: int = 40, n_particles: int = 2000,
                           snr: float = 0.1, seed: int = 0, progress: bool = True,
                           phantom: str = TUTORIAL_PHANTOM):
    """Simulate the embedded dataset into ``WORKDIR/simulated``: by default the hinge phantom
    (the thesis' L with its short bar lifted 0..60 degrees, 32 levels; ``phantom`` "lshape" is the
    rigid L of thesis §3.4.1, "two_state" its two extremes), random poses, SNR 0.1. An existing
    dataset made with the same settings is reused."""
    cfg = SimulationConfig(phantom=phantom, box=int(box), n_particles=int(n_particles), snr=snr,
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
                                    paths.truth_volume_files, None, cfg, load_truth(paths.truth))
    return simulate(cfg, out, progress=progress)


def ensure_tutorial_data(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None, *,
                         datadir: str | os.PathLike | None = None, box: int = 40,
                         n_particles: int = 2000, snr: float = 0.1, seed: int = 0,
                         phantom: str = TUTORIAL_PHANTOM, preprocess=None,
                         progress: bool = True) -> TutorialData:
    """Make sure the workdir holds preprocessed particles (what 01_preprocess writes).

    The dataset is the project's (``project.yaml``, written by 01_preprocess; ``star_file``
    overrides it). The tutorial's (no STAR file) hinge dataset is simulated when missing (``box``,
    ``n_particles``, ``snr``, ``seed``, ``phantom``); otherwise the user's STAR file is read.
    Preprocessing (``preprocess``: a ``PreprocessConfig``, default tanh + mask at the project's
    box) runs only when its output is missing: existing data, as a previous notebook left it, is
    never replaced here, and data preprocessed from another input is refused (``InputError``).
    """
    paths = tutorial_paths(workdir, star_file, datadir)
    project = current_project(workdir, star_file, datadir)
    star_file, datadir = (None, None) if paths.simulated else (paths.raw, paths.datadir)
    if star_file is None and not paths.raw.is_file():
        simulate_tutorial_data(workdir, box=box, n_particles=n_particles, snr=snr, seed=seed,
                               phantom=phantom, progress=progress)
    elif star_file is not None and not paths.raw.is_file():
        raise InputError("STAR file not found", paths.raw)
    check_folders(project)  # never another input's preprocessed particles
    split = paths.split
    if not (split is not None and split.is_file()):
        paths.particles.parent.mkdir(parents=True, exist_ok=True)
        preprocess_stack(paths.raw, paths.particles, preprocess or PreprocessConfig(box=project.target_box),
                         datadir=datadir, progress=progress)
    return paths


def tutorial_train_config(data: TutorialData | str | os.PathLike, run_dir: str | os.PathLike, *,
                          max_steps: int = 100_000, max_time_s: float | None = 180.0, seed: int = 0,
                          log_every: int = 25, sample_every: int = 100, checkpoint_every: int = 500,
                          **overrides):
    """A ``TrainConfig`` for the tutorial: the small model of ``TUTORIAL_MODEL`` and the settings
    of ``TUTORIAL_TRAIN``; any ``ModelConfig`` or ``TrainConfig`` field can be overridden by name
    (each name goes where it belongs, in the two dicts too; model options by their flat names,
    ``ModelConfig.with_options``)."""
    model_fields = set(OPTION_NAMES)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_kw, train_kw = {}, {}
    for k, v in {**TUTORIAL_MODEL, **TUTORIAL_TRAIN, **overrides}.items():
        if k in train_fields and k != "model":   # batch_size, learning_rate go here
            train_kw[k] = v
        elif k in model_fields:
            model_kw[k] = v
        else:
            raise ConfigError(f"tutorial_train_config: unknown setting {k!r}")
    if isinstance(data, TutorialData):
        split = data.split
        train_kw.setdefault("split_file", str(split) if split is not None and split.is_file() else None)
        data = data.particles
    # this function's own arguments win over the same names in the dicts
    train_kw.update(max_steps=int(max_steps), max_time_s=max_time_s, seed=int(seed),
                    log_every=int(log_every), sample_every=int(sample_every),
                    checkpoint_every=int(checkpoint_every))
    model = ModelConfig().with_options(**model_kw)
    return TrainConfig(data=str(data), run_dir=str(run_dir), model=model, **train_kw)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return RunFolder(run_dir).has_checkpoint()


def ensure_tutorial_run(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None, *,
                        run_name: str | None = None, datadir: str | os.PathLike | None = None,
                        budget_s: float = 120.0, max_steps: int = 100_000, progress: bool = True,
                        data_kwargs: dict | None = None, **train_overrides) -> Path:
    """The run directory ``WORKDIR/run_name`` (None: the project's run), trained first (for
    ``budget_s`` seconds, tutorial settings) when it has no checkpoint, so the evaluation notebooks
    run on their own. A run trained on other particles than the project's is refused."""
    paths = tutorial_paths(workdir, star_file, datadir)
    run_dir = paths.run_dir(run_name)
    if has_checkpoint(run_dir):
        trained_on = Path(RunFolder(run_dir).config().data).resolve()
        if trained_on != paths.particles.resolve():
            raise InputError(f"was trained on {trained_on}, not on the project's {paths.particles}; "
                             "set RUN_NAME to a new folder (or None for the project's run)", run_dir)
        return run_dir
    from cryovae_nb.training.trainer import Trainer  # heavy: TensorFlow, only when a run must be trained

    data = ensure_tutorial_data(workdir, star_file, datadir=datadir, progress=progress, **(data_kwargs or {}))
    cfg = tutorial_train_config(data, run_dir, max_steps=max_steps, max_time_s=budget_s, **train_overrides)
    Trainer(cfg, progress=progress).train()
    return run_dir
