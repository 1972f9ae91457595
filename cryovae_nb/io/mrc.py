"""MRC particle stacks and volumes: lazy reading and atomic writing.

Reading parses the 1024-byte header ourselves (with mrcfile's header dtype) and reads only the
requested images with positional reads at the header's data offset. That keeps opening a 26 GB
stack O(1) and its resident memory flat, lets us
accept files other programs write without a ``MAP `` stamp (warning once per file), and lets every
defect -- truncation, complex modes, a garbage header -- become an ``InputError`` naming the file
instead of a warning or a numpy traceback. Writing goes through mrcfile and ``atomic_path``.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from cryovae_nb.atomic import atomic_path
from cryovae_nb.errors import ConfigError, InputError, OutputError
from cryovae_nb.faults import fault_point

HEADER_BYTES = 1024
# MRC2014 modes we read, as little-endian dtypes; 0 is signed per the standard (mrcfile agrees).
_MODE_DTYPES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
_MODE_NAMES = {3: "complex int16", 4: "complex float32", 101: "packed 4-bit"}
# Open memory maps held at once across all stacks: datasets reference hundreds of files and each
# map holds a file descriptor, so keep only the most recently used ones.
MAX_OPEN_FILES = 32


@dataclass(frozen=True)
class MRCHeader:
    """What we need from an MRC header; ``dtype`` carries the file's byte order."""

    path: str
    nx: int
    ny: int
    nz: int
    mode: int
    dtype: np.dtype
    data_offset: int
    voxel_size: float | None  # Å, x axis; None when the header leaves it at 0
    has_map_stamp: bool
    identity: tuple = ()  # (inode, mtime) so a file replaced under the same name is re-mapped

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nz, self.ny, self.nx)


def _plausible(h) -> bool:
    return (0 < int(h["nx"]) < 1 << 16 and 0 < int(h["ny"]) < 1 << 16 and 0 <= int(h["nz"]) < 1 << 31
            and 0 <= int(h["mode"]) < 1 << 16 and 0 <= int(h["nsymbt"]) < 1 << 31)


def read_header(path: str | os.PathLike) -> MRCHeader:
    """Parse and validate an MRC header; every defect is an ``InputError`` naming ``path``."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
        size = st.st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except OSError as e:
        raise InputError(f"cannot read file ({e.strerror})", path) from None
    if len(raw) < HEADER_BYTES:
        raise InputError(f"not an MRC file: {len(raw)} bytes, shorter than the 1024-byte header", path)
    h = np.frombuffer(raw, dtype=HEADER_DTYPE)[0]
    big = bytes(h["machst"][:2]) == b"\x11\x11"
    if big or not _plausible(h):
        # a zero/odd machine stamp is common; fall back on whichever byte order reads sanely
        swapped = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(">"))[0]
        if _plausible(swapped):
            h, big = swapped, True
        elif big or not _plausible(h):
            raise InputError("corrupt or missing MRC header (dimensions/mode are not sensible)", path)
    mode = int(h["mode"])
    if mode not in _MODE_DTYPES:
        what = _MODE_NAMES.get(mode, "unknown")
        raise InputError(f"unsupported MRC mode {mode} ({what}); supported modes are 0, 1, 2, 6, 12", path)
    dtype = np.dtype(_MODE_DTYPES[mode]).newbyteorder(">" if big else "<")
    nx, ny, nz = int(h["nx"]), int(h["ny"]), int(h["nz"])
    offset = HEADER_BYTES + int(h["nsymbt"])
    need = offset + nx * ny * nz * dtype.itemsize
    if size < need:
        raise InputError(f"truncated MRC file: header says {nz} x {ny} x {nx} mode-{mode} values "
                         f"({need} bytes with header) but the file has {size} bytes", path)
    mx, cella = int(h["mx"]), float(h["cella"]["x"])
    voxel = cella / mx if mx > 0 and cella > 0 and np.isfinite(cella) else None
    return MRCHeader(path, nx, ny, nz, mode, dtype, offset, voxel, bytes(h["map"]) == b"MAP ",
                     (st.st_ino, st.st_mtime_ns))


def _check_finite(data: np.ndarray, path: str, what: str, first_index: Sequence[int] | None = None):
    """Raise if ``data`` holds NaN/Inf; ``first_index`` maps batch rows to 0-based image numbers."""
    if np.isfinite(data).all():
        return
    bad = np.flatnonzero(~np.isfinite(data.reshape(len(data), -1)).all(axis=1))
    image = int(bad[0]) if first_index is None else int(first_index[bad[0]])
    raise InputError(f"{what} {image + 1} contains NaN or Inf values", path)


class _FileCache:
    """A small process-wide LRU of open read-only files, keyed by path and file identity.

    Images are read with ``os.preadv`` rather than through ``np.memmap``: measured here pread
    copied a 256 MB chunk 2-10x faster (no page fault per 4 kB), and it leaves nothing mapped, so
    streaming a 26 GB stack keeps the resident memory flat. ``preadv`` is positional, so threads
    (tf.data, the preprocessing reader) can share one handle. An evicted file is closed when the
    last reader drops its reference.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._files: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, header: MRCHeader):
        with self._lock:
            key = (header.path, header.identity)
            f = self._files.get(key)
            if f is not None:
                self._files.move_to_end(key)
                return f
            try:
                f = _Handle(header.path)
            except OSError as e:  # deleted since it was opened
                raise InputError(f"cannot open the stack any more ({e.strerror})", header.path) from None
            self._files[key] = f
            while len(self._files) > self.capacity:
                self._files.popitem(last=False)
            return f

    def clear(self):
        with self._lock:
            self._files.clear()


