"""Training: the `Trainer` behind a notebook cell, ``python -m cryovae_nb.train`` and ``cryovae train``.

A run directory holds everything a run needs to be resumed, inspected or used for inference::

    run_dir/cryovae_run.json            marks the folder as a run of ours (format version), written first
    run_dir/config.json, config.yaml    the TrainConfig (model config nested), written at start
    run_dir/data.json                   the data's fingerprint, checked on resume (cryovae_nb.rundir)
    run_dir/split.npz                   train / test particle indices (0-based rows of the data)
    run_dir/previous-N/                 an earlier run in this folder, moved aside when started over
    run_dir/metrics.jsonl               one JSON record per line: step, split, recon, kl, averaging, total, ...;
                                        test records add kl_per_dim, active_dims (latent_collapsed)
    run_dir/samples/step_XXXXXXXX.png   inputs above the projections of their reconstructed volumes
    run_dir/samples/step_XXXXXXXX/      a few of those volumes as MRC (voxel size in the header)
    run_dir/checkpoints/step_XXXXXXXX/  tf.train.Checkpoint (weights + optimizer) + state.json
    run_dir/checkpoints/latest          name of the newest complete checkpoint, written last
                                        (a resume falls back to an older one if it is unreadable)
    run_dir/STOP                        create it to stop a run cleanly (it is removed when honoured)

Reproducibility: the initial weights come from the seed, the batch order of epoch ``e`` is a
permutation drawn from ``(seed, e)``, and the noise of step ``s`` (reparametrisation) from the
stateless seed ``(seed, s)``. A run killed at any moment and resumed from its last checkpoint
therefore takes the same steps an uninterrupted run would have taken.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import queue
import re
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from cryovae_nb import rundir
from cryovae_nb.argcheck import nonnegative_int, output_dir, positive_float, positive_int
from cryovae_nb.atomic import atomic_path, write_json_atomic, write_text_atomic
from cryovae_nb.config import check_fields, from_dict, load_config, save_config, to_dict
from cryovae_nb.errors import ConfigError, CryoVAEError, InputError, TrainingError
from cryovae_nb.faults import fault_point
from cryovae_nb.model import ModelConfig

LOSS_KEYS = ("recon", "kl", "averaging", "pose", "total", "noise_var")
# what a held-out evaluation adds to the mean losses (test records only)
EVAL_KEYS = ("kl_per_dim", "active_dims", "latent_collapsed")
ACTIVE_VARIANCE = 0.01     # a latent dimension is active when Var_x(z_mean) exceeds this (Burda et al. 2015)
COLLAPSE_MIN_STEP = 500    # collapse is judged from max(kl_warmup_steps, this) steps on


class LatentCollapseWarning(UserWarning):
    """A held-out evaluation found no active latent dimension (`Trainer.check_latent_collapse`)."""


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    data: str = ""                      # preprocessed particles: RELION .star or a bare .mrcs/.mrc
    datadir: str | None = None          # where the STAR file's image paths are relative to
    run_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 120
    learning_rate: float | None = None  # None: model.learning_rate (1e-5, thesis §3.3.3)
    pose_mode: str | None = None        # None: model.pose_mode; "known" needs poses in the STAR file
    max_steps: int = 100_000
    max_time_s: float | None = None     # wall-clock budget of one train() call
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    test_fraction: float = 0.1
    split_file: str | None = None       # .npz with 'train' and 'test' indices (from preprocessing)
    n_test_eval: int = 480              # held-out images scored at every log
    n_samples: int = 10                 # test images shown in the sample grid
    n_sample_volumes: int = 2           # of those, how many volumes are written as MRC
    seed: int = 0
    prefetch: int = 4                   # batches read ahead by the loader thread
    jit: bool = False                   # XLA-compile the train step (faster, slow first step)
    deterministic: bool = True          # tf.config.experimental.enable_op_determinism()

    def validate(self) -> None:
        check_fields(self)
        positive = ("batch_size", "max_steps", "log_every", "sample_every", "checkpoint_every",
                    "keep_checkpoints", "prefetch")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"TrainConfig.test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.pose_mode not in (None, "learned", "known"):
            raise ConfigError(f"TrainConfig.pose_mode must be 'learned' or 'known', got {self.pose_mode!r}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"TrainConfig.max_time_s must be > 0, got {self.max_time_s}")
        if self.n_test_eval < 0 or self.n_samples < 0 or self.n_sample_volumes < 0:
            raise ConfigError("TrainConfig.n_test_eval, n_samples and n_sample_volumes must be >= 0")

    def resolved(self) -> "TrainConfig":
        """The config with learning_rate / pose_mode / batch_size / seed written into the model
        config, so the saved config has one truth."""
        model = self.model
        if self.learning_rate is not None:
            model = dataclasses.replace(model, learning_rate=float(self.learning_rate))
        if self.pose_mode is not None:
            model = dataclasses.replace(model, pose_mode=self.pose_mode)
        # the trainer's batch size and seed drive the model too (its averaging loss, its init)
        model = dataclasses.replace(model, batch_size=int(self.batch_size), seed=int(self.seed))
        return dataclasses.replace(self, model=model, learning_rate=model.learning_rate,
                                   pose_mode=model.pose_mode)


# --------------------------------------------------------------------------------------------
# data: split, reproducible epoch order, prefetching loader


def make_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices; the same for the same (n, fraction, seed)."""
    perm = np.random.default_rng([seed, 0x5B17]).permutation(n)
    n_test = int(round(n * test_fraction))
    if test_fraction > 0:
        n_test = min(max(n_test, 1), n - 1)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def load_split(path: str | os.PathLike, n: int, output_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a split ``.npz`` and check it against ``n``: arrays 'train' and 'test' (0-based
    indices), or a boolean 'is_test' of length ``n`` (what preprocessing writes). ``output_id``:
    the run id of the data's STAR file (``Particles.output_id``); a split written by another
    preprocessing run is refused."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if output_id is not None and "run_id" in f and str(f["run_id"]) != output_id:
                raise InputError("written by another preprocessing run than the particles' STAR file "
                                 "(interrupted, or files from two runs); rerun the preprocessing", path)
            if "is_test" in f:
                is_test = np.asarray(f["is_test"], bool)
                if is_test.shape != (n,):
                    raise InputError(f"'is_test' has {is_test.size} entries, the data has {n} particles", path)
                train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
            else:
                train, test = np.asarray(f["train"], np.int64), np.asarray(f["test"], np.int64)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read split file ({e})", path) from None
    except KeyError:
        raise InputError("split file needs arrays 'train' and 'test' (or 'is_test')", path) from None
    for name, idx in (("train", train), ("test", test)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"'{name}' indices outside 0..{n - 1} (the data has {n} particles)", path)
    if np.intersect1d(train, test).size:
        raise InputError("'train' and 'test' share particles", path)
    return train, test


class EpochOrder:
    """Which particles make up the batch of a given step, for one rank of ``size``.

    Epoch ``e`` visits the training indices in a permutation drawn from ``(seed, e)``; every rank
    takes an interleaved share of it, so ranks see disjoint images and the same step count per
    epoch. The incomplete last batch is dropped: the averaging loss compares volumes within a
    batch, and a constant batch shape keeps the compiled step from retracing.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, rank: int = 0, size: int = 1):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.size = int(batch_size), int(seed), int(rank), int(size)
        self.batches_per_epoch = len(self.indices) // (self.batch_size * self.size)
        if self.batches_per_epoch < 1:
            raise ConfigError(f"{len(self.indices)} training images cannot fill one batch of "
                              f"{self.batch_size} x {self.size} rank(s); lower batch_size")
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_indices(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch, 0xE90C]).permutation(self.indices)
            used = perm[: self.batches_per_epoch * self.batch_size * self.size]
            self._cache = (epoch, used[self.rank :: self.size])
        return self._cache[1]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of a global step."""
        return divmod(int(step), self.batches_per_epoch)

    def batch(self, step: int) -> np.ndarray:
        epoch, pos = self.position(step)
        return self.epoch_indices(epoch)[pos * self.batch_size : (pos + 1) * self.batch_size]


class Prefetcher:
    """Reads the batches of steps ``start, start+1, ...`` in a background thread.

    Only the images of each batch are read from the (memory-mapped) stack, so the stack is never
    loaded whole; a bounded queue keeps at most ``depth`` batches in memory. Reading errors and
    non-finite images are handed to the consumer, which raises them in the training thread.
    """

    def __init__(self, fetch: Callable[[int], tuple], start: int, depth: int = 4):
        self._fetch, self._queue = fetch, queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start,), daemon=True, name="cryovae-loader")
        self._thread.start()

    def _run(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item = (step, self._fetch(step), None)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread
                item = (step, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def get(self, step: int):
        got, data, err = self._queue.get()
        if err is not None:
            raise err
        assert got == step, f"loader out of sync: expected step {step}, got {got}"
        return data

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# run directory pieces: checkpoints, metrics log


def make_checkpoint(model, optimizer=None):
    """A tf.train.Checkpoint of the model's (and optimizer's) variables, keyed by variable path.

    Keyed explicitly because the object graph of a Keras 3 model does not reach layers kept in
    Python lists (the encoder/decoder stacks): ``Checkpoint(model=model)`` would silently skip them.
    """
    import tensorflow as tf

    def by_path(variables):
        out = {v.path: v for v in variables}
        if len(out) != len(variables):
            raise TrainingError("variable paths are not unique; cannot checkpoint by name")
        return out

    parts = {"weights": by_path(model.weights)}
    if optimizer is not None:
        # optimizer paths start with its name, which Keras numbers per process (adam, adam_1, ...);
        # the learning rate is left out so that a resumed run uses the configured one
        state = [v for v in optimizer.variables if v.path.split("/")[-1] != "learning_rate"]
        parts["optimizer"] = {k.split("/", 1)[-1]: v for k, v in by_path(state).items()}
    return tf.train.Checkpoint(**parts)


# names atomic_path gives a checkpoint folder or the pointer while they are written, and the
# name a replaced checkpoint folder has for a moment
_CHECKPOINT_TEMPORARY = re.compile(r"\.(step_\d+|latest)\.[A-Za-z0-9_]{8}\.tmp.*|\.step_\d+\.old")


class CheckpointManager:
    """Complete-or-absent checkpoints: each is written into a temporary folder that is renamed
    into place, and the ``latest`` pointer is rewritten (atomically) only after that."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.directory, self.keep = Path(directory), int(keep)

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{int(step):08d}"

    def latest(self) -> Path | None:
        pointer = self.directory / "latest"
        if not pointer.is_file():
            return None
        path = self.directory / pointer.read_text().strip()
        if not (path / "state.json").is_file():
            raise TrainingError(f"{pointer}: points at {path.name}, which is missing or incomplete")
        return path

    def all(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("step_*") if p.is_dir() and (p / "state.json").is_file())

    def save(self, checkpoint, step: int, state: dict) -> Path:
        """Write ``checkpoint`` (a tf.train.Checkpoint) and ``state`` as step ``step``."""
        final = self.path_for(step)
        with atomic_path(final) as tmp:
            tmp.mkdir()
            checkpoint.write(str(tmp / "ckpt"))
            write_json_atomic(tmp / "state.json", state)
            fault_point(f"checkpoint-written@{step}")
        fault_point(f"checkpoint-renamed@{step}")
        write_text_atomic(self.directory / "latest", final.name + "\n")
        fault_point(f"checkpoint-pointer@{step}")
        for old in self.all()[: -self.keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def remove_temporaries(self) -> list[str]:
        """Remove what a run killed mid-save left here (a checkpoint or pointer still under its
        temporary name, a replaced checkpoint moved aside); these names are only ever ours."""
        if not self.directory.is_dir():
            return []
        removed = []
        for p in self.directory.iterdir():
            if _CHECKPOINT_TEMPORARY.fullmatch(p.name):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p.name)
        return removed

    def restore_newest(self, checkpoint) -> tuple[Path | None, dict | None, list[str]]:
        """Restore the newest checkpoint that reads back whole: ``(path, state, problems)``, where
        ``problems`` describes each newer checkpoint skipped as unreadable; ``(None, None, problems)``
        when there is none to restore (``problems`` empty: there never was one)."""
        problems = []
        try:
            self.latest()
        except TrainingError as e:  # the pointer names a checkpoint that is gone
            problems.append(str(e))
        # newest first by step: a folder with its state.json was renamed into place complete, so
        # one newer than the pointer (a kill before the pointer was rewritten) is good to use
        for path in sorted(self.all(), reverse=True):
            try:
                return path, self.restore(checkpoint, path), problems
            except TrainingError as e:
                problems.append(str(e))
        return None, None, problems

    @staticmethod
    def restore(checkpoint, path: str | os.PathLike) -> dict:
        """Load weights (+ optimizer state) from ``path`` into ``checkpoint``; return its state.json.

        Every variable of ``checkpoint`` must be found in the file; the file may hold more (the
        optimizer state, when only the weights are wanted for inference)."""
        path = Path(path)
        try:
            status = checkpoint.read(str(path / "ckpt"))
            status.assert_existing_objects_matched().expect_partial()
            return json.loads((path / "state.json").read_text())
        except CryoVAEError:
            raise
        except Exception as e:  # TF raises several types for a missing or mismatched checkpoint
            raise TrainingError(f"{path}: cannot restore checkpoint ({type(e).__name__}: {e})") from None


def _clean(v, digits: int | None = None):
    """JSON-safe value: NaN/inf become null (JSON has no NaN); None, bools and ints stay as they
    are, lists/tuples/arrays become lists of clean values; ``digits``: significant digits kept."""
    if v is None or isinstance(v, (bool, np.bool_)):
        return None if v is None else bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (list, tuple, np.ndarray)) and np.ndim(v) > 0:
        return [_clean(x, digits) for x in v]
    v = float(v)
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}") if digits else v


class MetricsLog:
    """``metrics.jsonl``: one record per line, appended as training goes.

    An append-only log is the one file not written by temp + rename (rewriting it at every log
    would be quadratic); a line is written with one ``write`` and flushed, so a kill can at worst
    leave a truncated last line, which `read_metrics` skips and `truncate` removes on resume.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def truncate(self, step: int) -> None:
        """Keep only the records up to ``step`` (after resuming from a checkpoint at ``step``)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a ``metrics.jsonl`` (or of ``run_dir/metrics.jsonl``); a torn last line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def save_sample_png(path: str | os.PathLike, images: np.ndarray, projections: np.ndarray, step: int) -> None:
    """Inputs (top row) above the projections of their reconstructed volumes (thesis Fig. 3.4)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # Figure without pyplot: no global state, thread-safe

    k = len(images)
    fig = Figure(figsize=(1.3 * k + 0.8, 2.9), dpi=80)
    axes = fig.subplots(2, k, squeeze=False)
    for j in range(k):
        for row, arr in enumerate((images[j], projections[j])):
            ax = axes[row, j]
            ax.imshow(arr, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(str(j), fontsize=8)
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("model")
    fig.suptitle(f"step {step}", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# --------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    step: int
    reason: str                 # "max_steps" | "max_time" | "stop_requested" | "stop_file"
    checkpoint: str | None      # the checkpoint written last
    elapsed_s: float


class Callback:
    """Receives live training output (a widget subclasses it; every method is optional)."""

    def on_metrics(self, record: dict) -> None: ...

    def on_samples(self, images: np.ndarray, projections: np.ndarray, step: int) -> None: ...

    def on_checkpoint(self, path: str) -> None: ...


class Trainer:
    """Trains a CryoVAE on a particle stack; resumable, stoppable, deterministic given the seed.

    ``resume=False`` starts over: the run directory's old run is moved into ``run_dir/previous-N``
    (never deleted). A folder that is not empty and not a run of ours is refused unchanged, and so
    is a resume on other data than the run's (``cryovae_nb.rundir``). ``restart_hint`` is how the
    caller's user starts over (the CLI passes ``--restart``); error messages name it.

    ``rank``, ``size``, ``is_chief``, ``grad_reducer`` and ``broadcast`` are the hooks for data-
    parallel training (cryovae_nb.distributed): each rank reads its own share of every epoch,
    ``grad_reducer(grads) -> grads`` averages the gradients across ranks inside the step,
    ``broadcast(trainer)`` runs after the model is built and any checkpoint restored (to copy rank
    0's variables to all ranks), and only the chief writes files. ``reduce_metrics`` and
    ``stop_reason`` may be overridden to agree across ranks.
    """

    def __init__(self, config: TrainConfig, *, callbacks: Iterable[Any] = (), resume: bool = True,
                 progress: bool = True, rank: int = 0, size: int = 1, is_chief: bool | None = None,
                 grad_reducer: Callable | None = None, broadcast: Callable[["Trainer"], None] | None = None,
                 restart_hint: str = "resume=False"):
        import keras
        import tensorflow as tf

        from cryovae_nb.io import read_particles
        from cryovae_nb.model import build_model, make_eval_step, make_optimizer, make_train_step

        if isinstance(config, dict):
            config = from_dict(TrainConfig, config)
        config.validate()
        cfg = config.resolved()
        if not cfg.data:
            raise ConfigError("TrainConfig.data: no particle file given")
        self.rank, self.size = int(rank), int(size)
        self.is_chief = (self.rank == 0) if is_chief is None else bool(is_chief)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.run_dir = Path(cfg.run_dir)
        self._restart_hint = restart_hint
        self._stop_event = threading.Event()
        self._collapse_warned = False  # check_latent_collapse warns once per Trainer

        # data ---------------------------------------------------------------------------
        self.particles = read_particles(cfg.data, datadir=cfg.datadir)
        n, box = len(self.particles), int(self.particles.box)
        if box != cfg.model.box:
            if cfg.model.box != ModelConfig().box:
                raise ConfigError(f"model.box is {cfg.model.box} but the images in {cfg.data} are "
                                  f"{box} px; set model.box to {box}")
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, box=box))
        if cfg.model.pose_mode == "known" and self.particles.poses is None:
            raise InputError("pose_mode 'known' needs poses (rlnAngleRot/Tilt/Psi) in the STAR file", cfg.data)
        self.config = cfg
        self.pixel_size = float(self.particles.pixel_size) if self.particles.pixel_size else 1.0
        if self.is_chief:
            rundir.claim(self.run_dir)  # before anything is written: refuses a folder not ours
        if cfg.split_file:
            self.train_indices, self.test_indices = load_split(cfg.split_file, n, self.particles.output_id)
        else:
            self.train_indices, self.test_indices = make_split(n, cfg.test_fraction, cfg.seed)
        self.order = EpochOrder(self.train_indices, cfg.batch_size, cfg.seed, self.rank, self.size)
        known = self.particles.poses if cfg.model.pose_mode == "known" else None
        self._rotations = None if known is None else np.asarray(known.rotations, np.float32)
        self._shifts = None if known is None else np.asarray(known.shifts, np.float32)

        # model --------------------------------------------------------------------------
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(cfg.seed)
        self.model = build_model(cfg.model)
        self.optimizer = make_optimizer(self.model)  # Adam at model.learning_rate, built
        self._train_step = make_train_step(self.model, self.optimizer, jit=cfg.jit, grad_reducer=grad_reducer)
        self._eval_step = make_eval_step(self.model, jit=cfg.jit)
        self._checkpoint = make_checkpoint(self.model, self.optimizer)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg.keep_checkpoints)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_chief)
        self.step, self.elapsed_s, self.last_checkpoint = 0, 0.0, None

        if self.is_chief and rundir.interrupted_move(self.run_dir) is not None:
            resume = False  # a start-over was killed while moving the old run aside: finish it
        resumed = resume and self._resume()
        if not resumed and self.is_chief:
            self._move_previous_run_aside()
        if self.is_chief:
            self.checkpoints.remove_temporaries()  # left by a run killed while saving
        if broadcast is not None:
            broadcast(self)
        if self.is_chief:
            self._write_run_files(resumed)
            fault_point("run-files-written")

    # ---- run directory -------------------------------------------------------------------

    def _write_run_files(self, resumed: bool) -> None:
        """The run's provenance, written when it starts; a resume only fills in what a run from
        an older version lacks, never rewriting the record of what the run was trained on."""
        def missing(name):
            return not (resumed and (self.run_dir / name).exists())

        for name in ("config.json", "config.yaml"):
            if missing(name):
                save_config(self.config, self.run_dir / name)
        if missing("split.npz"):
            with atomic_path(self.run_dir / "split.npz") as tmp:
                np.savez(tmp, train=self.train_indices, test=self.test_indices)
        if missing("data.json"):
            write_json_atomic(self.run_dir / "data.json", self._fingerprint())

    def _fingerprint(self) -> dict:
        if getattr(self, "_fingerprint_cache", None) is None:
            self._fingerprint_cache = rundir.data_fingerprint(self.particles, self.config.data,
                                                              self.config.datadir)
        return self._fingerprint_cache

    def _move_previous_run_aside(self) -> None:
        """A fresh start in a used run folder (resume=False, or killed before its first checkpoint):
        the old run's files would mix with the new run's, so they move to ``previous-N``."""
        moved = rundir.move_aside(self.run_dir)
        if moved is not None:
            warnings.warn(f"{self.run_dir}: starting a new run; the previous one was moved to {moved}",
                          stacklevel=3)

    def _resume(self) -> bool:
        """Restore the newest intact checkpoint after checking the run is this one; False: none."""
        try:
            has_any = self.checkpoints.latest() is not None or bool(self.checkpoints.all())
        except TrainingError:
            has_any = True
        if not has_any:
            return False
        self._check_resumable()
        path, state, problems = self.checkpoints.restore_newest(self._checkpoint)
        if path is None:
            raise TrainingError(f"{self.run_dir}: no intact checkpoint to resume from ("
                                + "; ".join(problems) + f"). Start over with {self._restart_hint}: the "
                                "old run is moved to previous-N in the run folder, not deleted")
        if problems:
            warnings.warn(f"{self.run_dir}: newer checkpoint(s) unreadable ({'; '.join(problems)}); "
                          f"resuming from {path.name}, the newest intact one", stacklevel=3)
        self._restore(path, state)
        pointer = self.checkpoints.directory / "latest"
        if self.is_chief and (not pointer.is_file() or pointer.read_text().strip() != path.name):
            write_text_atomic(pointer, path.name + "\n")  # a kill came before it was rewritten
        return True

    def _check_resumable(self) -> None:
        """Refuse to resume a run whose model or data differ from the ones it was trained with."""
        how = (f"resume with the run's own model and data, use a new run folder, or start over here "
               f"with {self._restart_hint} (the old run is moved to previous-N, not deleted)")
        data_path = self.run_dir / "data.json"
        if self.is_chief and data_path.is_file():
            try:
                saved_data = json.loads(data_path.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"{data_path}: unreadable ({e}); {how}") from None
            now = self._fingerprint()
            diffs = rundir.fingerprint_differences(saved_data, now)
            if diffs:
                raise ConfigError(f"{data_path}: the run was trained on other data ({saved_data.get('data')}) "
                                  f"than {now['data']}: " + "; ".join(diffs) + f". To go on: {how}")
            if saved_data.get("data") not in (None, now["data"]):
                warnings.warn(f"{self.run_dir}: the data moved ({saved_data['data']} -> {now['data']}); "
                              "same content, resuming", stacklevel=4)
        split_path = self.run_dir / "split.npz"
        if self.is_chief and split_path.is_file():
            train, test = load_split(split_path, len(self.particles))
            if not (np.array_equal(train, self.train_indices) and np.array_equal(test, self.test_indices)):
                raise ConfigError(f"{split_path}: the run's train/test split differs from the one the "
                                  f"config gives now ({self.config.split_file or 'test_fraction and seed'}); "
                                  f"{how}")
        path = self.run_dir / "config.json"
        if not path.exists():
            return
        saved = load_config(TrainConfig, path)
        # the architecture must match; rates and the batch may change between sessions
        free = ("learning_rate", "batch_size", "seed")
        arch = [{k: v for k, v in to_dict(c.model).items() if k not in free} for c in (saved, self.config)]
        if arch[0] != arch[1]:
            raise ConfigError(f"{path}: the run was trained with a different model config; {how}")
        for name in ("seed", "batch_size"):
            if getattr(saved, name) != getattr(self.config, name):
                warnings.warn(f"{name} changed since the run started ({getattr(saved, name)} -> "
                              f"{getattr(self.config, name)}); the resumed run is not bit-for-bit "
                              "the uninterrupted one", stacklevel=3)

    def _restore(self, path: Path, state: dict) -> None:
        self.step = int(state["step"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.last_checkpoint = str(path)
        if "n_train" in state and state["n_train"] != len(self.train_indices):
            raise ConfigError(f"{path}: checkpoint was trained on {state['n_train']} images, the data "
                              f"now has {len(self.train_indices)} training images")
        self.metrics.truncate(self.step)

    def save_checkpoint(self) -> str:
        """Checkpoint the current step (chief only); refuses weights that are not finite."""
        if not all(np.isfinite(v.numpy()).all() for v in self.model.trainable_variables):
            raise TrainingError(f"weights are not finite at step {self.step}; not checkpointed. "
                                f"Last good checkpoint: {self.last_checkpoint}")
        epoch, pos = self.order.position(self.step)
        state = {"step": self.step, "epoch": epoch, "position": pos, "seed": self.config.seed,
                 "n_train": len(self.train_indices), "elapsed_s": self.elapsed_s,
                 "pixel_size": self.pixel_size, "box": int(self.config.model.box)}
        if self.is_chief:
            path = self.checkpoints.save(self._checkpoint, self.step, state)
            self.last_checkpoint = str(path)
            self._emit("on_checkpoint", str(path))
        return self.last_checkpoint

    # ---- data ----------------------------------------------------------------------------

    def _images(self, idx: np.ndarray) -> np.ndarray:
        # ParticleStack reads refuse NaN/Inf, naming the file and image (io/mrc.py)
        return np.asarray(self.particles.images[idx], dtype=np.float32)

    def _batch(self, idx: np.ndarray):
        images = self._images(idx)
        if self._rotations is None:
            return images, None, None
        return images, self._rotations[idx], self._shifts[idx]

    def _fetch(self, step: int):
        return self._batch(self.order.batch(step))

    # ---- steps, evaluation, samples --------------------------------------------------------

    def _seed(self, step: int):
        import tensorflow as tf

        return tf.constant([self.config.seed, step], dtype=tf.int32)

    def evaluate(self, indices: np.ndarray | None = None) -> dict:
        """Mean losses over ``indices`` (default: the first ``n_test_eval`` test images), plus how
        much the latent is used there: ``kl_per_dim`` (list, nats per image for each latent
        dimension; they sum to ``kl``) and ``active_dims``, the number of dimensions whose
        ``z_mean`` varies across the images by more than ``ACTIVE_VARIANCE`` (Burda et al. 2015;
        None for fewer than 2 images). 0 active dimensions: the latent says nothing about the
        particles (see `check_latent_collapse`)."""
        idx = self.test_indices[: self.config.n_test_eval] if indices is None else np.asarray(indices)
        if len(idx) == 0:
            return {}
        sums, total = {k: 0.0 for k in LOSS_KEYS}, 0
        kl_dims, z_means = 0.0, []
        for start in range(0, len(idx), self.config.batch_size):
            chunk = idx[start : start + self.config.batch_size]
            images, rot, sh = self._batch(chunk)
            losses = self._eval_step(images, rot, sh, None)  # seed None: z = z_mean, no noise
            for k in LOSS_KEYS:
                sums[k] += float(losses[k]) * len(chunk)
            kl_dims = kl_dims + np.asarray(losses["kl_per_dim"], np.float64) * len(chunk)
            z_means.append(np.asarray(losses["z_mean"], np.float64))
            total += len(chunk)
        out = {k: v / total for k, v in sums.items()}
        out["kl_per_dim"] = [float(v) for v in np.atleast_1d(kl_dims / total)]
        z = np.concatenate(z_means)
        out["active_dims"] = int(np.sum(z.var(axis=0) > ACTIVE_VARIANCE)) if len(z) > 1 else None
        return out

    def check_latent_collapse(self, losses: dict, step: int | None = None) -> dict:
        """Flag a held-out evaluation (``evaluate()``'s dict) whose latent is unused.

        From step ``max(kl_warmup_steps, COLLAPSE_MIN_STEP)`` on (earlier, an unused latent is
        just a model that has not learned yet), 0 active dimensions add ``latent_collapsed: True``
        to the returned copy, and the first time it happens in this Trainer, the chief warns.
        """
        step = self.step if step is None else int(step)
        if losses.get("active_dims") != 0 or step < max(self.config.model.kl_warmup_steps, COLLAPSE_MIN_STEP):
            return losses
        if not self._collapse_warned and self.is_chief:
            self._collapse_warned = True
            n = len(losses.get("kl_per_dim") or []) or self.config.model.latent_dim
            kl = losses.get("kl")
            kl_text = "?" if kl is None or not math.isfinite(kl) else f"{kl:.3g}"
            warnings.warn(
                f"step {step}: the latent carries no information about the particles (0 of {n} "
                f"dimensions active on the held-out images, KL {kl_text} nats/image): either the "
                "particles are homogeneous, or the posterior collapsed. If you expect heterogeneity: "
                "with known poses keep model.latent_inference 'auto' (latents read from the decoder "
                "at each pose); the encoder's latent (learned poses, or 'encoder') measured collapsed "
                "at SNR 0.1, and kl_warmup_steps / free_bits did not help (README).",
                LatentCollapseWarning, stacklevel=2)
        return {**losses, "latent_collapsed": True}

    def reconstruct(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, projections of their reconstructed volumes, volumes) for particle rows."""
        from cryovae_nb.geometry import quaternion_to_matrix

        images, rot, sh = self._batch(np.asarray(indices))
        enc = self.model.encode(images, rotations=rot, shifts=sh)
        volumes = self.model.decode(enc["z_mean"])
        if rot is None:
            rot = quaternion_to_matrix(np.asarray(enc["quaternion"])).astype(np.float32)
            sh = np.asarray(enc["shift"], np.float32)
        proj = self.model.add_offset(self.model.project(volumes, rot, sh), enc.get("offset"))
        proj = np.asarray(self.model.image_prediction(proj))  # in the images' units
        return images, proj, np.asarray(volumes)

    def write_samples(self) -> None:
        from cryovae_nb.io import write_volume

        pool = self.test_indices if len(self.test_indices) else self.train_indices
        idx = pool[: self.config.n_samples]
        if len(idx) == 0:
            return
        images, proj, volumes = self.reconstruct(idx)
        if self.is_chief:
            name = f"step_{self.step:08d}"
            save_sample_png(self.run_dir / "samples" / f"{name}.png", images, proj, self.step)
            for j in range(min(self.config.n_sample_volumes, len(volumes))):
                write_volume(self.run_dir / "samples" / name / f"particle_{int(idx[j]):06d}.mrc",
                             volumes[j], self.pixel_size)
        self._emit("on_samples", images, proj, self.step)

    # ---- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask a running train() to stop after the current step (thread-safe; for callbacks/widgets)."""
        self._stop_event.set()

    def stop_reason(self, started: float) -> str | None:
        cfg = self.config
        if self.step >= cfg.max_steps:
            return "max_steps"
        if self._stop_event.is_set():
            return "stop_requested"
        if cfg.max_time_s is not None and time.monotonic() - started >= cfg.max_time_s:
            return "max_time"
        if (self.run_dir / "STOP").exists():
            return "stop_file"
        return None

    def reduce_metrics(self, record: dict) -> dict:
        """Hook: average a metrics record across ranks (identity for one process)."""
        return record

    def _emit(self, name: str, *args) -> None:
        if not self.is_chief:
            return
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if callable(fn):
                fn(*args)

    def _log(self, split: str, losses: dict, images_per_s: float | None) -> dict:
        record = {"step": self.step, "split": split, **{k: _clean(losses[k]) for k in LOSS_KEYS},
                  "images_per_s": None if images_per_s is None else round(images_per_s, 2),
                  "time": round(self.elapsed_s, 3)}
        # held-out extras (evaluate(), check_latent_collapse()); per-dimension KL to 4 digits
        record.update({k: _clean(losses[k], 4) for k in EVAL_KEYS if k in losses})
        record = self.reduce_metrics(record)
        self.metrics.append(record)
        self._emit("on_metrics", record)
        return record

    def train(self) -> TrainResult:
        """Run until max_steps, the time budget, stop() or a STOP file; checkpoint at the end."""
        from tqdm.auto import tqdm

        cfg = self.config
        started = time.monotonic()
        base_elapsed = self.elapsed_s
        self._stop_event.clear()
        loader = Prefetcher(self._fetch, self.step, cfg.prefetch)
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.is_chief), desc="train")
        acc, n_acc, step_time = {k: 0.0 for k in LOSS_KEYS}, 0, 0.0
        try:
            while (reason := self.stop_reason(started)) is None:
                t0 = time.perf_counter()
                images, rot, sh = loader.get(self.step)
                losses = self._train_step(images, rot, sh, self._seed(self.step))
                values = {k: float(losses[k]) for k in LOSS_KEYS}
                step_time += time.perf_counter() - t0
                if not all(math.isfinite(v) for v in values.values()):
                    raise TrainingError(
                        f"the loss became {values['total']} at step {self.step + 1} "
                        f"(recon {values['recon']}, kl {values['kl']}, averaging {values['averaging']}); "
                        f"training stopped. Last good checkpoint: {self.last_checkpoint or 'none'}. "
                        "Try a lower learning rate or check the input normalisation.")
                self.step += 1
                fault_point(f"step@{self.step}")
                self.elapsed_s = base_elapsed + time.monotonic() - started
                for k in LOSS_KEYS:
                    acc[k] += values[k]
                n_acc += 1
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    ips = n_acc * cfg.batch_size * self.size / max(step_time, 1e-9)
                    self._log("train", {k: v / n_acc for k, v in acc.items()}, ips)
                    test = self.evaluate()
                    if test:
                        self._log("test", self.check_latent_collapse(test), None)
                    bar.set_postfix(img_s=f"{ips:.0f}", recon=f"{acc['recon'] / n_acc:.4g}",
                                    kl=f"{acc['kl'] / n_acc:.3g}", total=f"{acc['total'] / n_acc:.4g}")
                    acc, n_acc, step_time = {k: 0.0 for k in LOSS_KEYS}, 0, 0.0
                    fault_point(f"logged@{self.step}")  # the log ahead of the newest checkpoint
                if self.step % cfg.sample_every == 0 and cfg.n_samples:
                    self.write_samples()
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.step > 0 and (self.last_checkpoint is None
                                  or Path(self.last_checkpoint) != self.checkpoints.path_for(self.step)):
                self.save_checkpoint()
            if reason == "stop_file" and self.is_chief:
                (self.run_dir / "STOP").unlink(missing_ok=True)  # so that a resume does not stop at once
        except (InputError, TrainingError) as e:
            # bad data (io names the file and image) or a NaN loss: say where the run stands
            msg = str(e) if isinstance(e, TrainingError) else (
                f"{e}; training stopped at step {self.step}. Last good checkpoint: "
                f"{self.last_checkpoint or 'none'}")
            raise TrainingError(msg) from None
        finally:
            loader.close()
            bar.close()
        return TrainResult(self.step, reason, self.last_checkpoint, self.elapsed_s)


