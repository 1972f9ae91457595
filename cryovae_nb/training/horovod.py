"""Data-parallel training with Horovod: ``hvd`` behind the Trainer's `Hooks`.

    horovodrun -np 2 -H localhost:2 --gloo python -m cryovae_nb.training --config c.yaml --horovod

Each rank reads its own interleaved share of every global batch (the Trainer's EpochOrder with
rank/size), so with ``size`` ranks of batch ``b`` a step sees the same ``size * b`` images a single
process with batch ``size * b`` would. Gradients are averaged every step with
``hvd.grouped_allreduce(grads, op=hvd.Average)`` (``hvd.DistributedGradientTape`` cannot handle
Keras 3 variables), and rank 0's weights and optimizer state are broadcast after the model is built
or restored from a checkpoint. Only rank 0 writes metrics, samples and checkpoints.

What is and is not the single-process computation: the reconstruction and KL terms are per-sample
means, so the average of the ranks' gradients is exactly the gradient of the global batch mean. The
averaging loss is a batch statistic (it compares the volumes within a batch): each rank computes it
over its own ``b`` images, so the distributed loss is the mean of the per-shard averaging terms,
not the averaging term of the global batch. Keep ``b`` per rank large enough for that statistic
(the thesis used 120 per GPU).

Learning rate: the seed trained with a *total* rate of 1e-5 on 4 GPUs, i.e. the rate is not scaled
by default; ``scale_lr=True`` multiplies it by the number of ranks (the linear-scaling rule for a
global batch that grows with the ranks).

Horovod is optional: without it (or without ``--horovod`` and outside horovodrun) training runs
in one process. Horovod itself is imported only by `init`; this module depends on the trainer,
never the other way round.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any

import tensorflow as tf

from cryovae_nb.config import from_dict, load_config
from cryovae_nb.errors import LaunchError
from cryovae_nb.model.losses import LOSS_KEYS
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.trainer import Hooks, Trainer

# Set by horovodrun (Gloo), Open MPI's mpirun, and MPICH/Intel MPI (PMI) in every rank.
RANK_ENV = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
SIZE_ENV = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def horovod_available() -> bool:
    """True when ``horovod.tensorflow`` imports (built against this TensorFlow)."""
    try:
        import horovod.tensorflow  # noqa: F401
    except Exception:  # ImportError, or a build for another TF raising on load
        return False
    return True


def under_launcher(environ: dict | None = None) -> bool:
    """True in a process started by horovodrun / mpirun (auto-detects ``--horovod``)."""
    env = os.environ if environ is None else environ
    return any(k in env for k in RANK_ENV)


def expected_size(environ: dict | None = None) -> int | None:
    """How many ranks the launcher started (None if it does not say)."""
    env = os.environ if environ is None else environ
    for k in SIZE_ENV:
        if k in env:
            return int(env[k])
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_STEP_ID" in env:  # srun-launched ranks
        return int(env["SLURM_STEP_NUM_TASKS"])
    return None


@dataclasses.dataclass
class Context:
    """Who this process is in the job, and the collective operations the Trainer needs."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    hvd: Any = None          # horovod.tensorflow, or None for a single process without Horovod

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def grad_reducer(self, grads: list) -> list:
        """Average gradients over ranks (traced into the train step)."""
        idx = [i for i, g in enumerate(grads) if g is not None]
        reduced = self.hvd.grouped_allreduce([grads[i] for i in idx], op=self.hvd.Average)
        out = list(grads)
        for i, g in zip(idx, reduced):
            out[i] = g
        return out

    def broadcast_variables(self, variables, root: int = 0) -> None:
        """Copy ``root``'s values of Keras 3 / tf variables to every rank."""
        for i, v in enumerate(variables):
            value = v.value if hasattr(v, "value") else v
            v.assign(self.hvd.broadcast(value, root, name=f"cryovae.bcast.{i}"))

    def broadcast(self, trainer) -> None:
        """Trainer hook, run after build/restore: rank 0's weights, optimizer state and step."""
        if self.hvd is None or self.size == 1:
            return
        if not trainer.optimizer.built:  # slots must exist to be sent (a loss-scaled one must not build twice)
            trainer.optimizer.build(trainer.model.trainable_variables)
        self.broadcast_variables(list(trainer.model.variables) + list(trainer.optimizer.variables))
        step = self.hvd.broadcast(tf.constant(int(trainer.step), tf.int64), 0, name="cryovae.bcast.step")
        trainer.step = int(step)  # a rank that did not see the checkpoint (no shared disk) follows rank 0

    def allreduce_mean(self, values: list[float], name: str) -> list[float]:
        """Mean of a few Python floats over ranks (NaN-preserving)."""
        if self.hvd is None or self.size == 1:
            return list(values)
        out = self.hvd.allreduce(tf.constant(values, tf.float64), op=self.hvd.Average, name=name)
        return [float(x) for x in out.numpy()]

    def allreduce_max(self, value: int, name: str) -> int:
        if self.hvd is None or self.size == 1:
            return int(value)
        return int(self.hvd.allreduce(tf.constant(int(value), tf.int64), op=self.hvd.Max, name=name))


