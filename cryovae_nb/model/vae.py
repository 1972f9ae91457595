"""The assembled VAE: encoder -> (z, pose) -> decoder -> volume -> projection (thesis §3.3.1)."""
from __future__ import annotations

from functools import partial

import keras
import numpy as np
import tensorflow as tf

from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.model import losses
from cryovae_nb.model.config import ModelConfig
from cryovae_nb.model.projectors import project_fourier, project_real, spherical_mask


def quaternion_to_matrix(q) -> tf.Tensor:
    """Unit quaternions ``(B, 4)`` scalar first -> rotation matrices ``(B, 3, 3)`` (geometry.py's formula)."""
    w, x, y, z = tf.unstack(q, axis=-1)
    return tf.reshape(tf.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1), [-1, 3, 3])


def latent_noise(shape, seed) -> tf.Tensor:
    """Standard normal noise from an int ``[2]`` seed (``tf.random.stateless_normal``).

    XLA draws different numbers for the same seed, so compiled steps call this outside XLA and
    pass the result as ``noise`` (see train_step.py): a seed means the same noise everywhere."""
    return tf.random.stateless_normal(shape, seed=tf.cast(seed, tf.int32))


class CryoVAE(keras.Model):
    """Encoder (images -> latent Gaussian), pose head (latent -> quaternion + shift), decoder
    (latent -> masked ``n^3`` volume ``[z, y, x]``) and a projector; see :class:`ModelConfig`.

    Build it with :func:`build_model` (which creates the weights). Save/load weights with Keras'
    ``save_weights("x.weights.h5")`` / ``load_weights`` -- no pickle.
    """

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        config.validate()
        self.config = cfg = config
        act = partial(keras.activations.leaky_relu, negative_slope=cfg.leaky_slope)
        seeds = iter(range(cfg.seed * 1000, cfg.seed * 1000 + 1000))

        def dense(units, activation=None, name=None):
            return keras.layers.Dense(units, activation=activation, name=name,
                                      kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)))

        self.encoder_layers = [dense(cfg.encoder_units, act, f"enc{i}") for i in range(cfg.encoder_layers)]
        self.z_mean_layer = dense(cfg.latent_dim, name="z_mean")
        self.z_logvar_layer = dense(cfg.latent_dim, name="z_logvar")
        self.quaternion_layer = dense(4, "tanh", "pose_quaternion")
        self.shift_layer = dense(2, "tanh", "pose_shift")
        self.decoder_layers = [dense(cfg.decoder_units, act, f"dec{i}") for i in range(cfg.decoder_layers)]
        out_act = act if cfg.output_activation == "leaky_relu" else None
        self.voxel_layer = dense(cfg.box ** 3, out_act, "voxels")
        self._mask = None if cfg.volume_mask is None else tf.constant(spherical_mask(cfg.box, cfg.volume_mask))
        # Why an offset: the tanh-normalised target is sigmoid(a * (P - mean) / sigma), so its logit
        # is a * P minus a per-image constant over the disc. No volume inside the mask projects to a
        # constant in every direction except an edge-singular shell, which the decoder would then
        # have to build (and re-tune per particle from the noise mean). The head takes that constant.
        # The disc the mask projects to (preprocessing masks images with the same 0.95 default).
        self._disc = tf.constant(spherical_mask(cfg.box, cfg.volume_mask or 1.0)[cfg.box // 2])
        self.offset_layer = None
        if cfg.image_offset:
            self.offset_layer = keras.layers.Dense(1, name="image_offset", kernel_initializer="zeros")
        # Why score inside the disc only: outside it the images were masked to 0 (no data), and the
        # Fourier projector's output is not confined to the disc, so the seed's all-pixel loss is
        # lowered by pushing logits there to -inf with ringing in the volume, not by fitting data.
        self._pixel_mask = self._disc if cfg.loss_in_mask else None

    # -- the pieces --------------------------------------------------------------------------
    def encode(self, images, training: bool = False) -> dict:
        """``(B, n, n)`` images -> dict ``z_mean``, ``z_logvar`` ``(B, latent)``, ``quaternion``
        ``(B, 4)`` (unit, scalar first) and ``shift`` ``(B, 2)`` px. The pose is read from ``z_mean``."""
        h = self._hidden(images, training)
        z_mean = self.z_mean_layer(h)
        out = {"z_mean": z_mean, "z_logvar": self.z_logvar_layer(h)}
        out.update(self.pose(z_mean))
        if self.offset_layer is not None:
            out["offset"] = self.offset_layer(h)[:, 0]
        return out

    def add_offset(self, projections, offset=None) -> tf.Tensor:
        """Projections plus the per-image ``offset`` ``(B,)`` inside the mask disc (the model's logits);
        unchanged when the model has no offset head or ``offset`` is None."""
        if self.offset_layer is None or offset is None:
            return projections
        return projections + offset[:, None, None] * self._disc

    def pose(self, z) -> dict:
        """Pose head on latent vectors: tanh -> normalised quaternion; tanh x max_shift -> shift (px)."""
        q = self.quaternion_layer(z)
        q = q / tf.maximum(tf.norm(q, axis=-1, keepdims=True), 1e-6)
        return {"quaternion": q, "shift": self.config.max_shift_px * self.shift_layer(z)}

    def decode(self, z, training: bool = False) -> tf.Tensor:
        """``(B, latent)`` -> masked volumes ``(B, n, n, n)`` indexed ``[z, y, x]``."""
        h = tf.convert_to_tensor(z, tf.float32)
        for layer in self.decoder_layers:
            h = layer(h, training=training)
        n = self.config.box
        v = tf.reshape(self.voxel_layer(h, training=training), [-1, n, n, n])
        return v if self._mask is None else v * self._mask

    def project(self, volumes, rotations, shifts=None) -> tf.Tensor:
        """Project ``(B, n, n, n)`` volumes at ``(B, 3, 3)`` rotations and ``(B, 2)`` shifts with
        the configured projector -> ``(B, n, n)``."""
        if self.config.projector == "real":
            return project_real(volumes, rotations, shifts)
        return project_fourier(volumes, rotations, shifts, pad=self.config.fourier_pad,
                               correction=self.config.gridding_correction,
                               width=self.config.fourier_kernel_width)

    def call(self, images, training: bool = False):
        """Deterministic reconstruction of ``images`` (z = z_mean, learned pose)."""
        enc = self.encode(images, training)
        proj = self.project(self.decode(enc["z_mean"], training),
                            quaternion_to_matrix(enc["quaternion"]), enc["shift"])
        return self.add_offset(proj, enc.get("offset"))

    def _hidden(self, images, training):
        images = tf.convert_to_tensor(images, tf.float32)
        n = self.config.box
        if images.shape.rank != 3 or tuple(images.shape[1:]) != (n, n):
            raise InputError(f"the model expects images of shape (batch, {n}, {n}), got {tuple(images.shape)}")
        h = tf.reshape(images, [-1, n * n])
        for layer in self.encoder_layers:
            h = layer(h, training=training)
        return h

    # -- the objective -------------------------------------------------------------------------
    def compute_losses(self, images, rotations=None, shifts=None, training: bool = True,
                       seed=None, noise=None) -> dict:
        """All loss terms for a batch of tanh-normalised images ``(B, n, n)``.

        ``rotations`` ``(B, 3, 3)`` (and optional ``shifts`` ``(B, 2)``, px) switch to known poses;
        otherwise the pose head is used (required when ``pose_mode == "known"``). ``seed`` (int
        tensor of shape [2]) draws the reparameterisation noise with ``tf.random.stateless_normal``
        -- the same seed gives the same noise; ``seed=None`` uses z = z_mean (no noise).
        ``noise`` ``(B, latent)`` gives the standard normal draws directly (overrides ``seed``).

        Returns scalars ``recon`` (sum over pixels -- those inside the mask disc with
        ``loss_in_mask`` -- mean over batch; with ``symmetrized_loss`` and learned poses, the better
        of the projection and its 180-degree in-plane turn), ``kl``, ``averaging`` and
        ``total = recon + beta * kl + averaging_factor * beta * averaging``, plus
        ``recon_per_sample`` ``(B,)``.
        """
        cfg = self.config
        images = tf.convert_to_tensor(images, tf.float32)
        h = self._hidden(images, training)
        z_mean, z_logvar = self.z_mean_layer(h), self.z_logvar_layer(h)
        z = z_mean
        if noise is None and seed is not None:
            noise = latent_noise(tf.shape(z_mean), seed)
        if noise is not None:
            z = z_mean + tf.exp(0.5 * z_logvar) * noise
        learned = rotations is None
        if learned:
            if cfg.pose_mode == "known":
                raise ConfigError("pose_mode='known' needs rotations (and shifts) for every batch")
            p = self.pose(z)
            rotations, shifts = quaternion_to_matrix(p["quaternion"]), p["shift"]
        volumes = self.decode(z, training)
        offset = None if self.offset_layer is None else self.offset_layer(h)[:, 0]
        logits = self.add_offset(self.project(volumes, rotations, shifts), offset)
        if learned and cfg.symmetrized_loss:
            recon = losses.symmetrized_reconstruction_loss(images, logits, self._pixel_mask)
        else:
            recon = losses.reconstruction_loss(images, logits, self._pixel_mask)
        out = {"recon": tf.reduce_mean(recon),
               "kl": tf.reduce_mean(losses.kl_divergence(z_mean, z_logvar)),
               "averaging": losses.averaging_loss(volumes, cfg.averaging_mirror)}
        out["total"] = out["recon"] + cfg.beta * out["kl"] + cfg.averaging_factor * cfg.beta * out["averaging"]
        out["recon_per_sample"] = recon
        return out

    def get_config(self):
        from cryovae_nb.config import to_dict

        return {"config": to_dict(self.config)}


def build_model(config: ModelConfig | None = None) -> CryoVAE:
    """Create a :class:`CryoVAE` and its weights (so ``load_weights`` works right away)."""
    model = CryoVAE(config or ModelConfig())
    n = model.config.box
    model.encode(np.zeros((1, n, n), np.float32))
    model.decode(np.zeros((1, model.config.latent_dim), np.float32))
    model.built = True
    return model
