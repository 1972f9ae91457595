"""The run folder: its format in one place -- which folders are ours, moving an old run aside,
the data a run was trained on, checkpoints, the metrics log -- and `RunFolder`, its one reader.

A run directory holds everything a run needs to be resumed, inspected or used for inference::

    run_dir/cryovae_run.json            marks the folder as a run of ours (format version), written first
    run_dir/config.json, config.yaml    the TrainConfig (model config nested), written at start
    run_dir/data.json                   the data's fingerprint, checked on resume
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

A run folder identifies itself with ``cryovae_run.json`` (the format and its version), written
before anything else goes into it. A folder that is neither empty nor ours is refused untouched:
``--run-dir`` pointed at the wrong place must never cost a user a file. A run of ours that is
started over is moved, whole, into ``run_dir/previous-N/``; nothing is deleted.

The data fingerprint (path, count, box, pixel size, file sizes, a hash of a sample of images) is
recorded in ``data.json`` when a run starts; a resume compares it with the data it is given, so
a run is never silently continued on other particles.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np

from cryovae_nb import __version__
from cryovae_nb.atomic import atomic_path, write_json_atomic, write_text_atomic
from cryovae_nb.config import load_config
from cryovae_nb.errors import ConfigError, CryoVAEError, InputError, TrainingError
from cryovae_nb.faults import fault_point
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.data import read_split

MARKER = "cryovae_run.json"
CONFIG_FILE, DATA_FILE, SPLIT_FILE, METRICS_FILE = "config.json", "data.json", "split.npz", "metrics.jsonl"
FORMAT = "cryovae_nb run"
FORMAT_VERSION = 1
# what a Trainer writes; a restart moves these (and only these) aside
RUN_FILES = (CONFIG_FILE, "config.yaml", SPLIT_FILE, DATA_FILE, METRICS_FILE, "checkpoints", "samples", "STOP")
# What cryovae_nb.launch writes beside them (they belong to the job, not to one training session).
# job.json is the job's record (backend, job id or pid, command, times): all a new kernel needs to
# find the job again. exit.json holds the exit code, written by whatever outlives the job's ranks
# (the supervisor, or the Slurm script's EXIT trap). launch.log is the supervised job's output.
# launch_config.json, not config.json: the Trainer writes its own config there.
JOB_FILE, EXIT_FILE, LAUNCH_LOG_FILE = "job.json", "exit.json", "launch.log"
LAUNCH_CONFIG_FILE, SBATCH_FILE = "launch_config.json", "job.sbatch"
LAUNCH_FILES = (JOB_FILE, LAUNCH_CONFIG_FILE, LAUNCH_LOG_FILE, EXIT_FILE, SBATCH_FILE)
_PREVIOUS = re.compile(r"previous-(\d+)")
MOVING = ".moving"
_OURS = re.compile(r"(previous-\d+|slurm-[^/]*\.out|\..+\.tmp.*)")  # old runs, Slurm logs, our temporaries
SAMPLE_IMAGES = 16   # images hashed for the fingerprint, evenly spread over the stack


def is_ours(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / MARKER).is_file()


def _looks_like_an_old_run(run_dir: Path) -> bool:
    """A run written before run folders carried a marker: only our file names, with our config."""
    names = [p.name for p in run_dir.iterdir()]
    known = set(RUN_FILES) | set(LAUNCH_FILES) | {MARKER}
    if not all(n in known or _OURS.fullmatch(n) for n in names):
        return False
    return (run_dir / CONFIG_FILE).is_file() or (run_dir / "job.json").is_file()


def claim(run_dir: str | os.PathLike) -> Path:
    """Make ``run_dir`` a run folder of ours: create it (with its marker) when absent or empty,
    accept it when ours, refuse it -- changing nothing -- when it holds anything else."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: the run folder is a file")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if is_ours(run_dir):
            _check_marker(run_dir)
            return run_dir
        if not _looks_like_an_old_run(run_dir):
            raise ConfigError(f"{run_dir}: not a cryovae run folder (no {MARKER}) and not empty; "
                              "refusing to write into it. Choose a new or empty run folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / MARKER, {
        "format": FORMAT, "version": FORMAT_VERSION, "cryovae_nb": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return run_dir


def _check_marker(run_dir: Path) -> None:
    path = run_dir / MARKER
    try:
        info = json.loads(path.read_text())
        version = int(info["version"])
        ok = info.get("format") == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: unreadable run folder marker; refusing to write into {run_dir}") from None
    if not ok:
        raise ConfigError(f"{path}: not a cryovae run folder marker; refusing to write into {run_dir}")
    if version > FORMAT_VERSION:
        raise ConfigError(f"{path}: run folder format {version} is newer than this cryovae_nb "
                          f"understands ({FORMAT_VERSION}); upgrade, or use another run folder")


def has_run_files(run_dir: str | os.PathLike) -> bool:
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def interrupted_move(run_dir: str | os.PathLike) -> Path | None:
    """The ``previous-N`` a killed start-over was moving the old run into, if any."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    taken = sorted(int(m.group(1)) for p in run_dir.iterdir() if (m := _PREVIOUS.fullmatch(p.name)))
    last = run_dir / f"previous-{taken[-1]}" if taken else None
    return last if last is not None and (last / MOVING).exists() else None


def move_aside(run_dir: str | os.PathLike) -> Path | None:
    """Move a previous run's files into ``run_dir/previous-N`` (N one past the highest there);
    None when there is nothing to move. Renames within one folder: nothing is copied or deleted.

    ``previous-N/.moving`` marks a move in progress: a move a kill interrupted is finished into
    the same ``previous-N`` the next time, so one run never ends up split over two folders.
    """
    run_dir = Path(run_dir)
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    target = interrupted_move(run_dir)  # finish an interrupted move into the same folder
    if not present:
        if target is not None:  # killed after the last rename: the move is complete
            (target / MOVING).unlink()
        return None
    if target is None:
        taken = [int(m.group(1)) for p in run_dir.iterdir() if (m := _PREVIOUS.fullmatch(p.name))]
        target = run_dir / f"previous-{max(taken, default=0) + 1}"
        target.mkdir()
        (target / MOVING).touch()
    for name in present:
        if (target / name).exists():  # cannot happen unless someone put it there: keep both
            raise ConfigError(f"{target / name} exists; move it away, then start the run again")
        os.replace(run_dir / name, target / name)
        fault_point(f"moved-aside:{name}")
    (target / MOVING).unlink()
    return target


# -- the data a run was trained on ------------------------------------------------------------------

def data_fingerprint(particles, data: str | os.PathLike, datadir: str | os.PathLike | None) -> dict:
    """What identifies a dataset cheaply: sizes, and a hash of a few images spread over it."""
    n = len(particles)
    sample = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_IMAGES)).round().astype(np.int64))
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(particles.images[sample], dtype="<f4").tobytes())
    data = Path(data)
    return {
        "data": str(data.resolve()),
        "datadir": None if datadir is None else str(Path(datadir).resolve()),
        "n_particles": int(n), "box": int(particles.box),
        "pixel_size": None if particles.pixel_size is None else float(particles.pixel_size),
        "data_bytes": data.stat().st_size,
        "stack_bytes": int(sum(os.path.getsize(p) for p in particles.images.paths)),
        "sample_images": [int(i) for i in sample], "sample_sha256": digest.hexdigest(),
    }


_COMPARED = (("n_particles", "particle count"), ("box", "box (px)"), ("pixel_size", "pixel size (Å)"),
             ("data_bytes", "size of the data file (bytes)"), ("stack_bytes", "size of the image stacks (bytes)"),
             ("sample_sha256", "hash of sampled images"))


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """Human-readable differences in content (a moved file with the same content is not one).
    Fields a run recorded before fingerprints existed are compared only where both have them."""
    out = []
    for key, what in _COMPARED:
        a, b = saved.get(key), now.get(key)
        if a is None or b is None:
            continue
        same = abs(float(a) - float(b)) <= 1e-6 * abs(float(a)) if key == "pixel_size" else a == b
        if not same:
            if key == "sample_sha256":
                out.append(f"{what} differ")
            else:
                out.append(f"{what} {a} -> {b}")
    return out


# -- checkpoints ------------------------------------------------------------------------------------

def make_checkpoint(model, optimizer=None, poses=None):
    """A tf.train.Checkpoint of the model's (and optimizer's) variables, keyed by variable path,
    and of the Trainer's pose cache ``poses`` (a variable, or None: none).

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
    if poses is not None:
        parts["poses"] = {"cache": poses}
    return tf.train.Checkpoint(**parts)


