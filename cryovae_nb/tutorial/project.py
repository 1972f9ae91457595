"""The notebooks' project file: which particles the five notebooks work on, in one place.

``WORKDIR/project.yaml`` is written by 01_preprocess and read by every other notebook::

    star_file: /abs/path/run_data.star   # null: the tutorial's simulated hinge dataset
    datadir: null                        # where the STAR file's image paths point (null: beside it)
    target_box: 64                       # the preprocessed box (null: keep the input's)
    preprocessed: preprocessed_run_data  # folder under WORKDIR (particles.star and its files)
    run_name: run_run_data               # the training run's folder under WORKDIR

Pointing notebook 01 at another STAR file is the one edit that moves notebooks 02-05 to it. The
folders are chosen from the provenance ``cryovae preprocess`` records (the original's path and
SHA-256, ``io.star``): a folder holding particles of another input is never reused, the new input
gets folders of its own (``preprocessed_<stem>``, ``run_<stem>``), and ``check_folders`` refuses a
preprocessed set or a run made from something else, with a one-line message saying what to do.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from cryovae_nb.atomic import write_text_atomic
from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.io import file_sha256, read_particles

PROJECT_FILE = "project.yaml"
OWN_DATA_BOX = 64  # the model's box for a user's data (issue #12); Å/px and Nyquist are printed
TUTORIAL = ("preprocessed", "run")


@dataclass
class Project:
    """What the notebooks share (see the module docstring); paths absolute."""

    workdir: Path
    star_file: Path | None
    datadir: Path | None = None
    target_box: int | None = None
    preprocessed: str = TUTORIAL[0]
    run_name: str = TUTORIAL[1]

    @property
    def path(self) -> Path:
        return self.workdir / PROJECT_FILE

    @property
    def input_star(self) -> Path:
        """The particles as acquired: the user's STAR file or the simulated one."""
        return self.star_file if self.star_file is not None else self.workdir / "simulated" / "particles.star"

    @property
    def preprocessed_star(self) -> Path:
        return self.workdir / self.preprocessed / "particles.star"

    @property
    def run_dir(self) -> Path:
        return self.workdir / self.run_name

    def save(self) -> Path:
        text = yaml.safe_dump({
            "star_file": None if self.star_file is None else str(self.star_file),
            "datadir": None if self.datadir is None else str(self.datadir),
            "target_box": self.target_box, "preprocessed": self.preprocessed, "run_name": self.run_name,
        }, sort_keys=False)
        write_text_atomic(self.path, "# written by 01_preprocess; read by every notebook\n" + text)
        return self.path


def _abs(p) -> Path | None:
    return None if p is None else Path(p).expanduser().resolve()


def read_project(workdir: str | os.PathLike) -> Project | None:
    """The project in ``WORKDIR/project.yaml``; None when there is none (the tutorial's defaults)."""
    workdir = Path(workdir).resolve()
    path = workdir / PROJECT_FILE
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read the project file ({' '.join(str(e).split())})", path) from None
    if not isinstance(raw, dict):
        raise InputError("the project file is not a mapping of settings", path)
    unknown = set(raw) - {"star_file", "datadir", "target_box", "preprocessed", "run_name"}
    if unknown:
        raise InputError(f"unknown setting(s) {sorted(unknown)} in the project file", path)
    box = raw.get("target_box")
    if box is not None and (not isinstance(box, int) or box < 8):
        raise InputError(f"target_box must be a whole number of pixels >= 8 or null, got {box!r}", path)
    for key in ("preprocessed", "run_name"):
        if not _plain_name(raw.get(key, "x")):
            raise InputError(f"{key} must be a folder name inside the workdir, got {raw.get(key)!r}", path)
    return Project(workdir, _abs(raw.get("star_file")), _abs(raw.get("datadir")), box,
                   raw.get("preprocessed", TUTORIAL[0]), raw.get("run_name", TUTORIAL[1]))


def _plain_name(name) -> bool:
    return isinstance(name, str) and bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name))


def made_from(preprocessed_star: Path) -> tuple[Path, str] | None:
    """(original STAR, its SHA-256) a preprocessed STAR records; None when it records none."""
    if not preprocessed_star.is_file():
        return None
    try:
        rec = read_particles(preprocessed_star).provenance
    except InputError:
        return None  # unreadable (a killed run's leftovers): not this input's, never reused
    return None if rec is None else (Path(str(rec["cryovaeSourceStar"])), str(rec["cryovaeSourceSha256"]))


def _same_input(preprocessed_star: Path, input_star: Path) -> bool:
    src = made_from(preprocessed_star)
    if src is None:
        return False
    if src[0] != input_star.resolve():
        return False
    return not input_star.is_file() or file_sha256(input_star) == src[1]


