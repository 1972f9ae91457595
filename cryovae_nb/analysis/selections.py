"""Selections of particles as sets of rows, and the operations the latent explorer offers on them:
a region of the 2-D map (a lasso polygon or a box), a k-means cluster, a range of a latent
dimension or of a STAR column, combined with the current selection (replace, add, subtract,
intersect) or inverted. Pure numpy, so the widget stays thin and the logic is tested headless.

A selection is always a sorted array of unique int64 rows in ``0..n-1`` (``selection.as_rows``
checks what comes in); ``cryovae_nb.selection.write_selection`` writes one back to the user's
original STAR file.
"""
from __future__ import annotations

import numpy as np

from cryovae_nb.errors import InputError
from cryovae_nb.selection import as_rows

# how a new set of rows meets the current selection
OPERATIONS = ("replace", "add", "subtract", "intersect")


def combine(current, rows, n: int, operation: str = "replace") -> np.ndarray:
    """The current selection (rows or a mask over ``n`` particles) with ``rows`` replacing it,
    added, subtracted or intersected."""
    a, b = as_rows(current, n, "current selection"), as_rows(rows, n)
    if operation == "replace":
        return b
    if operation == "add":
        return np.union1d(a, b)
    if operation == "subtract":
        return np.setdiff1d(a, b, assume_unique=True)
    if operation == "intersect":
        return np.intersect1d(a, b, assume_unique=True)
    raise InputError(f"unknown selection operation {operation!r}; use one of {', '.join(OPERATIONS)}")


def invert(current, n: int) -> np.ndarray:
    """Every particle not in the selection."""
    return np.setdiff1d(np.arange(n, dtype=np.int64), as_rows(current, n), assume_unique=True)


def in_polygon(xy, polygon) -> np.ndarray:
    """Rows of the points ``xy`` ``(n, 2)`` inside ``polygon`` ``(m, 2)`` (a lasso; closed
    implicitly), by the even-odd rule, as plotly.js draws a lasso selection. Points on the boundary
    may fall either way, as in any lasso."""
    p = _points(xy, "points")
    poly = _points(polygon, "polygon")
    if len(poly) < 3:
        raise InputError(f"a lasso needs at least 3 vertices, got {len(poly)}")
    lo, hi = poly.min(0), poly.max(0)
    cand = np.flatnonzero(np.all((p >= lo) & (p <= hi), axis=1))  # only the bounding box can be inside
    x, y = p[cand, 0], p[cand, 1]
    inside = np.zeros(len(cand), bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for xa, ya, xb, yb in zip(x0, y0, x1, y1):
        # the ray from (x, y) towards +x crosses the edge a-b
        crosses = (ya > y) != (yb > y)
        if ya != yb:
            x_cross = xa + (y - ya) * (xb - xa) / (yb - ya)
            inside ^= crosses & (x < x_cross)
    return cand[inside].astype(np.int64)


def in_box(xy, x_range, y_range) -> np.ndarray:
    """Rows of the points ``xy`` inside the box ``x_range`` x ``y_range`` (plotly's box select)."""
    p = _points(xy, "points")
    (xa, xb), (ya, yb) = sorted(map(float, x_range)), sorted(map(float, y_range))
    return np.flatnonzero((p[:, 0] >= xa) & (p[:, 0] <= xb) & (p[:, 1] >= ya) & (p[:, 1] <= yb)).astype(np.int64)


def in_range(values, lo: float, hi: float, what: str = "values") -> np.ndarray:
    """Rows whose value (a latent dimension, a numeric STAR column such as rlnDefocusU) lies in
    ``[lo, hi]``; NaN never does."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise InputError(f"{what}: expected one value per particle, got shape {v.shape}")
    if v.dtype.kind not in "iufb":
        raise InputError(f"{what} is not numeric ({v.dtype}): select it by value instead")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise InputError(f"{what}: a range needs finite lo <= hi, got {lo} .. {hi}")
    v = v.astype(np.float64)
    return np.flatnonzero((v >= lo) & (v <= hi)).astype(np.int64)


def in_values(values, chosen) -> np.ndarray:
    """Rows whose label is one of ``chosen`` (k-means clusters, optics groups, classes)."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise InputError(f"labels: expected one per particle, got shape {v.shape}")
    return np.flatnonzero(np.isin(v, np.asarray(list(np.atleast_1d(chosen))))).astype(np.int64)


def _points(a, what: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise InputError(f"{what} must be (n, 2), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} hold NaN or infinite values")
    return a


__all__ = ["OPERATIONS", "combine", "in_box", "in_polygon", "in_range", "in_values", "invert"]