# Variables that checkpoints written before they existed lack: (checkpoint part, name prefix).
# The zero-response decoder's first layer (model/decoders.py) escaped Keras' tracking until stop 18,
# so it was neither trained nor saved and stayed at its zero initial value; an older checkpoint
# restores with it at zero, which is exactly what the older code computed with.
# The pose cache (PoseConfig.global_every) came at stop 20: at zero it holds no pose, so every
# particle is searched globally on its next visit, as before.
ADDED_VARIABLES = (("weights", "dec0/"), ("optimizer", "dec0_"), ("poses", "cache"))


def _unescape(name: str) -> str:
    """A TF checkpoint key's escaped object name ('dec1.Skernel') -> the name ('dec1/kernel')."""
    return re.sub(r"\.(.)", lambda m: {"S": "/", ".": "."}.get(m.group(1), m.group(0)), name)


def read_checkpoint(checkpoint, prefix) -> None:
    """Read the checkpoint files ``prefix`` (``.../ckpt``) into ``checkpoint`` (`make_checkpoint`'s).

    Every variable of ``checkpoint`` must be found in the files, except :data:`ADDED_VARIABLES`
    still at zero; the files may hold more (the optimizer state, when only the weights are wanted).
    Raises AssertionError (or TF's errors) otherwise."""
    status = checkpoint.read(str(prefix))
    try:
        status.assert_existing_objects_matched()
    except AssertionError:
        if not _only_added_variables_missing(checkpoint, prefix):
            raise
    status.expect_partial()


