"""Particle preprocessing: array functions, and a streaming pipeline that chains them over a stack.

Each step is a function on float32 arrays of images ``(k, n, n)`` (a single ``(n, n)`` image works
too). ``preprocess_stack`` runs them chunk by chunk over a particle stack that is never loaded
whole, and writes a new ``.mrcs``, a RELION 3.1 ``.star`` carrying pixel size, CTF and poses, and a
``_split.npz`` holding a seeded train/test split (read back by ``cryovae_nb.training.data.read_split``);
the STAR file names the other files, see ``output_paths``.

Order (what a cryo-EM user expects; thesis §3.2):
  phase flip (needs the original box and pixel size) -> invert contrast -> coarsen -> Fourier crop
  -> normalise -> circular mask (after normalisation; masked pixels set to 0, so a tanh-normalised,
  masked stack lies in [0, 1]).

Normalisation ``"auto"`` (the default) picks what the model will fit: for a STAR file with CTF
columns, not phase flipped, ``"standardise"`` (mean 0, standard deviation 1 of the background
outside the mask circle: the noise's units, which the model's Gaussian likelihood with the CTF in
its forward model expects, model/forward.py); otherwise the seed's tanh estimator (eq. 2.12) for
its sigmoid link. The settings file records the method chosen, and training follows it
(``training.data.model_for_data``).

Pixel positions: pixel ``i`` samples position ``i`` and the particle centre is pixel ``n // 2``
(geometry.py). Fourier cropping keeps that centre on ``m // 2`` (a sub-pixel phase ramp when the
two do not line up, i.e. for odd sizes). Coarsening cannot: block ``j`` averages pixels
``j c .. j c + c - 1`` and so samples position ``j c + (c - 1) / 2``. ``downsample_shifts`` maps
pose shifts through both, so the poses written with the output stay right to a fraction of a pixel.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from cryovae_nb.atomic import atomic_path
from cryovae_nb.config import check_fields, save_config
from cryovae_nb.ctf import compute_ctf, phase_flip
from cryovae_nb.errors import ConfigError, InputError, OutputError
from cryovae_nb.faults import fault_after, fault_point
from cryovae_nb.io import (SOURCE_INDEX, Particles, Poses, StackWriter, make_image_names, outputset,
                           read_output_files, read_output_record, read_particles, source_record,
                           write_particles_star)
from cryovae_nb.volumes import as_images, diameter_mask, fourier_crop, radius_grid

NORMALISE_METHODS = ("auto", "tanh", "standardise", "zscore", "minmax", "none")


# ----------------------------------------------------------------------------- array functions

def coarsen(images, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks of pixels (thesis eq. 2.20).

    The thesis prints the prefactor as 1/c, but an average of c*c pixels needs 1/c^2; we take the
    mean so that intensities keep their scale (a constant image stays the same constant).
    """
    x = as_images(images)
    n = x.shape[-1]
    if int(factor) != factor or factor < 1:
        raise ConfigError(f"coarsen factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    if n % factor:
        raise ConfigError(f"coarsen factor {factor} does not divide the box size {n}; "
                          f"use a factor that divides {n}, or Fourier-crop (--box) instead")
    if factor == 1:
        return x.copy()
    m = n // factor
    blocks = x.reshape(x.shape[:-2] + (m, factor, m, factor))
    return blocks.mean(axis=(-3, -1), dtype=np.float32)


def downsample_shifts(shifts, box: int, coarsen_factor: int = 1, new_box: int | None = None) -> np.ndarray:
    """Map in-plane shifts (px, ours: the particle centre sits at ``n//2 + s``) through
    ``coarsen`` then ``fourier_crop``, exactly as those functions move image content."""
    s = np.asarray(shifts, dtype=np.float64)
    c = int(coarsen_factor)
    n = box
    if c > 1:
        m = n // c
        # content at old position n//2 + s sits at new position (n//2 + s - (c-1)/2) / c
        s = (n // 2 + s - (c - 1) / 2) / c - m // 2
        n = m
    if new_box is not None and new_box != n:
        s = s * (new_box / n)  # the centre is kept, so shifts just scale with the pixel size
    return s


def normalise(images, method: str = "tanh", spread: float = 0.3,
              background_radius: float | None = None) -> np.ndarray:
    """Per-image normalisation: ``tanh`` (thesis eq. 2.12), ``zscore`` (2.11), ``minmax`` (2.10),
    ``standardise`` (zscore with the background's statistics: ``background_radius`` required).
    ``auto`` is tanh here (images alone say nothing of a CTF; the pipeline resolves it, see the
    module docstring).

    tanh: ``0.5 * (tanh(spread * (x - mu) / sigma) + 1)``, in [0, 1]. Mean and standard deviation
    are those of each image, or, with ``background_radius`` (pixels from the centre ``n//2``), of
    the pixels outside that radius only, so that the particle's own density does not set the scale.
    A flat image (sigma = 0) maps to 0.5 (tanh), 0 (zscore, minmax). ``none`` returns a copy.
    """
    x = as_images(images)
    if method not in NORMALISE_METHODS:
        raise ConfigError(f"normalise method must be one of {NORMALISE_METHODS}, got {method!r}")
    if method == "tanh" and not spread > 0:
        raise ConfigError(f"tanh spread must be positive, got {spread!r}")
    if method == "auto":
        method = "tanh"
    if method == "standardise" and background_radius is None:
        raise ConfigError("standardise takes its statistics from the background: give background_radius")
    if method == "none":
        return x.copy()
    axes = (-2, -1)
    if method == "minmax":
        if background_radius is not None:
            raise ConfigError("minmax normalisation uses the whole image; background_radius "
                              "applies to tanh and zscore only")
        lo = x.min(axis=axes, keepdims=True)
        rng = x.max(axis=axes, keepdims=True) - lo
        return ((x - lo) / np.where(rng > 0, rng, 1)).astype(np.float32, copy=False)
    if background_radius is None:
        mu = x.mean(axis=axes, keepdims=True, dtype=np.float64)
        sd = x.std(axis=axes, keepdims=True, dtype=np.float64)
    else:
        n = x.shape[-1]
        outside = radius_grid(n, 2) > background_radius
        if not outside.any():
            raise ConfigError(f"background_radius {background_radius} leaves no pixels outside it "
                              f"in a box of {n}")
        bg = x[..., outside]
        mu = bg.mean(axis=-1, dtype=np.float64)[..., None, None]
        sd = bg.std(axis=-1, dtype=np.float64)[..., None, None]
    sd = np.where(sd > 0, sd, np.inf)  # a flat image: (x - mu) / inf = 0
    z = ((x - mu.astype(np.float32)) / sd.astype(np.float32))
    if method in ("zscore", "standardise"):
        return z.astype(np.float32, copy=False)
    z *= np.float32(spread)
    np.tanh(z, out=z)
    z += 1
    z *= 0.5
    return z.astype(np.float32, copy=False)


def apply_mask(images, mask) -> np.ndarray:
    """Multiply images by a mask: the masked-out region becomes 0."""
    x = as_images(images)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != x.shape[-2:]:
        raise ConfigError(f"mask of shape {mask.shape} does not fit images of shape {x.shape[-2:]}")
    return x * mask


def invert_contrast(images) -> np.ndarray:
    """Negate the images (dark-on-light particles become light-on-dark, or back)."""
    return -as_images(images)


def train_test_split(n: int, test_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Boolean ``is_test`` of length n with exactly ``round(test_fraction * n)`` True, seeded."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must lie in [0, 1), got {test_fraction!r}")
    n_test = int(round(test_fraction * n))
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return is_test


# ----------------------------------------------------------------------------- the pipeline

@dataclass
class PreprocessConfig:
    """What ``preprocess_stack`` does; steps run in the order of the module docstring."""

    # config files written before the spelling became British say "normalize"
    RENAMED_OPTIONS: ClassVar[dict[str, str]] = {"normalize": "normalise"}

    coarsen: int = 1                         # average coarsen x coarsen blocks (1: off)
    box: int | None = None                   # Fourier-crop to this box after coarsening (None: off)
    invert: bool | str = "auto"              # negate the images: True, False or "auto" (contrast.py decides)
    phase_flip: bool = False                 # CTF phase flip (needs CTF columns in the STAR file)
    normalise: str = "auto"                  # auto | tanh | standardise | zscore | minmax | none
    spread: float = 0.3                      # tanh spread (lambda of eq. 2.12)
    background_radius: float | None = None   # px of the output box; stats from outside it
                                             # (standardise: default the mask's radius)
    mask_diameter: float | None = 0.95       # fraction of the output box (None/0: no mask)
    mask_soft_edge: float = 0.0              # px of raised-cosine fall-off inside the diameter
    test_fraction: float = 0.1
    seed: int = 0
    chunk_size: int = 1024                   # images per read; bounds memory
    pixel_size: float | None = None          # Å, overrides the input's (needed when it has none)

    def validate(self) -> None:
        def bad(msg):
            raise ConfigError(f"PreprocessConfig: {msg}")

        check_fields(self)

        if not isinstance(self.coarsen, (int, np.integer)) or isinstance(self.coarsen, bool) or self.coarsen < 1:
            bad(f"coarsen must be a positive integer, got {self.coarsen!r}")
        if self.box is not None and (not isinstance(self.box, (int, np.integer)) or self.box < 1):
            bad(f"box must be a positive integer or None, got {self.box!r}")
        if self.normalise not in NORMALISE_METHODS:
            bad(f"normalise must be one of {NORMALISE_METHODS}, got {self.normalise!r}")
        for name in ("spread", "background_radius", "mask_diameter", "mask_soft_edge", "test_fraction",
                     "pixel_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.number))
                                  or not np.isfinite(v)):
                bad(f"{name} must be a finite number, got {v!r}")
        if not (isinstance(self.invert, (bool, np.bool_)) or self.invert == "auto"):
            bad(f"invert must be true, false or 'auto', got {self.invert!r}")
        if not self.spread > 0:
            bad(f"spread must be positive, got {self.spread!r}")
        if self.background_radius is not None and not self.background_radius >= 0:
            bad(f"background_radius must be >= 0 px, got {self.background_radius!r}")
        if self.mask_diameter is not None and not 0 < self.mask_diameter <= 1:
            bad(f"mask_diameter is a fraction of the box in (0, 1], got {self.mask_diameter!r}")
        if not self.mask_soft_edge >= 0:
            bad(f"mask_soft_edge must be >= 0 px, got {self.mask_soft_edge!r}")
        if not 0 <= self.test_fraction < 1:
            bad(f"test_fraction must lie in [0, 1), got {self.test_fraction!r}")
        if not isinstance(self.chunk_size, (int, np.integer)) or self.chunk_size < 1:
            bad(f"chunk_size must be a positive integer, got {self.chunk_size!r}")
        if self.pixel_size is not None and not self.pixel_size > 0:
            bad(f"pixel_size must be positive, got {self.pixel_size!r}")


@dataclass
class _Plan:
    """Sizes and pixel sizes through the pipeline, fixed before any image is read."""

    box_in: int
    box_coarse: int
    box_out: int
    pixel_in: float
    pixel_out: float
    mask: np.ndarray | None
    background_radius: float | None  # the normalisation's statistics come from outside it (None: all)


def _plan(cfg: PreprocessConfig, box_in: int, pixel_in: float | None, source) -> _Plan:
    if pixel_in is None:
        raise InputError("no pixel size in the STAR file or the stack header; set pixel_size "
                         "(--pixel-size) to the input's Å/px", source)
    if box_in % cfg.coarsen:
        raise ConfigError(f"{source}: coarsen factor {cfg.coarsen} does not divide the box size "
                          f"{box_in}; pick a divisor of {box_in} or Fourier-crop with box")
    box_coarse = box_in // cfg.coarsen
    box_out = box_coarse if cfg.box is None else int(cfg.box)
    if box_out > box_coarse:
        raise ConfigError(f"{source}: target box {box_out} is larger than the box "
                          f"{box_coarse} after coarsening; Fourier cropping only shrinks")
    pixel_out = pixel_in * cfg.coarsen * box_coarse / box_out  # coarsen: x c; crop n -> m: x n/m
    mask = None
    if cfg.mask_diameter:
        mask = diameter_mask(box_out, cfg.mask_diameter, cfg.mask_soft_edge, ndim=2)
    radius = cfg.background_radius
    if radius is None and cfg.normalise == "standardise":  # the particle's circle: the mask's
        radius = 0.5 * (cfg.mask_diameter or PreprocessConfig.mask_diameter) * box_out
    if radius is not None and not (radius_grid(box_out, 2) > radius).any():
        raise ConfigError(f"background_radius {radius} px leaves no background in "
                          f"the output box of {box_out} px")
    return _Plan(box_in, box_coarse, box_out, float(pixel_in), float(pixel_out), mask, radius)


def resolved_normalisation(cfg: PreprocessConfig, ctf, flipped: bool = False) -> str:
    """The method ``cfg.normalise`` means for images with CTF parameters ``ctf`` (None: none):
    ``"auto"`` is ``"standardise"`` for CTF data the model will image through its CTF (not phase
    flipped, here or before: ``flipped``), else ``"tanh"``; other methods are themselves."""
    if cfg.normalise != "auto":
        return cfg.normalise
    return "standardise" if ctf is not None and not cfg.phase_flip and not flipped else "tanh"


def resolved_invert(cfg: PreprocessConfig, particles, flipped: bool = False) -> bool:
    """``cfg.invert``, with ``"auto"`` decided by looking at the images (``contrast.detect_contrast``);
    when they cannot tell, the images are kept as they are, with a warning that says so."""
    if cfg.invert != "auto":
        return bool(cfg.invert)
    from cryovae_nb.contrast import detect_contrast

    check = detect_contrast(particles, already_flipped=flipped)
    if check.invert is None:
        warnings.warn(f"{particles.source or 'input'}: {check.describe()}", stacklevel=3)
    return bool(check.invert)


def _ctf_arrays(ctf, source) -> dict[str, np.ndarray]:
    arrays = {f.name: np.asarray(getattr(ctf, f.name), dtype=np.float64) for f in dataclasses.fields(ctf)}
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            row = int(np.flatnonzero(~np.isfinite(a))[0])
            raise InputError(f"row {row + 1}: CTF parameter {name} is missing or not a number", source)
    return arrays


def _transform(x: np.ndarray, cfg: PreprocessConfig, plan: _Plan, ctf: dict | None) -> np.ndarray:
    """All per-image steps on a small batch (the same result whatever the batching)."""
    if cfg.phase_flip:
        x = phase_flip(x, compute_ctf(plan.box_in, plan.pixel_in, **ctf, half=True))
    if cfg.invert:
        x = invert_contrast(x)
    if cfg.coarsen > 1:
        x = coarsen(x, cfg.coarsen)
    if plan.box_out != plan.box_coarse:
        x = fourier_crop(x, plan.box_out)
    x = normalise(x, cfg.normalise, cfg.spread, plan.background_radius)
    if plan.mask is not None:
        x = apply_mask(x, plan.mask)
    return x


# per-image steps run on batches this size: keeps FFT/CTF temporaries small and cache-friendly
_BATCH = 128


def _chunks(stack, chunk_size: int):
    """Yield (start, images), reading the next chunk in a thread while this one is processed.

    At most two chunks are in memory: the one being processed and the one being read.
    """
    from concurrent.futures import ThreadPoolExecutor

    n = len(stack)
    with ThreadPoolExecutor(1, thread_name_prefix="preprocess-read") as pool:
        nxt = pool.submit(stack.__getitem__, slice(0, min(chunk_size, n)))
        for start in range(0, n, chunk_size):
            chunk = nxt.result()
            stop = start + chunk_size
            if stop < n:
                nxt = pool.submit(stack.__getitem__, slice(stop, min(stop + chunk_size, n)))
            yield start, chunk


def output_star(output: str | os.PathLike) -> Path:
    """``out.mrcs`` / ``out.star`` / ``out`` -> ``out.star``, the output's one fixed name."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix.lower() in (".mrcs", ".mrc", ".star") else output
    return stem.with_name(stem.name + ".star")


def output_paths(output: str | os.PathLike) -> dict[str, Path]:
    """The files of the set published at ``output`` (``out.mrcs`` / ``out.star`` / ``out``): the
    STAR file ``out.star`` and the stack, split and config files it names (``out.TAG.mrcs``,
    ``out.TAG_split.npz``, ``out.TAG_preprocess.json``; TAG: 8 hex digits of the run's id; sets of
    the previous layout: ``out.mrcs``, ``out_split.npz``, ``out_preprocess.json``)."""
    star = output_star(output)
    files = read_output_files(star)
    if files is None:
        raise InputError("not an output of cryovae preprocess (no data_cryovae_output block)", star)
    return {"star": star, **files}


def preprocess_stack(input, output: str | os.PathLike, cfg: PreprocessConfig | None = None, *,
                     datadir: str | os.PathLike | None = None, progress: bool = True):
    """Stream a particle stack through the steps of ``cfg``; return the output's ``Particles``.

    ``input`` is a STAR file, a bare ``.mrcs``/``.mrc`` or a ``Particles``. Writes (never onto an
    input file) ``<out>.<TAG>.mrcs`` (float32, new pixel size in the header; TAG: 8 hex digits of
    the run's id), ``<out>.<TAG>_split.npz`` (``is_test`` and the run id),
    ``<out>.<TAG>_preprocess.json`` (the config) and, published last, ``<out>.star`` (RELION 3.1;
    every input column carried through, CTF unchanged, poses with shifts moved as the images
    were, the new pixel size and box, and a ``data_cryovae_output`` block recording the run id,
    the split and config files and the stack, see ``cryovae_nb.io.outputset``). All four are
    written as temporaries first; the other three get new names, so only the STAR file's rename
    replaces anything, and it switches from the previous complete set to the new one at once.
    The previous set's files are removed after it; a killed run's files and temporaries at the
    next start. A full disk raises ``OutputError`` and removes the temporaries. Memory stays at
    about two chunks of input images whatever the stack size.
    """
    cfg = PreprocessConfig() if cfg is None else cfg
    cfg.validate()
    particles = input if isinstance(input, Particles) else read_particles(input, datadir=datadir)
    source = particles.source or "input"
    cfg = dataclasses.replace(cfg, normalise=resolved_normalisation(cfg, particles.ctf, particles.phase_flipped))
    plan = _plan(cfg, particles.box, cfg.pixel_size or particles.pixel_size, source)
    star = output_star(output)
    inputs = {Path(p).resolve() for p in particles.images.paths}
    if particles.source:
        inputs.add(Path(particles.source).resolve())
    if star.resolve() in inputs:  # the other outputs get new names, never an input's
        raise InputError(f"refusing to overwrite input file(s) {[str(star)]}; choose another output", source)
    # after the cheap checks: "auto" reads a sample of the images; recorded, as normalise is
    cfg = dataclasses.replace(cfg, invert=resolved_invert(cfg, particles, particles.phase_flipped))
    ctf = None
    if cfg.phase_flip:
        if particles.ctf is None:
            raise InputError("phase flipping needs CTF parameters (rlnDefocusU, rlnVoltage, "
                             "rlnSphericalAberration, rlnAmplitudeContrast); the input has none", source)
        ctf = _ctf_arrays(particles.ctf, source)
        if particles.phase_flipped:
            raise InputError("images are already phase flipped (rlnCtfDataArePhaseFlipped = 1); "
                             "flipping again would undo it", source)

    n = len(particles)
    try:  # the set published now: its files are kept, and removed once the new set replaced it
        record = read_output_record(star) if star.is_file() else None
        published = {} if record is None else outputset.members(record, star)
    except InputError:
        record, published = None, {}  # an unreadable STAR file: replaced, nothing it names is touched
    keep = inputs | {p.resolve() for p in published.values()}
    for stale in outputset.leftovers(star):
        if stale.resolve() not in keep:
            stale.unlink(missing_ok=True)  # ours, left by a killed run (never mistaken for outputs)
    previous = {} if record is None else {k: p for k, p in outputset.previous_files(record, star).items()
                                          if p.resolve() not in inputs}
    run_id = outputset.new_run_id()
    while record is not None and outputset.run_tag(run_id) == outputset.run_tag(record.get("cryovaeRunId", "")):
        run_id = outputset.new_run_id()  # the new files must not take the published set's names
    names = outputset.member_names(star.stem, run_id)
    paths = {"star": star, **{k: star.with_name(name) for k, name in names.items()}}
    tmp: dict[str, Path] = {}
    try:
        with contextlib.ExitStack() as publish:
            # Every file goes to a temporary first; the renames happen as the block exits, in the
            # reverse order of entry: stack, split, config, and the STAR file last. Only the last
            # replaces a file: the others get the run's own names, which the STAR file records,
            # so a kill before its rename leaves the previous set whole and named by it.
            for k in ("star", "config", "split", "stack"):
                if k != "star":
                    publish.enter_context(fault_after(f"published-{k}"))  # between two renames
                tmp[k] = publish.enter_context(atomic_path(paths[k]))
            _write_images(particles, tmp["stack"], cfg, plan, ctf, source, progress)
            fault_point("stack-written")
            poses = particles.poses
            if poses is not None:
                shifts = downsample_shifts(poses.shifts, plan.box_in, cfg.coarsen, plan.box_out)
                poses = Poses(poses.rotations, poses.euler, shifts)
            out = particles
            if cfg.phase_flip:  # tell RELION-aware readers the CTF phases are already corrected
                df = particles.df.copy()
                df["rlnCtfDataArePhaseFlipped"] = 1
                cols = list(particles.particle_columns)
                cols += [] if "rlnCtfDataArePhaseFlipped" in cols else ["rlnCtfDataArePhaseFlipped"]
                out = Particles(df, particles.images, particles.pixel_size, optics=particles.optics,
                                particle_columns=cols, source=particles.source, ctf=particles.ctf,
                                poses=particles.poses, _parse=False)
            out = _with_provenance(out, particles.provenance, cfg)
            image_names = make_image_names(paths["stack"], n, relative_to=paths["star"])
            block = {**outputset.stack_record(run_id, tmp["stack"], image_names[0].split("@", 1)[1]),
                     "cryovaeSplit": names["split"], "cryovaeConfig": names["config"]}
            write_particles_star(tmp["star"], out, image_names=image_names, poses=poses,
                                 pixel_size=plan.pixel_out, box=plan.box_out, extra_blocks={outputset.BLOCK: block})
            fault_point("star-written")
            np.savez(tmp["split"], is_test=train_test_split(n, cfg.test_fraction, cfg.seed),
                     seed=np.int64(cfg.seed), test_fraction=np.float64(cfg.test_fraction),
                     run_id=np.str_(run_id))
            fault_point("split-written")
            save_config(cfg, tmp["config"])
            fault_point("temporaries-written")
        fault_point("published")
    except OSError as e:
        # name the output the user asked for, not our temporary name for it
        where = f"{getattr(e, 'path', None)} {getattr(e, 'filename', None)} {e}"
        key = next((k for k, t in tmp.items() if t.name in where), "stack")
        raise OutputError.from_oserror(e, paths[key]) from None
    # the previous set's files, now named by no STAR file (a kill here leaves them to the next
    # start's clean-up); the new set is published, so a file we cannot remove is only a warning
    for key, old in previous.items():
        try:
            old.unlink(missing_ok=True)
        except OSError as e:
            warnings.warn(f"{old}: cannot remove this file of the previous output ({e.strerror})", stacklevel=2)
        fault_point(f"removed-previous-{key}")
    return read_particles(paths["star"])


def _with_provenance(particles: Particles, recorded: dict | None, cfg: PreprocessConfig) -> Particles:
    """``particles`` with their original recorded (``io.star``'s provenance): each row's index
    in the input STAR and the input's path and hash. Particles that already name an original
    (a subset of a preprocessed STAR, preprocessed again) keep it: the user's file stays the
    original. In-memory particles (no file) record nothing."""
    if recorded is not None and SOURCE_INDEX in particles.df.columns:
        if cfg.coarsen > 1:
            # the record holds one coarsening of the original box: a second one, after the first
            # pass's crop or coarsening, would map learned shifts back to the original wrongly
            raise InputError("this set was already preprocessed: coarsen its original STAR instead "
                             f"({recorded.get('cryovaeSourceStar')})", particles.source)
        particles.provenance = recorded
        return particles
    if particles.source is None:
        return particles
    df = particles.df.copy()
    df[SOURCE_INDEX] = np.arange(len(df), dtype=np.int64)
    cols = [c for c in particles.particle_columns if c != SOURCE_INDEX] + [SOURCE_INDEX]
    out = Particles(df, particles.images, particles.pixel_size, optics=particles.optics,
                    particle_columns=cols, source=particles.source, ctf=particles.ctf,
                    poses=particles.poses, _parse=False)
    # the coarsening factor: learned shifts map back to the original box through it
    out.provenance = {**source_record(particles), "cryovaeSourceCoarsen": int(cfg.coarsen)}
    return out


def original_shifts(shifts, box: int, coarsen_factor: int = 1, new_box: int | None = None) -> np.ndarray:
    """The inverse of ``downsample_shifts``: shifts (px) in the preprocessed box back to the
    original ``box`` (learned poses written into the user's own STAR file)."""
    s = np.asarray(shifts, dtype=np.float64)
    c = int(coarsen_factor)
    n = box // c
    if new_box is not None and new_box != n:
        s = s * (n / new_box)
    if c > 1:
        s = (s + n // 2) * c + (c - 1) / 2 - box // 2
    return s


def _write_images(particles, path: Path, cfg: PreprocessConfig, plan: _Plan, ctf, source, progress: bool):
    """Stream the images through the steps of ``cfg`` into a new stack at ``path``."""
    from tqdm.auto import tqdm

    n = len(particles)
    with StackWriter(path, n, plan.box_out, plan.pixel_out) as writer, \
            tqdm(total=n, unit="img", desc="preprocess", disable=not progress) as bar:
        for start, chunk in _chunks(particles.images, cfg.chunk_size):
            for b in range(0, len(chunk), _BATCH):
                rows = slice(start + b, start + min(b + _BATCH, len(chunk)))
                sub = None if ctf is None else {k: v[rows] for k, v in ctf.items()}
                y = _transform(chunk[b:b + _BATCH], cfg, plan, sub)
                bad = ~np.isfinite(y).all(axis=(1, 2))  # checked on the small output, not the input
                if bad.any():
                    raise InputError(f"image {rows.start + int(np.flatnonzero(bad)[0]) + 1} holds NaN/Inf "
                                     "values (or becomes NaN in preprocessing)", source)
                writer.write(y)
            del chunk
            bar.update(min(cfg.chunk_size, n - start))
            fault_point("stack-chunk-written")


def preprocess_images(images, cfg: PreprocessConfig | None = None, *, pixel_size: float | None = None,
                      ctf=None) -> np.ndarray:
    """The pipeline's per-image steps on an in-memory array (notebooks, small data).

    ``pixel_size`` (Å) and ``ctf`` (a ``CTFParams`` with one entry per image) are needed for
    phase flipping, and for ``invert="auto"`` to judge CTF-modulated images.
    """
    cfg = PreprocessConfig() if cfg is None else cfg
    cfg.validate()
    x = as_images(images)
    single = x.ndim == 2
    x = x[None] if single else x
    cfg = dataclasses.replace(cfg, normalise=resolved_normalisation(cfg, ctf))
    if cfg.invert == "auto":  # judged on these images alone (the pipeline judges a sample of the stack)
        from cryovae_nb.contrast import centre_contrast, contrast_check

        half = None if ctf is None or pixel_size is None else compute_ctf(
            x.shape[-1], pixel_size, **_ctf_arrays(ctf, "images"), half=True)
        cfg = dataclasses.replace(cfg, invert=bool(contrast_check(centre_contrast(x, half)).invert))
    plan = _plan(cfg, x.shape[-1], pixel_size if pixel_size is not None else 1.0, "images")
    arrays = None
    if cfg.phase_flip:
        if ctf is None or pixel_size is None:
            raise ConfigError("phase flipping needs the images' pixel_size and ctf")
        arrays = _ctf_arrays(ctf, "images")
    out = np.concatenate([
        _transform(x[b:b + _BATCH], cfg, plan,
                   None if arrays is None else {k: v[b:b + _BATCH] for k, v in arrays.items()})
        for b in range(0, len(x), _BATCH)])
    return out[0] if single else out
