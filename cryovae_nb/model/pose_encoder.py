"""The convolutional pose encoder (``PoseConfig.encoder = "conv"``): images -> pose features.

Why its own network: the dense encoder (n^2 pixels -> a dense stack) trained on the TRUE poses
memorises the noise at SNR 0.1 (held-out 112 deg, chance ~126), while a small CNN of these sizes
reached 56 deg on the same data (benchmarks/pose_head_capacity.py). Convolutions share weights
across the image, so a feature of the particle is learned once wherever it appears, and the pools
average the noise away. The pose heads (``CryoVAE.quaternion_layer`` / ``shift_layer``) read its
output; the latent heads keep the dense encoder. Sizes: ``config.CONV_POSE_STAGES`` (kept there,
free of TensorFlow, so the memory model counts them).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from cryovae_nb.model.config import CONV_POSE_STAGES, CONV_POSE_UNITS


class ConvPoseEncoder(keras.layers.Layer):
    """``(B, n, n)`` images -> ``(B, CONV_POSE_UNITS)`` features: conv + 2x average pool per
    stage, flattened, one dense layer; ``activation`` after each; initialisers drawn from
    ``seeds`` (an iterator of ints, CryoVAE's) so a seed gives the same weights."""

    def __init__(self, activation, seeds, **kwargs):
        super().__init__(**kwargs)

        def init():
            return keras.initializers.GlorotUniform(seed=next(seeds))

        self.convs = [keras.layers.Conv2D(c, k, padding="same", activation=activation, kernel_initializer=init(),
                                          name=f"pose_conv{i}") for i, (c, k) in enumerate(CONV_POSE_STAGES)]
        self.pool = keras.layers.AveragePooling2D(2)
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(CONV_POSE_UNITS, activation=activation, kernel_initializer=init(),
                                        name="pose_dense")

    def call(self, images, training=False):
        x = tf.convert_to_tensor(images)[..., None]
        for conv in self.convs:
            x = self.pool(conv(x))
        return self.dense(self.flatten(x))