class _Handle:
    """A read-only file descriptor closed when the last reader drops it (no ResourceWarning)."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_RDONLY)

    def fileno(self) -> int:
        return self._fd

    def __del__(self):
        with contextlib.suppress(OSError, AttributeError):
            os.close(self._fd)


def _pread_into(f, out: np.ndarray, offset: int, path: str) -> None:
    """Fill ``out`` (C-contiguous) with the bytes of ``f`` from ``offset``."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):  # one call returns at most ~2 GB on Linux
        got = os.preadv(f.fileno(), [view[done:]], offset + done)
        if got == 0:
            raise InputError("stack is shorter than its header says (truncated since it was opened?)", path)
        done += got


_FILES = _FileCache(MAX_OPEN_FILES)


def _stack_header(path: str) -> MRCHeader:
    """Header of a particle stack, with the stack-specific checks and the missing-stamp warning."""
    h = read_header(path)
    if h.nx != h.ny:
        raise InputError(f"images are not square ({h.ny} x {h.nx} pixels)", path)
    if h.nz == 0:
        raise InputError("empty stack: the header says it holds 0 images", path)
    if not h.has_map_stamp:
        warnings.warn(f"{path}: no 'MAP ' stamp in the MRC header (written by older software); "
                      "reading it anyway", stacklevel=3)
    return h


