"""Decoders: latent vectors ``(B, latent)`` -> volumes ``(B, n, n, n)`` ``[z, y, x]``, one class per
architecture, chosen by ``ModelConfig.decoder`` through :data:`DECODERS`.

A decoder is a Keras layer: ``volumes = decoder(z, training)``; its weights are its
``trainable_variables`` (the model's optimizer and checkpoints see them). It does not mask: the
model multiplies by the volume mask after adding its principal volumes (``CryoVAE.decode``).

What the linearised latent inference (``latent_inference="linearized"``, vae.py) needs of a
decoder: it probes the decoded volume at z = 0 and at the unit vectors (the secants of the
linearisation), and asks the decoder to start with *no* response to z (``zero_response=True``),
so that the z-dependence comes from the principal volumes the model estimates from the data,
not from a random direction the posterior would then fit noise along.

Two decoders: ``"dense"`` (the seed's MLP, whose last layer holds ``decoder_units x n^3`` weights:
~52 M at 64 px, ~420 M at 128 px) and ``"conv3d"`` (a full-resolution consensus grid plus 3D
convolutions upsampling z from a small grid, ~n^3 + 0.2 M weights; it scales to 128 px and beyond;
benchmarks/decoders.py measures both).

A new decoder: a ``Decoder`` subclass whose ``__init__(config, seeds, zero_response)`` creates its
weights, an entry in :data:`DECODERS`, and its name in ``config.DECODERS``.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from cryovae_nb.errors import ConfigError


class Decoder(keras.layers.Layer):
    """Base of the decoders: ``decoder(z, training)`` -> ``(B, n, n, n)`` volumes (unmasked).

    ``seeds`` is the model's stream of initializer seeds (the decoder takes the next ones, so a
    model's weights depend only on its seed, ``build_model(config, seed)``); ``zero_response``:
    start with an output that does not depend on z (see the module docstring).

    Subclasses create every weight in ``__init__`` (the input size is ``config.architecture.latent_dim``): built
    outside the model's call, the variable paths are the layers' own names (``dec0/kernel``), the
    keys of the checkpoints (``train.make_checkpoint``).
    """

    def __init__(self, config, seeds: Iterator[int], zero_response: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.box = config.architecture.box


class DenseDecoder(Decoder):
    """The seed's decoder (thesis §3.3.1): ``decoder_layers`` dense layers of ``decoder_units``
    (leaky ReLU), then one dense layer to the ``n^3`` voxels (``output_activation``)."""

    def __init__(self, config, seeds: Iterator[int], zero_response: bool = False, **kwargs):
        super().__init__(config, seeds, zero_response, **kwargs)
        act = partial(keras.activations.leaky_relu, negative_slope=config.architecture.leaky_slope)

        def dense(units, activation=None, name=None, initializer=None):
            # every layer takes a seed, used or not, so the other layers' initial weights do not
            # depend on zero_response
            init = keras.initializers.GlorotUniform(seed=next(seeds))
            init = initializer or init
            return keras.layers.Dense(units, activation=activation, name=name, kernel_initializer=init)

        arch = config.architecture
        # With zero_response the first layer starts at zero (kernel and bias), so the output starts
        # independent of z; it is a normal trained layer from then on
        first = "zeros" if zero_response else None
        self.hidden_layers = [dense(arch.decoder_units, act, f"dec{i}", first if i == 0 else None)
                              for i in range(arch.decoder_layers)]
        out_act = act if config.architecture.output_activation == "leaky_relu" else None
        self.voxel_layer = dense(config.architecture.box ** 3, out_act, "voxels")
        width = config.architecture.latent_dim
        for layer in [*self.hidden_layers, self.voxel_layer]:
            layer.build((None, width))
            width = layer.units
        self.built = True

    def call(self, z, training: bool = False) -> tf.Tensor:
        h = tf.convert_to_tensor(z, tf.float32)
        for layer in self.hidden_layers:
            h = layer(h, training=training)
        n = self.box
        # float32 whatever the layers compute in (mixed precision, training/precision.py): the
        # projector, its FFTs and the losses work on this volume
        voxels = tf.cast(self.voxel_layer(h, training=training), tf.float32)
        return tf.reshape(voxels, [-1, n, n, n])


def upsample2(h) -> tf.Tensor:
    """``(B, z, y, x, C)`` -> ``(B, 2z, 2y, 2x, C)`` by repeating each voxel (nearest neighbour);
    the convolution after it smooths (no checkerboard, unlike a strided transposed convolution)."""
    for axis in (1, 2, 3):
        h = tf.repeat(h, 2, axis=axis)
    return h


def linear_resample_matrix(m: int, n: int) -> np.ndarray:
    """``(n, m)`` weights of linear interpolation from ``m`` samples to ``n`` along one axis, the
    centres (index ``m // 2`` and ``n // 2``, geometry.py's convention) kept in place and the
    extent scaled (a side of m voxels spans the same box as one of n); ends clamped."""
    x = (np.arange(n) - n // 2) * (m / n) + m // 2
    lo = np.clip(np.floor(x).astype(int), 0, m - 1)
    hi = np.clip(lo + 1, 0, m - 1)
    frac = np.clip(x - np.floor(x), 0.0, 1.0)
    out = np.zeros((n, m), np.float32)
    np.add.at(out, (np.arange(n), lo), 1.0 - frac)
    np.add.at(out, (np.arange(n), hi), frac)
    return out


class ConvDecoder(Decoder):
    """A decoder that scales with the box: volume = consensus + resample(conv(z)).

    ``consensus`` is a learned ``n^3`` voxel grid (starting at zero): the shared map, learned
    directly at full resolution, as a voxel reconstruction is. ``conv(z)`` carries what changes
    with z, on a coarser grid: a dense layer maps z to a ``g^3 x C`` grid (``g = decoder_grid``, ``C
    = decoder_channels``), a learned constant grid is added, then ``decoder_upsamplings`` blocks
    (nearest-neighbour upsampling x2, 3^3 convolution, leaky ReLU) double the side and halve the
    channels (at least 4), and a 3^3 convolution makes one channel, of side ``m = g 2^L``; linear
    interpolation takes it to ``n`` (a no-op when ``m = n``). ``output_activation`` applies to the
    sum.

    The last convolution starts at zero, so the network's part starts blank (the volume is the
    consensus alone) and the convolutions before it get gradients once it has moved (one step).
    ``zero_response``: the z layer starts at zero too, so the volume does not depend on z until the
    data ask for it.

    Why this shape (benchmarks/decoders.py): the weights are ``n^3`` plus ~0.2 M whatever the box
    (the dense decoder's last layer grows as ``200 n^3``: 420 M at 128 px, 10.6 GiB of peak RSS at
    batch 4), the convolutions cost the same at every box (3D convolutions at 128^3 would cost ~4
    GFLOP per volume, and the linearised latents decode ``latent_dim + 1`` probe volumes each
    step), and a conformation is read from low resolution (``LatentConfig.band``) while the
    consensus grid holds the full-resolution detail. The dense decoder stays the default where it
    fits (it is the seed's, and the pinned results are its).

    Compiled by XLA on a CPU (``TrainConfig.jit``), 3D convolutions become a naive loop (measured on
    a first, full-resolution variant at 32 px: 0.6 vs 101 images/s uncompiled; a GPU compiles them
    to cuDNN): on a CPU train it with jit off.
    """

    CONSENSUS_SCALE = 100.0  # the consensus voxels are the weights times this (see __init__)

    def __init__(self, config, seeds: Iterator[int], zero_response: bool = False, **kwargs):
        super().__init__(config, seeds, zero_response, **kwargs)
        arch = config.architecture
        n, stages, channels, g = arch.box, arch.decoder_upsamplings, arch.decoder_channels, arch.decoder_grid
        self.grid, self.channels = g, channels
        self.slope = arch.leaky_slope
        self.linear_output = arch.output_activation == "linear"
        self.z_layer = keras.layers.Dense(
            g ** 3 * channels, name="conv_z",
            kernel_initializer="zeros" if zero_response else keras.initializers.GlorotUniform(seed=next(seeds)))
        self.z_layer.build((None, arch.latent_dim))
        # unit variance: the inner grids carry well-scaled features from the start (the last
        # convolution, starting at zero, keeps them out of the volume until it learns to use them)
        self.start_grid = self.add_weight(
            shape=(g, g, g, channels), name="start_grid",
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=next(seeds)))
        widths = [channels]
        for _ in range(stages):
            widths.append(max(widths[-1] // 2, 4))
        widths.append(1)
        # (kernel, bias) per convolution: one per upsampling, then the one to a single channel
        self.conv_weights = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            name = f"conv{i}" if i < stages else "conv_out"
            init = keras.initializers.GlorotUniform(seed=next(seeds))  # drawn for every layer: same seeds
            # The last convolution starts at zero. Started random, the network added a random smooth
            # volume (std 0.24, max 2.1 at 64 px) to a map whose voxels are ~0.05: a low-frequency
            # error the consensus had to cancel first (the FSC 0.5 lag; README "Decoders for larger boxes")
            kernel = self.add_weight(shape=(3, 3, 3, w_in, w_out), name=f"{name}_kernel",
                                     initializer="zeros" if i == stages else init)
            bias = self.add_weight(shape=(w_out,), name=f"{name}_bias", initializer="zeros")
            self.conv_weights.append((kernel, bias))
        # Stored divided by CONSENSUS_SCALE: Adam moves each weight by about the learning rate per
        # step, and the thesis' 1e-5 (TrainConfig's default, tuned for the dense decoder, whose
        # voxels each sum 200 weights) would move a voxel 1e-5 per step
        self.consensus = self.add_weight(shape=(n, n, n), name="consensus", initializer="zeros")
        m = g * 2 ** stages
        self.resample = None if m == n else tf.constant(linear_resample_matrix(m, n))
        self.built = True

    def call(self, z, training: bool = False) -> tf.Tensor:
        z = tf.convert_to_tensor(z, tf.float32)
        g = self.grid
        h = tf.reshape(self.z_layer(z), [-1, g, g, g, self.channels]) + self.start_grid
        *blocks, (out_kernel, out_bias) = self.conv_weights
        for kernel, bias in blocks:
            h = tf.nn.conv3d(upsample2(h), kernel, [1] * 5, "SAME") + bias
            h = tf.nn.leaky_relu(h, alpha=self.slope)
        h = (tf.nn.conv3d(h, out_kernel, [1] * 5, "SAME") + out_bias)[..., 0]
        if self.resample is not None:
            r = self.resample
            h = tf.einsum("bzyx,kx->bzyk", tf.einsum("bzyx,jy->bzjx", tf.einsum("bzyx,iz->biyx", h, r), r), r)
        v = self.CONSENSUS_SCALE * self.consensus[None] + h
        return v if self.linear_output else tf.nn.leaky_relu(v, alpha=self.slope)


# ModelConfig.decoder -> decoder class (config.DECODERS lists the same names without TensorFlow)
DECODERS = {"dense": DenseDecoder, "conv3d": ConvDecoder}


def make_decoder(config, seeds: Iterator[int], zero_response: bool = False) -> Decoder:
    """The decoder ``config.architecture.decoder`` names (see :class:`Decoder` for the arguments)."""
    if config.architecture.decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {config.architecture.decoder!r}; use one of {tuple(DECODERS)}")
    return DECODERS[config.architecture.decoder](config, seeds, zero_response, name="decoder")
