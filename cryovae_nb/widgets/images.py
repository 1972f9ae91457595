"""Arrays -> display images: normalisation, the input/projection colour overlay, tiled PNG grids.

Pure numpy + Pillow, so the gallery, the training monitor and the trainer's sample dumps all draw
particles the same way.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cryovae_nb.errors import InputError

# Small boxes (40 px) are unreadable at 1:1; tiles are blown up (nearest neighbour, so pixels stay
# honest) to at least this many screen pixels.
MIN_TILE_PX = 96


def normalise01(images: np.ndarray) -> np.ndarray:
    """Scale each image of ``(..., h, w)`` to [0, 1] by its own min and max (flat images -> 0)."""
    a = np.asarray(images, dtype=np.float32)
    lo = a.min(axis=(-2, -1), keepdims=True)
    span = a.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def overlay_rgb(inputs: np.ndarray, projections: np.ndarray) -> np.ndarray:
    """Colour overlay of thesis Fig. 3.11c: input in magenta (R+B), projection in green (G).

    Where the two agree the pixel is grey/white; a misplaced density shows as a magenta or green
    fringe (the pair is readable with red-green colour blindness). Returns ``(k, h, w, 3)`` in [0, 1].
    """
    a, b = _check_pair(inputs, projections)
    a, b = normalise01(a), normalise01(b)
    return np.stack([a, b, a], axis=-1)


def to_uint8(images01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images01, 0, 1) * 255).astype(np.uint8)


def tile(images: np.ndarray, ncols: int, pad: int = 2, fill: float = 1.0) -> np.ndarray:
    """Tile ``(k, h, w)`` or ``(k, h, w, 3)`` images row-major into one array, ``pad`` px apart."""
    images = np.asarray(images)
    k, h, w = images.shape[:3]
    ncols = max(1, min(ncols, k))
    nrows = -(-k // ncols)
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad) + images.shape[3:], fill,
                  dtype=images.dtype)
    for i in range(k):
        r, c = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[i]
    return out


def upscale(image: np.ndarray, min_px: int = MIN_TILE_PX) -> np.ndarray:
    """Nearest-neighbour blow-up of ``(k, h, w[, 3])`` by the integer factor reaching ``min_px``."""
    f = max(1, -(-min_px // max(image.shape[1], image.shape[2])))
    return image.repeat(f, axis=1).repeat(f, axis=2) if f > 1 else image


def png_bytes(image01: np.ndarray) -> bytes:
    """``(h, w)`` grey or ``(h, w, 3)`` RGB array in [0, 1] -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image01)).save(buf, format="PNG")
    return buf.getvalue()


def comparison_grid(inputs: np.ndarray, projections: np.ndarray, min_px: int = MIN_TILE_PX) -> np.ndarray:
    """Three rows -- inputs, projections, overlay -- one column per particle, RGB in [0, 1]."""
    a, b = _check_pair(inputs, projections)
    grey = lambda x: np.repeat(normalise01(x)[..., None], 3, axis=-1)  # noqa: E731
    rows = [upscale(grey(a), min_px), upscale(grey(b), min_px), upscale(overlay_rgb(a, b), min_px)]
    k = a.shape[0]
    return tile(np.concatenate(rows), ncols=k)


def comparison_png(inputs: np.ndarray, projections: np.ndarray, min_px: int = MIN_TILE_PX) -> bytes:
    return png_bytes(comparison_grid(inputs, projections, min_px))


def _check_pair(inputs, projections):
    a = np.asarray(inputs, dtype=np.float32)
    b = np.asarray(projections, dtype=np.float32)
    if a.ndim == 2:
        a, b = a[None], b[None] if b.ndim == 2 else b
    if a.ndim != 3 or a.shape != b.shape:
        raise InputError(f"inputs {a.shape} and projections {b.shape} must both be (k, h, w) "
                         "images of the same shape")
    return a, b