def choose_folders(workdir: Path, input_star: Path, simulated: bool) -> tuple[str, str]:
    """(preprocessed folder, run folder) for an input: the tutorial's names when they are free or
    hold this very input (same path and content), else names of the input's own."""
    if simulated:
        return TUTORIAL  # the tutorial's own dataset: re-simulating replaces it (a run trained on the
        # old simulation refuses to resume: the Trainer compares the data's fingerprint)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", input_star.stem) or "data"
    tag = hashlib.sha256(str(input_star.resolve()).encode()).hexdigest()[:8]
    # own data: names of its own first; the tutorial's names only in a workdir without a tutorial
    names = [(f"preprocessed_{stem}", f"run_{stem}"), (f"preprocessed_{stem}_{tag}", f"run_{stem}_{tag}"), TUTORIAL]
    for pre, run in names:  # a folder made from this very input (same path and content)
        if _same_input(workdir / pre / "particles.star", input_star):
            return pre, run
    for pre, run in names:  # else the first free pair
        if not (workdir / pre).exists() and not (workdir / run).exists():
            return pre, run
    raise InputError(f"every folder this input could use holds another dataset ({names}); "
                     "choose another WORKDIR", workdir)


def default_target_box(box_in: int, pixel_size: float | None, simulated: bool) -> int | None:
    """Own data: 64 px (Fourier crop) when the images are larger; the tutorial keeps its box."""
    if simulated or box_in <= OWN_DATA_BOX:
        return None
    return OWN_DATA_BOX


def describe_box(box_in: int, pixel_size: float | None, target_box: int | None) -> str:
    """``"256 px at 1.06 Å/px -> 64 px at 4.24 Å/px (Nyquist 8.48 Å)"``: what the crop costs."""
    box = box_in if target_box is None else target_box
    if pixel_size is None:
        return f"{box_in} px -> {box} px (pixel size unknown)"
    px = pixel_size * box_in / box
    return f"{box_in} px at {pixel_size:.3g} Å/px -> {box} px at {px:.3g} Å/px (Nyquist {2 * px:.3g} Å)"


def write_project(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None, *,
                  datadir: str | os.PathLike | None = None, target_box: int | str | None = "auto",
                  box_in: int | None = None, pixel_size: float | None = None) -> Project:
    """Notebook 01: the project for ``star_file`` (None: the simulated tutorial), its folders
    chosen so that another input's files are never reused, written to ``WORKDIR/project.yaml``.
    ``target_box="auto"``: 64 px for own data larger than that (``box_in``), else the input's box."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    star = _abs(star_file)
    if star is not None and not star.is_file():
        raise InputError("STAR file not found", star)
    project = Project(workdir, star, _abs(datadir))
    if target_box == "auto":
        if box_in is None and star is not None:
            raw = read_particles(star, datadir=datadir)  # headers only: the images stay on disk
            box_in, pixel_size = raw.box, pixel_size or raw.pixel_size
        target_box = None if box_in is None else default_target_box(box_in, pixel_size, star is None)
    elif target_box is not None and (isinstance(target_box, bool) or not isinstance(target_box, int)):
        raise ConfigError(f"TARGET_BOX must be 'auto', a number of pixels or None, got {target_box!r}")
    project.target_box = target_box
    previous = read_project(workdir)
    project.preprocessed, project.run_name = choose_folders(workdir, project.input_star, star is None)
    project.save()
    if previous is not None and previous.input_star != project.input_star:
        print(f"project: switched from {previous.input_star} to {project.input_star}; its files go to "
              f"{project.preprocessed}/ and {project.run_name}/ ({previous.preprocessed}/ and "
              f"{previous.run_name}/ keep the previous dataset's)")
    return project


def current_project(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None,
                    datadir: str | os.PathLike | None = None) -> Project:
    """Notebooks 02-05: the project 01 wrote, or, with ``star_file`` given (an override), the
    project of that input (the written one when it is the same file), or the tutorial's defaults."""
    workdir = Path(workdir).resolve()
    project = read_project(workdir)
    if star_file is None:
        return project if project is not None else Project(workdir, None)
    star = _abs(star_file)
    if project is not None and project.star_file == star:
        return project
    pre, run = choose_folders(workdir, star, False)
    return Project(workdir, star, _abs(datadir), None, pre, run)


def check_folders(project: Project) -> None:
    """Refuse a preprocessed set made from another input than the project's (one line)."""
    star = project.preprocessed_star
    if not star.is_file():
        return
    src = made_from(star)
    if src is None:
        raise InputError(f"records no original input, so it cannot be checked against {project.input_star}; "
                         "delete the folder or rerun 01_preprocess", star)
    if src[0] != project.input_star.resolve():
        raise InputError(f"was preprocessed from {src[0]}, not from the project's {project.input_star}; "
                         "rerun 01_preprocess (it picks a folder of the input's own)", star)
    if project.input_star.is_file() and file_sha256(project.input_star) != src[1]:
        raise InputError(f"was preprocessed from an earlier version of {project.input_star} (it changed "
                         "since); rerun 01_preprocess", star)


__all__ = ["OWN_DATA_BOX", "PROJECT_FILE", "Project", "check_folders", "choose_folders", "current_project",
           "default_target_box", "describe_box", "made_from", "read_project", "write_project"]