class ParticleStack:
    """A lazy view over particle images in one or many MRC stacks.

    Nothing is read until indexed; indexing reads only the requested images (duplicates allowed,
    in the order asked) and returns float32. Construct with :meth:`open` or :meth:`from_entries`.
    """

    def __init__(self, headers: list[MRCHeader], file_ids: np.ndarray | None,
                 indices: np.ndarray | None):
        # file_ids/indices None means "every image of the single file, in order" (saves 12 bytes
        # per particle of bookkeeping for the common one-big-stack case)
        self._headers = headers
        self._file_ids = file_ids
        self._indices = indices
        self.box = headers[0].nx
        self.pixel_size = headers[0].voxel_size

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> "ParticleStack":
        return cls([_stack_header(os.fspath(path))], None, None)

    @classmethod
    def from_entries(cls, paths: Sequence[str | os.PathLike], indices, file_ids) -> "ParticleStack":
        """Images ``indices[i]`` (0-based) of file ``paths[file_ids[i]]``, for each i."""
        indices = np.asarray(indices, dtype=np.int64).ravel()
        file_ids = np.asarray(file_ids, dtype=np.int64).ravel()
        if len(indices) != len(file_ids):
            raise InputError(f"indices ({len(indices)}) and file_ids ({len(file_ids)}) differ in length")
        if len(indices) == 0:
            raise InputError("empty particle list: no images to read")
        if file_ids.min() < 0 or file_ids.max() >= len(paths):
            raise InputError(f"file_ids must lie in [0, {len(paths)})")
        headers = [_stack_header(os.fspath(p)) for p in paths]
        for h in headers[1:]:
            if h.nx != headers[0].nx:
                raise InputError(f"box {h.nx} differs from {headers[0].nx} in {headers[0].path}", h.path)
        counts = np.array([h.nz for h in headers])
        too_far = (indices >= counts[file_ids]) | (indices < 0)
        if too_far.any():
            i = int(np.flatnonzero(too_far)[0])
            h = headers[file_ids[i]]
            raise InputError(f"image index {indices[i] + 1} (1-based) is outside the stack, which holds "
                             f"{h.nz} images", h.path)
        return cls(headers, file_ids, indices)

    def subset(self, positions) -> "ParticleStack":
        """A new lazy stack of the given positions (int array or bool mask) of this one."""
        pos = self._positions(positions)
        if len(pos) == 0:
            raise InputError("empty selection: no images to read")
        fids, idx = self._locate(pos)
        return ParticleStack(self._headers, fids, idx)

    # -- sizes ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._headers[0].nz if self._indices is None else len(self._indices)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.box, self.box)

    @property
    def paths(self) -> list[str]:
        return [h.path for h in self._headers]

    def __repr__(self) -> str:
        return (f"ParticleStack({len(self)} images of {self.box}x{self.box} px from "
                f"{len(self._headers)} file(s), pixel_size={self.pixel_size})")

    # -- reading --------------------------------------------------------------------------------
    def _positions(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n, dtype=np.int64)[key]
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"boolean mask of shape {arr.shape} does not match {n} images")
            return np.flatnonzero(arr)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise IndexError(f"cannot index a ParticleStack with {arr.dtype} values")
        arr = arr.astype(np.int64).ravel()
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"index out of range for a stack of {n} images")
        return np.where(arr < 0, arr + n, arr)

    def _locate(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._indices is None:
            return np.zeros(len(pos), dtype=np.int64), pos
        return self._file_ids[pos], self._indices[pos]

    def __getitem__(self, key) -> np.ndarray:
        scalar = isinstance(key, (int, np.integer))
        pos = self._positions([key] if scalar else key)
        out = self._read(pos)
        return out[0] if scalar else out

    def _read(self, pos: np.ndarray) -> np.ndarray:
        fids, idx = self._locate(pos)
        out = np.empty((len(pos), self.box, self.box), dtype=np.float32)
        if len(pos) == 0:
            return out
        for f in np.unique(fids):
            header = self._headers[f]
            rows = np.flatnonzero(fids == f) if len(self._headers) > 1 else np.arange(len(pos))
            want = idx[rows]
            fh = _FILES.get(header)
            order = np.argsort(want, kind="stable")
            sorted_want = want[order]
            block = np.empty((len(want), self.box, self.box), dtype=header.dtype)
            # one positional read per run of consecutive images (a slice is a single run)
            cut = np.flatnonzero(np.diff(sorted_want) != 1) + 1
            bounds = np.r_[0, cut, len(sorted_want)]
            image_bytes = self.box * self.box * header.dtype.itemsize
            for a, b in zip(bounds[:-1], bounds[1:]):
                _pread_into(fh, block[a:b], header.data_offset + int(sorted_want[a]) * image_bytes,
                            header.path)
            _check_finite(block, header.path, "image", sorted_want)
            out[rows[order]] = block
        return out

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, images[start:start + chunk_size])`` over the whole stack, in order."""
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, got {chunk_size!r}")
        for start in range(0, len(self), chunk_size):
            yield start, self[start:start + chunk_size]


def open_stack(path: str | os.PathLike) -> ParticleStack:
    return ParticleStack.open(path)


# -- volumes ------------------------------------------------------------------------------------
def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Read a map as float32 ``[z, y, x]`` and its voxel size in Å (None when the header has 0)."""
    h = read_header(path)
    if h.nz == 0:
        raise InputError("empty MRC file: the header says nz = 0", path)
    if not h.has_map_stamp:
        warnings.warn(f"{h.path}: no 'MAP ' stamp in the MRC header; reading it anyway", stacklevel=2)
    mm = np.memmap(h.path, dtype=h.dtype, mode="r", offset=h.data_offset, shape=h.shape)
    vol = np.array(mm, dtype=np.float32)
    del mm
    _check_finite(vol[None], h.path, "volume")
    return vol, h.voxel_size


def _finite_or_raise(data: np.ndarray, path, what: str):
    if not np.isfinite(data).all():
        raise InputError(f"refusing to write {what} containing NaN or Inf", path)


def _set_stats(mrc, dmin, dmax, dmean, rms):
    mrc.header.dmin, mrc.header.dmax, mrc.header.dmean, mrc.header.rms = dmin, dmax, dmean, rms


def write_volume(path: str | os.PathLike, volume: np.ndarray, voxel_size: float | None) -> None:
    """Write a float32 ``[z, y, x]`` map atomically with its voxel size (Å) and origin 0."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise InputError(f"a volume must be 3D [z, y, x], got shape {vol.shape}", path)
    _finite_or_raise(vol, path, "a volume")
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = 0.0 if voxel_size is None else float(voxel_size)
        mrc.header.origin = (0.0, 0.0, 0.0)
        mrc.update_header_stats()


def write_stack(path: str | os.PathLike, images: np.ndarray, pixel_size: float | None) -> None:
    """Write images ``(n, box, box)`` as a float32 (mode 2) stack, atomically."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    with StackWriter(path, len(images), images.shape[-1], pixel_size) as w:
        w.write(images)


