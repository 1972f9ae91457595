"""The memory model: a training run's peak memory, estimated from its configs before it starts.

`estimate_peak_memory(model_config, train_config)` adds up the parts a step keeps alive at once
(`MemoryEstimate`): the runtime (Python, TensorFlow, XLA's compiled code), the weights with their
Adam moments and gradients, the per-image volumes of a step (decoded volume, its padded Fourier
transform, their gradients), the pose search's projections, and the loader's read-ahead batches.
`check_memory` compares it with what the device has (`available_memory`: GPU memory from
TensorFlow when a GPU is present, host RAM from /proc/meminfo or psutil otherwise) and refuses
with one line naming the estimate, the memory and what to change.

The per-part multipliers are counts of live copies, checked against measured peak RSS of real
training runs by ``benchmarks/memory_model.py`` (box 24..40, known and learned poses, several
batch sizes; README). No TensorFlow here: notebooks and the launcher estimate before any model
exists.
"""
from __future__ import annotations

from dataclasses import dataclass

from cryovae_nb.errors import ConfigError
from cryovae_nb.model.config import CONV_POSE_STAGES, CONV_POSE_UNITS, conv_pose_sides

MIB = 2**20

# The process without a model: Python, TensorFlow, Keras, numpy/scipy/pandas and XLA's runtime,
# plus what compiling the two steps takes. Fitted, with VOLUME_COPIES, to five measured runs
# (box 24 and 40, batch 120 and 240, known and learned poses; README), checked on others.
RUNTIME_BYTES = 760 * MIB
# Live float32 copies of each trainable weight during a step: the weight, Adam's two moments,
# the gradient, the updated value XLA writes before it replaces the old one, and the copy a
# checkpoint (and its finiteness check) reads out to numpy.
WEIGHT_COPIES = 6
# Live float32 copies of one image's decoded volume (n^3, and its padded transform on pad^3 n^3)
# in a training step: the decoder's output, the masked volume, the transform (complex: 2 floats)
# and their gradients on the way back, less what XLA fuses away (measured: 6, not 8).
VOLUME_COPIES = 6
# The search's live float32 values per projection it compares, plus a part that does not grow with
# the images (the grid's rotations and the compiled search). Fitted to the measured search (learned
# minus known poses, same box and batch: 138 / 269 / 417 MiB at 24:120 / 40:120 / 64:60): 3 copies
# and 65 MiB. The first count, 6 copies and nothing fixed, was right at box 24 only (1.06x) and
# 1.5x / 1.7x too high at 40 / 64 px (README, Benchmarks).
SEARCH_COPIES = 3
SEARCH_FIXED_BYTES = 65 * MIB
# Live float32 copies of the conv pose encoder's feature maps per image (PoseConfig.encoder =
# "conv"). Measured (conv minus dense pose encoder, same config): +24 MiB at 40:120 and +103 MiB at
# 64:60, of which its weights (x6 copies) are 21 / 50 MiB; one copy of the maps (52 / 66 MiB)
# is the nearest whole count (the first guess, 2, gave 103 / 131 MiB).
POSE_ACTIVATION_COPIES = 1
# rounds of local refinement and candidates per round (pose_search.search_pose: 27 + the head's)
LOCAL_CANDIDATES = 2 * 28


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of a training run, in bytes, by part (`estimate_peak_memory`)."""

    runtime: int        # Python, TensorFlow, XLA and its compiled steps
    weights: int        # weights, Adam moments, gradients, the updated copy, a checkpoint's copy
    state: int          # non-trainable state: principal volumes of linearized latents
    volumes: int        # per-image decoded volumes and their transforms in one step
    search: int         # pose search projections (learned poses with a search)
    loader: int         # batches read ahead
    n_params: int       # trainable weights counted
    pose_features: int = 0  # the conv pose encoder's feature maps in one step (pose.encoder "conv")

    @property
    def total(self) -> int:
        return (self.runtime + self.weights + self.state + self.volumes + self.search + self.loader
                + self.pose_features)

    @property
    def on_gpu(self) -> int:
        """What a GPU holds: the tensors, not the runtime's host memory nor the loader's batches."""
        return self.weights + self.state + self.volumes + self.search + self.pose_features

    def describe(self) -> str:
        parts = ("runtime", "weights", "state", "volumes", "search", "pose_features", "loader")
        return ", ".join(f"{p} {getattr(self, p) / MIB:.0f}" for p in parts if getattr(self, p)) + " MiB"


def conv_pose_parameter_count(box: int) -> int:
    """Trainable weights of the conv pose encoder (model/pose_encoder.py) on ``box`` px images:
    its convolutions (k x k x in x out + out) and its dense layer on the last pooled map."""
    count, channels = 0, 1
    for out, k in CONV_POSE_STAGES:
        count += k * k * channels * out + out
        channels = out
    return count + conv_pose_sides(box)[-1] ** 2 * channels * CONV_POSE_UNITS + CONV_POSE_UNITS


def conv_pose_feature_floats(box: int) -> int:
    """Floats of one image's conv pose encoder feature maps: each stage's conv output and pooled map."""
    sides = conv_pose_sides(box)
    return sum(c * (sides[i] ** 2 + sides[i + 1] ** 2) for i, (c, _) in enumerate(CONV_POSE_STAGES))


def dense_parameter_count(model_config) -> int:
    """Trainable weights of a model with the dense (seed) decoder: the encoder's dense stack on
    n^2 pixels, its heads (latent mean and log-variance, pose quaternion and shift, the image
    offset), the decoder's dense stack and its n^3 voxel layer; with ``pose.encoder = "conv"``
    the conv pose encoder, which the pose heads then read."""
    arch = model_config.architecture
    n, latent = arch.box, arch.latent_dim

    def stack(width, units, layers):
        count = 0
        for _ in range(layers):
            count += width * units + units
            width = units
        return count, width

    enc, h = stack(n * n, arch.encoder_units, arch.encoder_layers)
    heads = sum(h * k + k for k in (latent, latent))
    pose_in = h
    if model_config.pose.encoder == "conv":
        heads += conv_pose_parameter_count(n)
        pose_in = CONV_POSE_UNITS
    heads += sum(pose_in * k + k for k in (4, 2))
    if model_config.loss.image_offset:
        heads += h + 1
    dec, w = stack(latent, arch.decoder_units, arch.decoder_layers)
    return enc + heads + dec + w * n**3 + n**3


def _linearized(model_config) -> bool:
    """Whether the model infers latents by linearisation (vae.py: ``auto`` with known poses)."""
    inference = model_config.latent.inference
    return inference == "linearized" or (inference == "auto" and model_config.pose.mode == "known")


def estimate_peak_memory(model_config, train_config, n_params: int | None = None) -> MemoryEstimate:
    """Peak memory of training ``model_config`` with ``train_config`` (batch size, read-ahead).

    ``n_params``: the trainable weights, when the model is built (decoders other than "dense"
    must pass it); otherwise counted from the config (`dense_parameter_count`)."""
    arch = model_config.architecture
    if n_params is None:
        if arch.decoder != "dense":
            raise ConfigError(f"estimate_peak_memory: give n_params for the {arch.decoder!r} decoder "
                              "(counted from the built model)")
        n_params = dense_parameter_count(model_config)
    n, batch, f32 = arch.box, int(train_config.batch_size), 4
    volume = n**3 * f32
    padded = (arch.fourier_pad * n) ** 3 * f32 if arch.projector == "fourier" else 0
    image = n * n * f32
    state = 2 * arch.latent_dim * volume if _linearized(model_config) else 0  # pc_basis, pc_accum
    search = 0
    if model_config.pose.mode == "learned" and model_config.pose.search_deg is not None:
        grid = _grid_size(model_config.pose.search_deg)
        # global: the mean volume at every grid rotation; local: every image's candidates
        search = SEARCH_FIXED_BYTES + SEARCH_COPIES * image * (grid + batch * LOCAL_CANDIDATES)
    return MemoryEstimate(
        runtime=RUNTIME_BYTES,
        weights=WEIGHT_COPIES * f32 * int(n_params),
        state=int(state),
        volumes=int(batch * VOLUME_COPIES * (volume + padded) / 2),
        search=int(search),
        loader=int((train_config.prefetch + 2) * batch * image),
        n_params=int(n_params),
        pose_features=(POSE_ACTIVATION_COPIES * f32 * batch * conv_pose_feature_floats(n)
                       if model_config.pose.encoder == "conv" else 0),
    )


def _grid_size(step_deg: float) -> int:
    """Rotations of the global search grid (`pose_search.search_grid`), without building it:
    Fibonacci directions at ``step`` spacing x in-plane angles (geometry.grid_rotations)."""
    from cryovae_nb.geometry import grid_rotations  # numpy only

    return len(grid_rotations(float(step_deg)))


# ---- what the device has -----------------------------------------------------------------------

GPU_MEMORY = "memory of GPU 0"  # how available_memory() names a GPU's memory

def available_memory() -> tuple[int | None, str]:
    """(bytes, what they are) of the device training will run on: the first GPU's total memory
    when TensorFlow sees a GPU, else the host's available RAM (psutil, else /proc/meminfo).
    (None, why) when neither can be read."""
    gpu = _gpu_memory()
    if gpu is not None:
        return gpu
    try:
        import psutil  # optional: a dependency, but the estimate must not need it

        return int(psutil.virtual_memory().available), "host RAM available"
    except ImportError:
        pass
    return _meminfo_available()


def _gpu_memory() -> tuple[int, str] | None:
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is None:  # no TensorFlow loaded: nobody is about to train on a GPU from this process
        return None
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0]) or {}
    total = _nvidia_total_memory()
    if total is None:
        return None
    return total, f"{GPU_MEMORY} ({details.get('device_name', 'GPU')})"


def _nvidia_total_memory() -> int | None:
    """Total memory of GPU 0 from nvidia-smi (TensorFlow reports only what it has allocated)."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=20)
        return int(float(out.stdout.strip().splitlines()[0])) * MIB if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def _meminfo_available(path: str = "/proc/meminfo") -> tuple[int | None, str]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "host RAM available"
    except (OSError, ValueError, IndexError):
        pass
    return None, f"unknown ({path} unreadable)"