def init(*, use_horovod: bool | None = None, pin_gpu: bool = True) -> Context:
    """Initialise Horovod (if wanted and available) and pin one GPU per process.

    ``use_horovod=None`` means "if started by horovodrun/mpirun". A missing Horovod under a
    launcher, or a launcher that started N ranks which each came up as a job of size 1 (an MPI
    launcher with a Gloo-only Horovod build), raises LaunchError instead of silently training N
    independent models.
    """
    launched = under_launcher()
    want = launched if use_horovod is None else bool(use_horovod)
    if not want:
        _pin_gpu(0, pin_gpu)
        return Context()
    if not horovod_available():
        if launched and (expected_size() or 1) > 1:
            raise LaunchError("this process was started by a multi-process launcher but horovod.tensorflow "
                              "cannot be imported; install it with scripts/install_horovod.sh")
        warnings.warn("Horovod is not installed: training in a single process "
                      "(install it with scripts/install_horovod.sh)", stacklevel=2)
        _pin_gpu(0, pin_gpu)
        return Context()
    import horovod.tensorflow as hvd

    hvd.init()
    expected = expected_size()
    if expected is not None and expected > 1 and hvd.size() == 1:
        raise LaunchError(f"the launcher started {expected} ranks but Horovod sees a job of size 1: this "
                          "Horovod build cannot join them (srun/mpirun need Horovod built with MPI; "
                          "use horovodrun --gloo, or rebuild with HOROVOD_WITH_MPI=1)")
    _pin_gpu(hvd.local_rank(), pin_gpu)
    return Context(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), hvd=hvd)


def _pin_gpu(local_rank: int, enabled: bool) -> None:
    """One GPU per process, memory growth on (must run before TensorFlow touches a device)."""
    if not enabled:
        return
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    try:
        for g in gpus:
            tf.config.experimental.set_memory_growth(g, True)
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")
    except RuntimeError as e:  # devices already initialised (e.g. TF used earlier in a notebook)
        warnings.warn(f"could not pin GPU {local_rank}: {e}", stacklevel=3)


# later ones win when ranks differ; a signal's name last, so every rank reports the signal
_STOP_REASONS = ("max_steps", "stop_requested", "max_time", "stop_file", "SIGINT", "SIGTERM")


def agree_stop(context: Context, reason: str | None) -> str | None:
    """The stop reason all ranks share: a STOP file, a time budget, stop() or a signal may be
    seen by one rank only, and the others would wait forever in the next all-reduce."""
    code = 0 if reason is None else _STOP_REASONS.index(reason) + 1
    agreed = context.allreduce_max(code, name="cryovae.stop")
    return None if agreed == 0 else _STOP_REASONS[agreed - 1]