class StackWriter:
    """Stream images into a new stack: ``with StackWriter(p, n, box, px) as w: w.write(chunk)``.

    Chunks append in order. The output is a temporary file until the block exits cleanly with
    exactly ``n`` images written; on an exception (or a short count) it is deleted. The file's
    full size is allocated before the first image is written and images go out with plain
    writes, not through a memory map: on a full disk (or past a file size limit) a map would
    kill the process with SIGBUS, while a write raises ``OutputError`` naming the file.
    """

    def __init__(self, path: str | os.PathLike, n: int, box: int, pixel_size: float | None):
        if n < 1 or box < 1:
            raise InputError(f"need n >= 1 and box >= 1, got n={n}, box={box}", path)
        self.path, self.n, self.box, self.pixel_size = Path(path), int(n), int(box), pixel_size
        self.written = 0
        self._stack = None
        self._file = None

    def __enter__(self) -> "StackWriter":
        self._stack = contextlib.ExitStack()
        try:
            tmp = self._stack.enter_context(atomic_path(self.path))
            self._file = self._stack.enter_context(open(tmp, "wb"))
            size = HEADER_BYTES + self.n * self.box * self.box * 4
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self._file.fileno(), 0, size)  # no space: fail now, not mid-way
            self._file.write(self._header(0.0, 0.0, 0.0, 0.0))
            fault_point("stack-allocated")  # a full-size temporary, no image in it yet
        except BaseException as e:
            stack, self._stack = self._stack, None
            stack.__exit__(type(e), e, e.__traceback__)
            if isinstance(e, OSError):
                raise _output_error(e, self.path) from None
            raise
        self._min, self._max, self._sum, self._sumsq = np.inf, -np.inf, 0.0, 0.0
        return self

    def _header(self, dmin, dmax, dmean, rms) -> bytes:
        """An MRC2014 header of a mode-2 image stack, as mrcfile writes one (its strict reader accepts it)."""
        h = np.zeros((), dtype=HEADER_DTYPE.newbyteorder("<"))
        h["nx"], h["ny"], h["nz"], h["mode"] = self.box, self.box, self.n, 2
        h["mx"], h["my"], h["mz"] = self.box, self.box, 1  # mz 1: a stack of 2D images (ispg 0)
        px = 0.0 if self.pixel_size is None else float(self.pixel_size)
        h["cella"]["x"], h["cella"]["y"], h["cella"]["z"] = self.box * px, self.box * px, px
        h["cellb"]["alpha"] = h["cellb"]["beta"] = h["cellb"]["gamma"] = 90.0
        h["mapc"], h["mapr"], h["maps"] = 1, 2, 3
        h["dmin"], h["dmax"], h["dmean"], h["rms"] = dmin, dmax, dmean, rms
        h["nversion"] = 20141
        h["map"] = b"MAP "
        h["machst"] = np.frombuffer(b"\x44\x44\x00\x00", dtype="u1")
        h["nlabl"] = 1
        h["label"][0] = b"written by cryovae_nb".ljust(80)
        return h.tobytes()

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim == 2:
            chunk = chunk[None]
        if chunk.shape[1:] != (self.box, self.box):
            raise InputError(f"chunk of shape {chunk.shape} does not hold "
                             f"{self.box}x{self.box} images", self.path)
        if self.written + len(chunk) > self.n:
            raise InputError(f"writing past the {self.n} images declared", self.path)
        _finite_or_raise(chunk, self.path, "images")
        try:
            self._file.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())
        except OSError as e:
            raise _output_error(e, self.path) from None
        self.written += len(chunk)
        # running statistics so closing never re-reads a huge file
        c = chunk.astype(np.float64)
        self._min, self._max = min(self._min, c.min()), max(self._max, c.max())
        self._sum += c.sum()
        self._sumsq += np.square(c).sum()

    def __exit__(self, exc_type, exc, tb):
        stack, self._stack = self._stack, None
        if exc_type is None and self.written != self.n:
            exc = ValueError(f"{self.path}: {self.written} of {self.n} images written; file discarded")
            stack.__exit__(type(exc), exc, None)
            raise exc
        if exc_type is None:
            count = self.n * self.box * self.box
            mean = self._sum / count
            rms = np.sqrt(max(self._sumsq / count - mean * mean, 0.0))
            try:
                self._file.seek(0)
                self._file.write(self._header(self._min, self._max, mean, rms))
                self._file.flush()
                os.fsync(self._file.fileno())  # on disk before the rename publishes it
            except OSError as e:
                err = _output_error(e, self.path)
                stack.__exit__(type(err), err, None)
                raise err from None
        return stack.__exit__(exc_type, exc, tb)


def _output_error(e: OSError, path) -> "OutputError":
    return OutputError.from_oserror(e, path)