def _only_added_variables_missing(checkpoint, prefix) -> bool:
    """Whether the checkpoint files lack some of ``checkpoint``'s variables, all of them
    :data:`ADDED_VARIABLES` still zero in the model (their initial value, so what the older code
    used); raises AssertionError when they lack any other of its weights or optimizer state."""
    import tensorflow as tf

    in_file = {_unescape(n.split("/.ATTRIBUTES")[0]) for n, _ in tf.train.list_variables(str(prefix))}
    missing, accepted = [], 0
    for part in ("weights", "optimizer", "poses"):
        for key, var in dict(getattr(checkpoint, part, None) or {}).items():
            if f"{part}/{key}" in in_file:
                continue
            added = any(part == p and key.startswith(start) for p, start in ADDED_VARIABLES)
            if added and not np.any(var.numpy()):
                accepted += 1
            else:
                missing.append(f"{part}/{key}")
    if missing:
        raise AssertionError(f"the checkpoint lacks {len(missing)} variable(s) of the model, e.g. {missing[:3]}")
    return accepted > 0


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
            read_checkpoint(checkpoint, path / "ckpt")
            return json.loads((path / "state.json").read_text())
        except CryoVAEError:
            raise
        except Exception as e:  # TF raises several types for a missing or mismatched checkpoint
            raise TrainingError(f"{path}: cannot restore checkpoint ({type(e).__name__}: {e})") from None



# -- the metrics log --------------------------------------------------------------------------------

def json_value(v, digits: int | None = None):
    """JSON-safe value: NaN/inf become null (JSON has no NaN); None, bools and ints stay as they
    are, lists/tuples/arrays become lists of clean values; ``digits``: significant digits kept."""
    if v is None or isinstance(v, (bool, np.bool_)):
        return None if v is None else bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (list, tuple, np.ndarray)) and np.ndim(v) > 0:
        return [json_value(x, digits) for x in v]
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



def parse_metrics(data: bytes, path: str | os.PathLike, first_line: int = 1) -> tuple[list[dict], int]:
    """The records of the complete lines of ``data`` (read from ``path``, starting at line
    ``first_line``) and how many bytes those lines take.

    The one policy for ``metrics.jsonl``: a last line without its newline is torn (the writer is
    mid-append, or was killed) and is left out -- a later read gets it whole, a resume removes it;
    a complete line that is not a JSON record with a ``step`` is damage, and raises InputError
    naming the line."""
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(complete.splitlines(), start=first_line):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"line {number} is not JSON ({e.msg})", path) from None
        if not isinstance(record, dict) or "step" not in record:
            raise InputError(f"line {number} has no 'step' field", path)
        records.append(record)
    return records, len(complete)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a ``metrics.jsonl`` (or of ``run_dir/metrics.jsonl``); [] before the first one."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse_metrics(data, path)[0]


class MetricsReader:
    """Reads what was appended to a ``metrics.jsonl`` since the last `read` (for a live monitor)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._offset = 0      # bytes consumed
        self._lines = 0       # lines consumed
        self._file = None     # (device, inode) of the file read

    def read(self) -> tuple[list[dict], bool]:
        """``(new records, restarted)``; ``restarted``: the file shrank or was replaced (a new run,
        or a resume that rewrote it up to its checkpoint), and the records are those of the new
        file from its start."""
        if not self.path.exists():
            return [], False
        with open(self.path, "rb") as fh:
            st = os.fstat(fh.fileno())
            # a resume replaces the file (atomically: a new inode) and may outgrow the old one
            # before the next read: the size alone cannot tell, and the old offset would land mid-line
            restarted = st.st_size < self._offset or (self._file is not None and self._file != (st.st_dev, st.st_ino))
            self._file = (st.st_dev, st.st_ino)
            if restarted:
                self._offset, self._lines = 0, 0
            fh.seek(self._offset)
            chunk = fh.read()
        records, used = parse_metrics(chunk, self.path, self._lines + 1)
        self._offset += used
        self._lines += chunk[:used].count(b"\n")
        return records, restarted


# -- reading a run folder ---------------------------------------------------------------------------

class RunFolder:
    """A run folder read back: what inference, the demo, the launcher and the monitor need of a
    run, without knowing its file names."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> TrainConfig:
        """The TrainConfig the run was started with (the model config nested)."""
        return load_config(TrainConfig, self.config_path)

    def data_fingerprint(self) -> dict | None:
        """``data.json``: what the run was trained on (None for a run from before fingerprints)."""
        path = self.path / DATA_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"unreadable ({e})", path) from None

    def split(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) particle rows the run used."""
        return read_split(self.path / SPLIT_FILE, n)

    @property
    def checkpoints(self) -> "CheckpointManager":
        return CheckpointManager(self.path / "checkpoints")

    def has_checkpoint(self) -> bool:
        return self.has_config() and self.checkpoints.latest() is not None

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path)

    def metrics_reader(self) -> MetricsReader:
        return MetricsReader(self.metrics_path)
