"""The data side of training: the train/test split, the batch order of each epoch, the loader,
and what the data says the model must be (its CTF and normalisation, `model_for_data`).

The split file (``split.npz``) has two layouts: preprocessing writes a boolean ``is_test`` per
particle (``cryovae_nb.preprocess``; its STAR file names it), a run folder holds the ``train`` /
``test`` row indices the Trainer used. `read_split` reads both, so there is one reader of the
split file.
"""
from __future__ import annotations

import json
import os
import queue
import threading
from typing import Callable

import numpy as np

from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.model.batch import OPTICS_FIELDS, Batch, Optics


def make_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices; the same for the same (n, fraction, seed)."""
    perm = np.random.default_rng([seed, 0x5B17]).permutation(n)
    n_test = int(round(n * test_fraction))
    if test_fraction > 0:
        n_test = min(max(n_test, 1), n - 1)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])



def read_split(path: str | os.PathLike, n: int | None = None,
               output_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) 0-based row indices from a split ``.npz``: arrays 'train' and 'test', or a
    boolean 'is_test' per particle (what preprocessing writes). ``path`` may also be the STAR file
    preprocessing wrote: the split it names is read (and must be that run's). ``n``: the data's
    particle count, checked against the file (None: not checked; an 'is_test' file gives its own
    count). ``output_id``: the run id of the data's STAR file (``Particles.output_id``); a split
    written by another preprocessing run is refused."""
    if os.fspath(path).lower().endswith(".star"):
        # heavy: the STAR reader (pandas, starfile), only for a STAR path; the run folder's own
        # split.npz (RunFolder, launch, the monitor) reads without it
        from cryovae_nb.io import outputset
        from cryovae_nb.io.star import read_output_record

        record = read_output_record(path)
        if record is None:
            raise InputError("this STAR file names no split file (it was not written by cryovae "
                             "preprocess); give the split .npz", path)
        output_id = output_id or str(record.get("cryovaeRunId"))
        path = outputset.members(record, path)["split"]
    try:
        with np.load(path, allow_pickle=False) as f:
            if output_id is not None and "run_id" in f and str(f["run_id"]) != output_id:
                raise InputError("written by another preprocessing run than the particles' STAR file "
                                 "(interrupted, or files from two runs); rerun the preprocessing", path)
            if "is_test" in f:
                is_test = np.asarray(f["is_test"], bool)
                if is_test.ndim != 1 or (n is not None and is_test.shape != (n,)):
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
        if n is not None and idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"'{name}' indices outside 0..{n - 1} (the data has {n} particles)", path)
        if idx.size and idx.min() < 0:
            raise InputError(f"'{name}' has negative indices", path)
    if np.intersect1d(train, test).size:
        raise InputError("'train' and 'test' share particles", path)
    return train, test


def particle_optics(particles, source=None) -> Optics:
    """Every particle's CTF parameters (``Particles.ctf``: RELION 3.1/5 optics groups merged into
    each row, per-particle columns overriding them) with the images' pixel size (that of the STAR
    file, i.e. after preprocessing's Fourier crop), as float32 (n,) arrays. Raises InputError
    naming ``source`` when the file has no CTF columns, a value is missing, or no pixel size."""
    source = source or getattr(particles, "source", None)
    ctf = particles.ctf
    if ctf is None:
        raise InputError("no CTF columns (rlnDefocusU, rlnVoltage, rlnSphericalAberration, "
                         "rlnAmplitudeContrast) for the CTF model (model.loss.ctf)", source)
    if not particles.pixel_size:
        raise InputError("no pixel size (rlnImagePixelSize) for the CTF model", source)
    arrays = {name: np.asarray(getattr(ctf, name), np.float64) for name in OPTICS_FIELDS[:-1]}
    arrays["pixel_size"] = np.full(len(particles), float(particles.pixel_size))
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            row = int(np.flatnonzero(~np.isfinite(a))[0])
            raise InputError(f"row {row + 1}: CTF parameter {name} is missing or not a number", source)
    w = arrays["amp_contrast"]
    if ((w < 0) | (w >= 1)).any() or (arrays["voltage"] <= 0).any():
        raise InputError("CTF columns out of range (amplitude contrast in [0, 1), voltage > 0 kV)", source)
    return Optics(*(arrays[name].astype(np.float32) for name in OPTICS_FIELDS))


