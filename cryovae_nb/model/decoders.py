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

A new decoder (e.g. a convolutional one for larger boxes): a ``Decoder`` subclass whose
``__init__(config, seeds, zero_response)`` creates its weights, an entry in :data:`DECODERS`, and
its name in ``config.DECODERS``.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator

import keras
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
        return tf.reshape(self.voxel_layer(h, training=training), [-1, n, n, n])


# ModelConfig.decoder -> decoder class (config.DECODERS lists the same names without TensorFlow)
DECODERS = {"dense": DenseDecoder}


def make_decoder(config, seeds: Iterator[int], zero_response: bool = False) -> Decoder:
    """The decoder ``config.architecture.decoder`` names (see :class:`Decoder` for the arguments)."""
    if config.architecture.decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {config.architecture.decoder!r}; use one of {tuple(DECODERS)}")
    return DECODERS[config.architecture.decoder](config, seeds, zero_response, name="decoder")