def train(config: TrainConfig | dict | str | os.PathLike, **kwargs) -> TrainResult:
    """One call from a notebook: build a Trainer from a config (object, dict or file) and train."""
    if isinstance(config, (str, os.PathLike)):
        config = load_config(TrainConfig, config)
    return Trainer(config, **kwargs).train()


# --------------------------------------------------------------------------------------------
# command line


def add_train_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="TrainConfig as .json or .yaml (options below override it)")
    parser.add_argument("--data", help="preprocessed particles (.star or .mrcs)")
    parser.add_argument("--datadir", help="folder the STAR file's image paths are relative to")
    parser.add_argument("--run-dir", help="output folder (resumed if it holds a checkpoint)")
    parser.add_argument("--max-steps", type=positive_int)
    parser.add_argument("--max-time", type=positive_float, dest="max_time_s", help="wall-clock budget, seconds")
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--learning-rate", type=positive_float)
    parser.add_argument("--pose-mode", choices=["learned", "known"])
    parser.add_argument("--seed", type=nonnegative_int)
    parser.add_argument("--restart", action="store_true",
                        help="start a new run; the run folder's previous run is moved to previous-N")
    parser.add_argument("--no-progress", action="store_true")
    # data-parallel training (cryovae_nb.distributed); implied when started by horovodrun/mpirun
    parser.add_argument("--horovod", action="store_true", help="one Horovod rank (one process without Horovod)")
    parser.add_argument("--scale-lr", action="store_true", help="with --horovod: learning rate x number of ranks")
    return parser


def run_train(args: argparse.Namespace) -> int:
    data = to_dict(load_config(TrainConfig, args.config)) if args.config else {}
    for name in ("data", "datadir", "run_dir", "max_steps", "max_time_s", "batch_size",
                 "learning_rate", "pose_mode", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    cfg = from_dict(TrainConfig, data)
    output_dir(cfg.run_dir, "--run-dir")
    from cryovae_nb import distributed

    if getattr(args, "horovod", False) or distributed.under_launcher():
        trainer = distributed.make_trainer(cfg, scale_lr=args.scale_lr, resume=not args.restart,
                                           progress=not args.no_progress, restart_hint="--restart")
    else:
        trainer = Trainer(cfg, resume=not args.restart, progress=not args.no_progress,
                          restart_hint="--restart")
    result = trainer.train()
    print(f"stopped at step {result.step} ({result.reason}); checkpoint: {result.checkpoint}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = add_train_parser(argparse.ArgumentParser(prog="python -m cryovae_nb.train",
                                                      description="train the VAE (resumable)"))
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except CryoVAEError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a rank's run folder refused (permissions, read-only): one line, as the CLI
        from cryovae_nb.cli import _oserror_line

        print(f"train: error: {_oserror_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