def data_normalisation(path) -> str | None:
    """How ``cryovae preprocess`` normalised the images of its STAR file ``path`` (``"tanh"``,
    ``"standardise"``, ...: the setting its ``_preprocess.json`` records); None for a STAR file
    other software wrote (or a bare stack)."""
    if path is None or not os.fspath(path).lower().endswith(".star"):
        return None
    # heavy: the STAR reader, only for a STAR path (as read_split)
    from cryovae_nb.io.star import read_output_files

    files = read_output_files(path)
    if files is None or not files["config"].is_file():
        return None
    try:
        settings = json.loads(files["config"].read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the preprocessing settings ({e})", files["config"]) from None
    method = settings.get("normalise", settings.get("normalize"))  # files before the British spelling
    return None if method is None else str(method)


def model_for_data(model, particles, source=None):
    """The ModelConfig to train ``model`` on ``particles`` with, following what the data is.

    Images that ``cryovae preprocess`` standardised (``normalise="standardise"``, its default for
    data with CTF columns) are fit by the identity link and, when the file has CTF columns and
    they were not phase flipped, the CTF model: a model at the CTF-free defaults (sigmoid link, no
    CTF) switches to that (``ModelConfig.preset("ctf")``'s loss). Everything else is returned as
    it is. A model the data contradicts is a ConfigError naming the file: the CTF model on
    images without CTF columns, phase flipped, or not standardised; the Bernoulli likelihood on
    standardised images."""
    source = source or getattr(particles, "source", None)
    norm = data_normalisation(source)
    flipped = particles.phase_flipped
    loss = model.loss
    if norm == "standardise":
        if loss.likelihood == "bernoulli":
            raise ConfigError(f"{source}: the images are standardised (cryovae preprocess), which the "
                              "bernoulli likelihood cannot score; use likelihood 'gaussian'")
        if loss.link == "sigmoid" and not loss.ctf:
            model = model.with_options(link="identity", ctf=particles.ctf is not None and not flipped)
    if model.loss.ctf:
        if particles.ctf is None:
            raise ConfigError(f"{source}: model.loss.ctf needs CTF columns (rlnDefocusU, rlnVoltage, "
                              "rlnSphericalAberration, rlnAmplitudeContrast); the file has none")
        if flipped:
            raise ConfigError(f"{source}: the images are phase flipped (rlnCtfDataArePhaseFlipped = 1); "
                              "the CTF model needs them as recorded: preprocess without --phase-flip, "
                              "or train with model.loss.ctf false")
        if norm is not None and norm != "standardise":
            raise ConfigError(f"{source}: the CTF model needs standardised images, these are "
                              f"{norm!r}-normalised; preprocess with --normalise standardise")
    return model


class BatchReader:
    """The `Batch` of given particle rows: their images, read from the (memory-mapped) stack, their
    known poses when the run trains with them (``rotations``/``shifts`` None otherwise) and their
    CTF parameters when the model applies the CTF (``optics``, an `Optics` of all particles)."""

    def __init__(self, images, rotations: np.ndarray | None = None, shifts: np.ndarray | None = None,
                 optics: Optics | None = None):
        self._images = images
        self._rotations = None if rotations is None else np.asarray(rotations, np.float32)
        self._shifts = None if shifts is None else np.asarray(shifts, np.float32)
        self._optics = optics

    def images(self, idx: np.ndarray) -> np.ndarray:
        # ParticleStack reads refuse NaN/Inf, naming the file and image (io/mrc.py)
        return np.asarray(self._images[idx], dtype=np.float32)

    def __call__(self, idx: np.ndarray) -> Batch:
        idx = np.asarray(idx, np.int64)
        optics = None if self._optics is None else self._optics[idx]
        if self._rotations is None:
            return Batch(images=self.images(idx), indices=idx, optics=optics)
        return Batch(images=self.images(idx), rotations=self._rotations[idx], shifts=self._shifts[idx],
                     indices=idx, optics=optics)


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

    def __init__(self, fetch: Callable[[int], Batch], start: int, depth: int = 4):
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

