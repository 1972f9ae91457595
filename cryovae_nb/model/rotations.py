"""Quaternion algebra in TensorFlow for the model's poses (the numpy twins are in ``geometry.py``).

Quaternions are scalar first, ``(w, x, y, z)``, in the pose convention of :mod:`cryovae_nb.geometry`.
"""
from __future__ import annotations

import tensorflow as tf


def quaternion_to_matrix(q) -> tf.Tensor:
    """Unit quaternions ``(B, 4)`` scalar first -> rotation matrices ``(B, 3, 3)`` (geometry.py's formula)."""
    w, x, y, z = tf.unstack(q, axis=-1)
    return tf.reshape(tf.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1), [-1, 3, 3])


def quaternion_multiply(a, b) -> tf.Tensor:
    """Hamilton product of quaternions (scalar first), broadcasting: the rotation ``R(a) @ R(b)``."""
    aw, ax, ay, az = tf.unstack(a, axis=-1)
    bw, bx, by, bz = tf.unstack(b, axis=-1)
    return tf.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)