def reduce_metrics(context: Context, record: dict) -> dict:
    """A metrics record with its losses (every key of ``LOSS_KEYS``) and throughput averaged over
    ranks (for train records each rank saw its own shard).

    A test record's kl_per_dim / active_dims / latent_collapsed are not: every rank evaluates the
    same held-out images with the same (broadcast, all-reduced) weights, so they agree, and rank
    0's are the ones written (an averaged count of active dimensions would not be a count). Every
    rank must pass the same keys here: the all-reduce pairs the ranks' lists by position.
    """
    keys = [k for k in (*LOSS_KEYS, "images_per_s") if k in record]
    vals = [math.nan if record[k] is None else float(record[k]) for k in keys]
    means = context.allreduce_mean(vals, name=f"cryovae.metrics.{record['split']}")
    out = dict(record, ranks=context.size)
    for k, v in zip(keys, means):
        out[k] = v if math.isfinite(v) else None
    if out.get("images_per_s") is not None:
        out["images_per_s"] = round(out["images_per_s"], 2)
    return out


def hooks(context: Context) -> Hooks:
    """The Trainer's hooks for this rank: gradients averaged in every step, rank 0's weights
    broadcast, one stop decision, metrics averaged. (jit is fine: the train step runs the reducer
    between the compiled gradient and the compiled update.)"""
    return Hooks(rank=context.rank, size=context.size,
                 grad_reducer=context.grad_reducer if context.size > 1 else None,
                 broadcast=context.broadcast,
                 agree_stop=lambda reason: agree_stop(context, reason),
                 reduce_metrics=lambda record: reduce_metrics(context, record))


def scaled_config(config, size: int, scale_lr: bool):
    """``config`` with its learning rate multiplied by ``size`` when ``scale_lr``."""
    if not scale_lr or size == 1:
        return config
    return dataclasses.replace(config, learning_rate=float(config.learning_rate) * size)


def make_trainer(config, *, scale_lr: bool = False, use_horovod: bool | None = True,
                 context: Context | None = None, **trainer_kwargs) -> Trainer:
    """A Trainer for this rank: Horovod hooks wired in when Horovod runs, a plain one otherwise.

    ``config`` is a TrainConfig, a dict or a config file; ``trainer_kwargs`` go to Trainer
    (resume, progress, callbacks).
    """
    if isinstance(config, (str, os.PathLike)):
        config = load_config(TrainConfig, config)
    elif isinstance(config, dict):
        config = from_dict(TrainConfig, config)
    ctx = context or init(use_horovod=use_horovod)
    config = scaled_config(config, ctx.size, scale_lr)
    if ctx.hvd is None:
        return Trainer(config, **trainer_kwargs)
    return Trainer(config, hooks=hooks(ctx), **trainer_kwargs)


def train(config, *, scale_lr: bool = False, **trainer_kwargs):
    """``make_trainer(...).train()``: what each rank of ``python -m cryovae_nb.training --horovod`` runs."""
    return make_trainer(config, scale_lr=scale_lr, **trainer_kwargs).train()


def gradient_bytes(model) -> int:
    """Bytes all-reduced per step: the sizes of all trainable variables x 4 (float32)."""
    return int(sum(math.prod(v.shape) for v in model.trainable_variables) * 4)


def ring_allreduce_seconds(nbytes: float, ranks: int, bandwidth_bytes_s: float,
                           latency_s: float = 0.0) -> float:
    """Time of a bandwidth-optimal ring all-reduce: 2(p-1)/p x bytes / bandwidth (+ 2(p-1) hops)."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth_bytes_s + 2 * (ranks - 1) * latency_s


def hierarchical_allreduce_seconds(nbytes: float, gpus_per_node: int, nodes: int, *,
                                   intra_bw: float, inter_bw: float, latency_s: float = 5e-6) -> float:
    """Reduce-scatter within each node (NVLink), ring across nodes on 1/g of the data, all-gather back.

    The standard two-level scheme (Horovod's hierarchical all-reduce, NCCL's tree/ring across
    nodes): the slow inter-node link carries only ``bytes / gpus_per_node`` per GPU.
    """
    g, n = gpus_per_node, nodes
    intra = ring_allreduce_seconds(nbytes, g, intra_bw, latency_s)  # reduce-scatter + all-gather
    inter = ring_allreduce_seconds(nbytes / g, n, inter_bw, latency_s) if n > 1 else 0.0
    return intra + inter