def check_memory(model_config, train_config, n_params: int | None = None,
                 available: tuple[int | None, str] | None = None) -> MemoryEstimate:
    """The estimate, or a `ConfigError` when it exceeds the device's memory (``available``:
    ``available_memory()``'s pair; unknown memory is not refused; against a GPU's memory only
    the part on the GPU counts, `MemoryEstimate.on_gpu`). The message names the
    estimate, the memory and what to change; ``TrainConfig.check_memory = False`` (``cryovae train
    --no-memory-check``) skips it."""
    est = estimate_peak_memory(model_config, train_config, n_params)
    have, what = available_memory() if available is None else available
    need = est.on_gpu if what.startswith(GPU_MEMORY) else est.total
    if have is not None and need > have:
        arch = model_config.architecture
        advice = [f"batch_size {train_config.batch_size} -> {max(1, train_config.batch_size // 2)}"]
        if est.weights > est.volumes:
            advice.append(f"a smaller box than {arch.box} px (preprocess --box) or a decoder with "
                          f"fewer weights than {arch.decoder!r} ({est.n_params / 1e6:.0f} M)")
        else:
            advice.append(f"a smaller box than {arch.box} px (preprocess --box)")
        raise ConfigError(f"training needs about {need / MIB:,.0f} MiB ({est.describe()}) but the "
                          f"{what} is {have / MIB:,.0f} MiB: try " + " or ".join(advice)
                          + "; or start anyway with --no-memory-check (TrainConfig.check_memory: false)")
    return est

