"""Run folders: which folders are ours, moving an old run aside, and what data a run was trained on.

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
import os
import re
from pathlib import Path

import numpy as np

from cryovae_nb.atomic import write_json_atomic
from cryovae_nb.errors import ConfigError
from cryovae_nb.faults import fault_point

MARKER = "cryovae_run.json"
FORMAT = "cryovae_nb run"
FORMAT_VERSION = 1
# what a Trainer writes; a restart moves these (and only these) aside
RUN_FILES = ("config.json", "config.yaml", "split.npz", "data.json", "metrics.jsonl", "checkpoints",
             "samples", "STOP")
# what cryovae_nb.launch writes beside them (they belong to the job, not to one training session)
LAUNCH_FILES = ("job.json", "launch_config.json", "launch.log", "exit.json", "job.sbatch")
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
    return (run_dir / "config.json").is_file() or (run_dir / "job.json").is_file()


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
    from cryovae_nb import __version__

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
