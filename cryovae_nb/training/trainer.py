"""The `Trainer` behind a notebook cell, ``python -m cryovae_nb.training`` and ``cryovae train``.

What it writes, and where, is the run folder's format (`cryovae_nb.training.rundir`). How it
takes part in a data-parallel job comes in as `Hooks` (`cryovae_nb.training.horovod` builds the
Horovod ones); this module knows nothing of Horovod.

Reproducibility: the initial weights come from the seed, the batch order of epoch ``e`` is a
permutation drawn from ``(seed, e)``, and the noise of step ``s`` (reparametrisation) from the
stateless seed ``(seed, s)``. A run killed at any moment and resumed from its last checkpoint
therefore takes the same steps an uninterrupted run would have taken.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from cryovae_nb.atomic import atomic_path, write_json_atomic, write_text_atomic
from cryovae_nb.config import from_dict, load_config, save_config, to_dict
from cryovae_nb.errors import ConfigError, InputError, TrainingError
from cryovae_nb.faults import fault_point
from cryovae_nb.io import read_particles, write_volume
from cryovae_nb.model.batch import Batch
from cryovae_nb.model.config import ModelConfig
from cryovae_nb.model.losses import LOSS_KEYS
from cryovae_nb.model.vae import build_model
from cryovae_nb.training import memory, rundir
from cryovae_nb.training.config import TrainConfig, learning_rate_advice
from cryovae_nb.training.data import (BatchReader, EpochOrder, Prefetcher, make_split, model_for_data,
                                      particle_optics, read_split)
from cryovae_nb.training.devices import apply_device_policy
from cryovae_nb.training.precision import (base_optimizer, loss_scale_state, needs_loss_scaling,
                                           restore_loss_scale, set_precision)
from cryovae_nb.training.rundir import CheckpointManager, MetricsLog, json_value, make_checkpoint
from cryovae_nb.training.steps import make_eval_step, make_optimizer, make_train_step

# what a held-out evaluation adds to the mean losses (test records only)
# what a held-out evaluation adds to the mean losses (test records only)
EVAL_KEYS = ("kl_per_dim", "active_dims", "latent_collapsed")
ACTIVE_VARIANCE = 0.01     # a latent dimension is active when Var_x(z_mean) exceeds this (Burda et al. 2015)
COLLAPSE_MIN_STEP = 500    # collapse is judged from max(kl_warmup_steps, this) steps on


class LatentCollapseWarning(UserWarning):
    """A held-out evaluation found no active latent dimension (`Trainer.check_latent_collapse`)."""



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



@dataclass
class TrainResult:
    step: int
    reason: str                 # "max_steps" | "max_time" | "stop_requested" | "stop_file", or a
                                # signal's name ("SIGTERM", "SIGINT": cryovae train's handlers)
    checkpoint: str | None      # the checkpoint written last
    elapsed_s: float


class Callback:
    """Receives live training output (a widget subclasses it; every method is optional)."""

    def on_metrics(self, record: dict) -> None: ...

    def on_samples(self, images: np.ndarray, projections: np.ndarray, step: int) -> None: ...

    def on_checkpoint(self, path: str) -> None: ...



@dataclass(frozen=True)
class Hooks:
    """How a Trainer takes part in a data-parallel job; the defaults are one process alone.

    ``rank`` of ``size`` reads its own share of every epoch, and only the chief (rank 0) writes
    files. ``grad_reducer(grads) -> grads`` averages the gradients across ranks inside the step;
    ``broadcast(trainer)`` runs after the model is built and any checkpoint restored (to copy rank
    0's variables to all ranks); ``agree_stop(reason) -> reason`` makes all ranks stop at the same
    step for the same reason (a STOP file or a time budget may be seen by one rank only);
    ``reduce_metrics(record) -> record`` averages a metrics record across ranks.
    """

    rank: int = 0
    size: int = 1
    grad_reducer: Callable[[list], list] | None = None
    broadcast: Callable[[Any], None] | None = None
    agree_stop: Callable[[str | None], str | None] | None = None
    reduce_metrics: Callable[[dict], dict] | None = None

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


class Trainer:
    """Trains a CryoVAE on a particle stack; resumable, stoppable, deterministic given the seed.

    ``resume=False`` starts over: the run directory's old run is moved into ``run_dir/previous-N``
    (never deleted). A folder that is not empty and not a run of ours is refused unchanged, and so
    is a resume on other data than the run's (`cryovae_nb.training.rundir`). ``restart_hint`` is
    how the caller's user starts over (the CLI passes ``--restart``); error messages name it.

    ``hooks``: how this process takes part in a data-parallel job (`Hooks`; the default is one
    process alone).
    """

    def __init__(self, config: TrainConfig, *, callbacks: Iterable[Any] = (), resume: bool = True,
                 progress: bool = True, hooks: Hooks | None = None, restart_hint: str = "resume=False"):
        if isinstance(config, dict):
            config = from_dict(TrainConfig, config)
        config.validate()
        cfg = config
        if not cfg.data:
            raise ConfigError("TrainConfig.data: no particle file given")
        self.hooks = hooks or Hooks()
        self.rank, self.size, self.is_chief = int(self.hooks.rank), int(self.hooks.size), self.hooks.is_chief
        self.callbacks = list(callbacks)
        self.progress = progress
        self.run_dir = Path(cfg.run_dir)
        self._restart_hint = restart_hint
        self._stop_request: str | None = None  # stop()'s reason, until train() acts on it
        self._collapse_warned = False  # check_latent_collapse warns once per Trainer

        # data ---------------------------------------------------------------------------
        self.particles = read_particles(cfg.data, datadir=cfg.datadir)
        n, box = len(self.particles), int(self.particles.box)
        if box != cfg.model.architecture.box:
            if cfg.model.architecture.box != ModelConfig().architecture.box:
                raise ConfigError(f"model.architecture.box is {cfg.model.architecture.box} but the images in "
                                  f"{cfg.data} are {box} px; set model.architecture.box to {box}")
            cfg = dataclasses.replace(cfg, model=cfg.model.with_options(box=box))
        cfg = dataclasses.replace(cfg, model=model_for_data(cfg.model, self.particles, cfg.data))
        if cfg.model.pose.mode == "known" and self.particles.poses is None:
            raise InputError("pose_mode 'known' needs poses (rlnAngleRot/Tilt/Psi) in the STAR file", cfg.data)
        self.config = cfg
        if self.is_chief and (advice := learning_rate_advice(cfg)) is not None:
            warnings.warn(advice, stacklevel=2)
        self.pixel_size = float(self.particles.pixel_size) if self.particles.pixel_size else 1.0
        if self.is_chief:
            rundir.claim(self.run_dir)  # before anything is written: refuses a folder not ours
        if cfg.split_file:
            self.train_indices, self.test_indices = read_split(cfg.split_file, n, self.particles.output_id)
        else:
            self.train_indices, self.test_indices = make_split(n, cfg.test_fraction, cfg.seed)
        self.order = EpochOrder(self.train_indices, cfg.batch_size, cfg.seed, self.rank, self.size)
        known = self.particles.poses if cfg.model.pose.mode == "known" else None
        self.batches = BatchReader(self.particles.images, None if known is None else known.rotations,
                                   None if known is None else known.shifts,
                                   particle_optics(self.particles, cfg.data) if cfg.model.loss.ctf else None)

        # model --------------------------------------------------------------------------
        self.device_policy = apply_device_policy(cfg)  # XLA, TF32, precision in effect on this device
        # the memory model, before any weight exists where it can count them from the config
        self.memory = memory.check_memory(cfg.model, cfg) if cfg.check_memory and cfg.model.architecture.decoder \
            == "dense" else None
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(cfg.seed)
        self.model = build_model(cfg.model, seed=cfg.seed)
        if cfg.check_memory and self.memory is None:  # other decoders: their weights counted
            n_params = sum(int(np.prod(v.shape)) for v in self.model.trainable_variables)
            self.memory = memory.check_memory(cfg.model, cfg, n_params=n_params)
        precision = self.device_policy.precision
        set_precision(self.model, precision)  # the dense layers' compute dtype; weights stay float32
        self.optimizer = make_optimizer(self.model, cfg.learning_rate,
                                        loss_scale=needs_loss_scaling(precision))  # built
        self._train_step = make_train_step(self.model, self.optimizer, jit=self.device_policy.jit,
                                           grad_reducer=self.hooks.grad_reducer)
        self._eval_step = make_eval_step(self.model, jit=self.device_policy.jit)
        self.pose_cache = None
        if cfg.model.pose.mode == "learned" and cfg.model.pose.search_deg is not None \
                and cfg.model.pose.global_every > 1:
            # each particle's last searched rotation (4) and whether it has one (1): between
            # global searches the search starts there (PoseConfig.global_every); checkpointed, so
            # a resumed run takes the same steps
            self.pose_cache = tf.Variable(tf.zeros([n, 5]), trainable=False, name="pose_cache")
        # the Adam slots only (no loss scale, kept in the state): the same keys whatever the precision
        self._checkpoint = make_checkpoint(self.model, base_optimizer(self.optimizer), self.pose_cache)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg.keep_checkpoints)
        self.metrics = MetricsLog(self.run_dir / rundir.METRICS_FILE, enabled=self.is_chief)
        self.step, self.elapsed_s, self.last_checkpoint = 0, 0.0, None

        if self.is_chief and rundir.interrupted_move(self.run_dir) is not None:
            resume = False  # a start-over was killed while moving the old run aside: finish it
        resumed = resume and self._resume()
        if not resumed and self.is_chief:
            self._move_previous_run_aside()
        if self.is_chief:
            self.checkpoints.remove_temporaries()  # left by a run killed while saving
        if self.hooks.broadcast is not None:
            self.hooks.broadcast(self)
        if self.is_chief:
            self._write_run_files(resumed)
            fault_point("run-files-written")

    # ---- run directory -------------------------------------------------------------------

    def _write_run_files(self, resumed: bool) -> None:
        """The run's provenance, written when it starts; a resume only fills in what a run from
        an older version lacks, never rewriting the record of what the run was trained on."""
        def missing(name):
            return not (resumed and (self.run_dir / name).exists())

        for name in (rundir.CONFIG_FILE, "config.yaml"):
            if missing(name):
                save_config(self.config, self.run_dir / name)
        if missing(rundir.SPLIT_FILE):
            with atomic_path(self.run_dir / rundir.SPLIT_FILE) as tmp:
                np.savez(tmp, train=self.train_indices, test=self.test_indices)
        if missing(rundir.DATA_FILE):
            write_json_atomic(self.run_dir / rundir.DATA_FILE, self._fingerprint())

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
        folder = rundir.RunFolder(self.run_dir)
        data_path = self.run_dir / rundir.DATA_FILE
        if self.is_chief and data_path.is_file():
            try:
                saved_data = folder.data_fingerprint()
            except InputError as e:
                raise ConfigError(f"{e}; {how}") from None
            now = self._fingerprint()
            diffs = rundir.fingerprint_differences(saved_data, now)
            if diffs:
                raise ConfigError(f"{data_path}: the run was trained on other data ({saved_data.get('data')}) "
                                  f"than {now['data']}: " + "; ".join(diffs) + f". To go on: {how}")
            if saved_data.get("data") not in (None, now["data"]):
                warnings.warn(f"{self.run_dir}: the data moved ({saved_data['data']} -> {now['data']}); "
                              "same content, resuming", stacklevel=4)
        split_path = self.run_dir / rundir.SPLIT_FILE
        if self.is_chief and split_path.is_file():
            train, test = folder.split(len(self.particles))
            if not (np.array_equal(train, self.train_indices) and np.array_equal(test, self.test_indices)):
                raise ConfigError(f"{split_path}: the run's train/test split differs from the one the "
                                  f"config gives now ({self.config.split_file or 'test_fraction and seed'}); "
                                  f"{how}")
        path = folder.config_path
        if not path.exists():
            return
        saved = folder.config()
        # the model must match; rates and the batch (the TrainConfig's) may change between sessions
        if to_dict(saved.model) != to_dict(self.config.model):
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
        restore_loss_scale(self.optimizer, state.get("loss_scale"))
        self.metrics.truncate(self.step)

    def save_checkpoint(self) -> str:
        """Checkpoint the current step (chief only); refuses weights that are not finite."""
        if not all(np.isfinite(v.numpy()).all() for v in self.model.trainable_variables):
            raise TrainingError(f"weights are not finite at step {self.step}; not checkpointed. "
                                f"Last good checkpoint: {self.last_checkpoint}")
        epoch, pos = self.order.position(self.step)
        state = {"step": self.step, "epoch": epoch, "position": pos, "seed": self.config.seed,
                 "n_train": len(self.train_indices), "elapsed_s": self.elapsed_s,
                 "pixel_size": self.pixel_size, "box": int(self.config.model.architecture.box)}
        if (scale := loss_scale_state(self.optimizer)) is not None:
            state["loss_scale"] = scale  # mixed_float16: the resumed run goes on with this scale
        if self.is_chief:
            path = self.checkpoints.save(self._checkpoint, self.step, state)
            self.last_checkpoint = str(path)
            self._emit("on_checkpoint", str(path))
        return self.last_checkpoint

    # ---- data ----------------------------------------------------------------------------

    def _fetch(self, step: int) -> Batch:
        return self.batches(self.order.batch(step))

    # ---- steps, evaluation, samples --------------------------------------------------------

    def _cached_poses(self, batch: Batch):
        """The batch's cached rotations ``(B, 4)`` when this step refines them locally, i.e. not
        in an epoch of global searches (every ``global_every``-th, the first included); else
        None (the full search). A particle without one (the few an epoch's last, partial batch
        left out) gets a zero row: the search starts it at the pose head's rotation."""
        if self.pose_cache is None:
            return None
        epoch, _ = self.order.position(self.step)
        if epoch % self.config.model.pose.global_every == 0:
            return None
        rows = tf.gather(self.pose_cache, np.asarray(batch.indices))
        return rows[:, :4] * rows[:, 4:]

    def _cache_poses(self, batch: Batch, quaternions) -> None:
        rows = np.asarray(batch.indices)[:, None]
        self.pose_cache.scatter_nd_update(rows, tf.concat([quaternions, tf.ones([len(rows), 1])], 1))

    def _seed(self, step: int):
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
            losses = self._eval_step(self.batches(chunk), None)  # seed None: z = z_mean, no noise
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
        if losses.get("active_dims") != 0 or step < max(self.config.model.loss.kl_warmup_steps, COLLAPSE_MIN_STEP):
            return losses
        if not self._collapse_warned and self.is_chief:
            self._collapse_warned = True
            n = len(losses.get("kl_per_dim") or []) or self.config.model.architecture.latent_dim
            kl = losses.get("kl")
            kl_text = "?" if kl is None or not math.isfinite(kl) else f"{kl:.3g}"
            warnings.warn(
                f"step {step}: the latent carries no information about the particles (0 of {n} "
                f"dimensions active on the held-out images, KL {kl_text} nats/image): either the "
                "particles are homogeneous, or the posterior collapsed. If you expect heterogeneity: "
                "with known poses keep model.latent.inference 'auto' (latents read from the decoder "
                "at each pose); the encoder's latent (learned poses, or 'encoder') measured collapsed "
                "at SNR 0.1, and model.loss.kl_warmup_steps / free_bits did not help (README).",
                LatentCollapseWarning, stacklevel=2)
        return {**losses, "latent_collapsed": True}

    def reconstruct(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, projections of their reconstructed volumes, volumes) for particle rows."""
        batch = self.batches(np.asarray(indices))
        proj, volumes = self.model.reconstruct(batch)  # in the images' units, the CTF included
        return batch.images, np.asarray(proj), np.asarray(volumes)

    def write_samples(self) -> None:
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

    def stop(self, reason: str = "stop_requested") -> None:
        """Ask train() to stop after the current step, for ``reason`` (what TrainResult.reason
        will say). Thread-safe and safe in a signal handler: one attribute store, no lock. A
        request made before train() runs is kept (a SIGTERM while the model was being built):
        train() then stops before its first step; train() forgets the request when it returns."""
        self._stop_request = reason

    def stop_reason(self, started: float) -> str | None:
        cfg = self.config
        if self.step >= cfg.max_steps:
            return "max_steps"
        if (request := self._stop_request) is not None:
            return request
        if cfg.max_time_s is not None and time.monotonic() - started >= cfg.max_time_s:
            return "max_time"
        if (self.run_dir / "STOP").exists():
            return "stop_file"
        return None

    def _agreed_stop_reason(self, started: float) -> str | None:
        reason = self.stop_reason(started)
        return reason if self.hooks.agree_stop is None else self.hooks.agree_stop(reason)

    def _emit(self, name: str, *args) -> None:
        if not self.is_chief:
            return
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if callable(fn):
                fn(*args)

    def _log(self, split: str, losses: dict, images_per_s: float | None) -> dict:
        record = {"step": self.step, "split": split, **{k: json_value(losses[k]) for k in LOSS_KEYS},
                  "images_per_s": None if images_per_s is None else round(images_per_s, 2),
                  "time": round(self.elapsed_s, 3)}
        # held-out extras (evaluate(), check_latent_collapse()); per-dimension KL to 4 digits
        record.update({k: json_value(losses[k], 4) for k in EVAL_KEYS if k in losses})
        if self.hooks.reduce_metrics is not None:
            record = self.hooks.reduce_metrics(record)
        self.metrics.append(record)
        self._emit("on_metrics", record)
        return record

    def train(self) -> TrainResult:
        """Run until max_steps, the time budget, stop() or a STOP file; checkpoint at the end."""
        cfg = self.config
        started = time.monotonic()
        base_elapsed = self.elapsed_s
        loader = Prefetcher(self._fetch, self.step, cfg.prefetch)
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.is_chief), desc="train")
        acc, n_acc, step_time = {k: 0.0 for k in LOSS_KEYS}, 0, 0.0
        try:
            while (reason := self._agreed_stop_reason(started)) is None:
                t0 = time.perf_counter()
                batch = loader.get(self.step)
                losses = self._train_step(batch, self._seed(self.step), self._cached_poses(batch))
                if self.pose_cache is not None:
                    self._cache_poses(batch, losses["searched_quaternion"])
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
            self._stop_request = None  # acted on (or the run failed): the next train() runs
            loader.close()
            bar.close()
        return TrainResult(self.step, reason, self.last_checkpoint, self.elapsed_s)


def train(config: TrainConfig | dict | str | os.PathLike, **kwargs) -> TrainResult:
    """One call from a notebook: build a Trainer from a config (object, dict or file) and train."""
    if isinstance(config, (str, os.PathLike)):
        config = load_config(TrainConfig, config)
    return Trainer(config, **kwargs).train()

