"""The assembled VAE: encoder -> (z, pose) -> decoder -> volume -> projection (thesis §3.3.1).

This module composes the parts and orchestrates the losses: the encoder and its heads, the
linearised latent posterior with its principal volumes, and the loss terms. The parts live beside
it: decoders.py and projectors.py (registries keyed by ModelConfig), forward.py (volumes and poses
-> images), pose_search.py (the learned-pose search), rotations.py, losses.py.
"""
from __future__ import annotations

from functools import partial

import keras
import numpy as np
import tensorflow as tf

from cryovae_nb.config import to_dict
from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.model import losses, pose_search
from cryovae_nb.model.batch import Batch, Optics
from cryovae_nb.model.config import ModelConfig
from cryovae_nb.model.decoders import make_decoder
from cryovae_nb.model.forward import add_offset, apply_link, ctf_spectrum, forward_images, multiply_spectrum
from cryovae_nb.model.pose_encoder import ConvPoseEncoder
from cryovae_nb.model.projectors import make_projector, project_fourier
from cryovae_nb.model.rotations import quaternion_to_matrix
from cryovae_nb.volumes import diameter_mask


def latent_noise(shape, seed) -> tf.Tensor:
    """Standard normal noise from an int ``[2]`` seed (``tf.random.stateless_normal``).

    XLA draws different numbers for the same seed, so compiled steps call this outside XLA and
    pass the result as ``noise`` (see training/steps.py): a seed means the same noise everywhere."""
    return tf.random.stateless_normal(shape, seed=tf.cast(seed, tf.int32))


def search_noise(shape, seed) -> tf.Tensor:
    """Uniform draws for sampling searched poses (``pose_search.search_pose``) from the same int
    ``[2]`` seed as :func:`latent_noise` (an independent stream), also drawn outside XLA."""
    return tf.random.stateless_uniform(shape, seed=tf.cast(seed, tf.int32) + tf.constant([0, 7919]))


class CryoVAE(keras.Model):
    """Encoder (images -> latent Gaussian), pose head (latent -> quaternion + shift), decoder
    (latent -> masked ``n^3`` volume ``[z, y, x]``; ``model/decoders.py``) and a projector
    (``model/projectors.py``), composed by the forward model (``model/forward.py``); see
    :class:`ModelConfig`.

    Build it with :func:`build_model` (which creates the weights). Save/load weights with Keras'
    ``save_weights("x.weights.h5")`` / ``load_weights`` -- no pickle.
    """

    def __init__(self, config: ModelConfig, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        config.validate()
        self.config = cfg = config
        self.seed = int(seed)  # the initial weights'; the trainer's (TrainConfig.seed)
        act = partial(keras.activations.leaky_relu, negative_slope=cfg.architecture.leaky_slope)
        seeds = iter(range(self.seed * 1000, self.seed * 1000 + 1000))

        def dense(units, activation=None, name=None):
            return keras.layers.Dense(units, activation=activation, name=name,
                                      kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)))

        arch = cfg.architecture
        self.encoder_layers = [dense(arch.encoder_units, act, f"enc{i}") for i in range(arch.encoder_layers)]
        self.z_mean_layer = dense(cfg.architecture.latent_dim, name="z_mean")
        self.z_logvar_layer = dense(cfg.architecture.latent_dim, name="z_logvar")
        self.quaternion_layer = dense(4, "tanh", "pose_quaternion")
        self.shift_layer = dense(2, "tanh", "pose_shift")
        if cfg.pose.search_deg is not None:  # start centred: the global search moves images by it
            self.shift_layer = keras.layers.Dense(2, "tanh", name="pose_shift", kernel_initializer="zeros")
        # With linearised latents the network's response to z starts at zero: a random one would
        # hand every latent dimension a random direction, and the linearised posterior would fit
        # noise along it. z-dependence is then learned where the data asks, beside the principal
        # volumes.
        self.decoder = make_decoder(cfg, seeds, zero_response=self.linearized)
        # the pose heads' own convolutional network (PoseConfig.encoder = "conv"; model/pose_encoder.py),
        # drawn after every other seeded layer, so a "dense" model's weights are as before
        self.pose_encoder = None
        if cfg.pose.encoder == "conv":
            self.pose_encoder = ConvPoseEncoder(act, seeds, name="pose_encoder")
        self.projector = make_projector(cfg)
        self._mask = None if arch.volume_mask is None else tf.constant(diameter_mask(arch.box, arch.volume_mask, ndim=3))
        # Why an offset: the tanh-normalised target is sigmoid(a * (P - mean) / sigma), so its logit
        # is a * P minus a per-image constant over the disc. No volume inside the mask projects to a
        # constant in every direction except an edge-singular shell, which the decoder would then
        # have to build (and re-tune per particle from the noise mean). The head takes that constant.
        # The disc the mask projects to (preprocessing masks images with the same 0.95 default).
        self._disc = tf.constant(diameter_mask(arch.box, arch.volume_mask or 1.0, ndim=3)[arch.box // 2])
        self.offset_layer = None
        if cfg.loss.image_offset:
            self.offset_layer = keras.layers.Dense(1, name="image_offset", kernel_initializer="zeros")
        # Why score inside the disc only: outside it the images were masked to 0 (no data), and the
        # Fourier projector's output is not confined to the disc, so the seed's all-pixel loss is
        # lowered by pushing logits there to -inf with ringing in the volume, not by fitting data.
        self._pixel_mask = self._disc if cfg.loss.loss_in_mask else None
        # Learned poses with a search: see model/pose_search.py for why
        self._search_grids = None
        if cfg.pose.search_deg is not None:
            self._search_grids = pose_search.SearchGrids.for_config(cfg)
        # The Gaussian likelihood's noise variance: a bias-corrected running mean of the per-pixel
        # squared residual (its maximum-likelihood value), updated by the train step. Weights, so
        # checkpoints carry it and a resumed run continues exactly. Plain variables, not add_weight:
        # that would put the model's per-process name (cryo_vae_3/...) in their paths, which
        # train.make_checkpoint keys by, so a fresh model could not restore them.
        self.residual_ema = keras.Variable(0.0, dtype="float32", trainable=False, name="residual_ema")
        self.residual_count = keras.Variable(0.0, dtype="float32", trainable=False, name="residual_count")
        if self.linearized:
            # Principal volumes of the conformational covariance, estimated from the data by
            # stochastic subspace iteration (covariance_statistics / update_covariance); the
            # decoder adds sum_k z_k sqrt(variance_k) basis_k to its volume. Why: a deep decoder
            # learns a z-dependent direction by gradient far too slowly at low SNR (the collapse);
            # the covariance of the residuals finds it in a few passes, as in RECOVAR.
            d, n = cfg.architecture.latent_dim, cfg.architecture.box
            rng = np.random.default_rng(self.seed + 7919)
            mask = 1.0 if self._mask is None else self._mask.numpy().reshape(-1, 1)
            start = np.linalg.qr(rng.standard_normal((n ** 3, d)) * mask)[0].T.reshape(d, n, n, n)
            self.pc_basis = keras.Variable(start.astype(np.float32), trainable=False, name="pc_basis")
            self.pc_accum = keras.Variable(np.zeros((d, n, n, n), np.float32), trainable=False,
                                           name="pc_accum")
            self.pc_variance = keras.Variable(np.zeros(d, np.float32), trainable=False, name="pc_variance")
            self.pc_count = keras.Variable(0.0, dtype="float32", trainable=False, name="pc_count")

    # -- the pieces --------------------------------------------------------------------------
    def encode(self, batch: Batch, training: bool = False, *, search: bool = True) -> dict:
        """A `Batch` of ``(B, n, n)`` images -> dict ``z_mean``, ``z_logvar`` ``(B, latent)``,
        ``quaternion`` ``(B, 4)`` (unit, scalar first) and ``shift`` ``(B, 2)`` px. The pose head
        reads the hidden layer (``pose_input="hidden"``), ``z_mean`` (the seed's) or, with
        ``pose_encoder="conv"``, its own convolutional network on the images. With
        linearized latents (``latent_inference``) the batch's known poses ``rotations``
        ``(B, 3, 3)`` (and ``shifts``) are required. A learned-pose model with a pose search
        reports the searched pose unless ``search=False``: the head's own (no search, ~70-110x faster)."""
        images = batch.images
        h = self._hidden(images, training)
        offset = None if self.offset_layer is None else self.offset_layer(h)[:, 0]
        z_mean, z_logvar = self._posterior(h, batch, offset)
        out = {"z_mean": z_mean, "z_logvar": z_logvar}
        out.update(self.pose(self._pose_input(images, h, z_mean, training)))
        if offset is not None:
            out["offset"] = offset
        if search and self.config.pose.search_deg is not None and self.config.pose.mode == "learned":
            # the pose is the searched one, as in training
            out["quaternion"], out["shift"], _ = self.search_pose(images, self.decode(z_mean, training),
                                                                  out["quaternion"], out["shift"],
                                                                  ctf=self.ctf_of(batch))
        return out

    @property
    def search_grid_size(self) -> int:
        """Rotations in the pose-search grid (0 without search)."""
        return 0 if self._search_grids is None else int(self._search_grids.grid.shape[0])

    def search_pose(self, images, volumes, quaternion, shift, pose_noise=None, ctf=None, start=None):
        """:func:`pose_search.search_pose` with this model's grids, projector, disc and config."""
        return pose_search.search_pose(images, volumes, quaternion, shift, grids=self._search_grids,
                                       projector=self.projector, disc=self._disc, config=self.config,
                                       pose_noise=pose_noise, ctf=ctf, start=start)

    def ctf_of(self, batch: Batch):
        """The batch's CTFs ``(B, n, n//2 + 1)`` when the model applies them (``ModelConfig.loss.ctf``),
        else None (its optics, if any, unused)."""
        if not self.config.loss.ctf:
            return None
        if batch.optics is None:
            raise InputError("this model applies each particle's CTF (ModelConfig.loss.ctf): the batch "
                             "needs its optics (the STAR file's CTF columns, Batch.optics)")
        return ctf_spectrum(batch.optics, self.config.architecture.box)

    def image_prediction(self, logits) -> tf.Tensor:
        """The model's image (in the data's units) from projections plus offset: the link."""
        return apply_link(logits, self.config.loss.link)

    def noise_variance(self, fallback=None) -> tf.Tensor:
        """The Gaussian likelihood's per-pixel noise variance: the running mean of the squared
        residual; ``fallback`` (e.g. this batch's) before the first training step."""
        count = self.residual_count
        est = self.residual_ema / tf.maximum(1.0 - tf.pow(self.config.loss.noise_ema, count), 1e-12)
        if fallback is not None:
            est = tf.where(count > 0, est, tf.cast(fallback, tf.float32))
        return tf.maximum(est, 1e-8)  # blank (all-masked) data must not divide by zero

    def update_noise_variance(self, batch_residual) -> None:
        """One step of the running residual variance (call once per training step)."""
        d = self.config.loss.noise_ema
        self.residual_ema.assign(d * self.residual_ema + (1.0 - d) * tf.cast(batch_residual, tf.float32))
        self.residual_count.assign_add(1.0)

    def add_offset(self, projections, offset=None) -> tf.Tensor:
        """Projections plus the per-image ``offset`` ``(B,)`` inside the mask disc (the model's logits);
        unchanged when the model has no offset head or ``offset`` is None."""
        if self.offset_layer is None or offset is None:
            return projections
        return add_offset(projections, offset, self._disc)

    def _pose_input(self, images, h, z, training):
        """What the pose heads read: the conv pose encoder's features of the images
        (``PoseConfig.encoder = "conv"``), else the hidden layer ``h`` or the latent ``z``
        (``PoseConfig.input``)."""
        if self.pose_encoder is not None:
            return self.pose_encoder(tf.convert_to_tensor(images, tf.float32), training=training)
        return h if self.config.pose.input == "hidden" else z

    def pose(self, z) -> dict:
        """Pose head on its input (:meth:`_pose_input`: conv features, the encoder's hidden layer
        or latent vectors): tanh -> normalised quaternion; tanh x max_shift -> shift (px)."""
        q = self.quaternion_layer(z)
        q = q / tf.maximum(tf.norm(q, axis=-1, keepdims=True), 1e-6)
        return {"quaternion": q, "shift": self.config.architecture.max_shift_px * self.shift_layer(z)}

    def decode(self, z, training: bool = False) -> tf.Tensor:
        """``(B, latent)`` -> masked volumes ``(B, n, n, n)`` indexed ``[z, y, x]``: the decoder's
        volume plus (linearised latents) the principal volumes, times the volume mask."""
        v = self.decoder(z, training=training)
        if self.linearized:
            scale = tf.sqrt(tf.nn.relu(self.pc_variance))
            v = v + tf.einsum("bk,kzyx->bzyx", tf.convert_to_tensor(z, tf.float32) * scale, self.pc_basis)
        return v if self._mask is None else v * self._mask

    def project(self, volumes, rotations, shifts=None, band: float | None = None) -> tf.Tensor:
        """Project ``(B, n, n, n)`` volumes at ``(B, 3, 3)`` rotations and ``(B, 2)`` shifts with
        the configured projector -> ``(B, n, n)``; ``(B, K, 3, 3)`` rotations give ``(B, K, n, n)``.
        ``band`` (cycles per box) low-passes the projections."""
        return self.projector(volumes, rotations, shifts, band=band)

    def call(self, images, training: bool = False):
        """Deterministic reconstruction of ``images`` (z = z_mean, learned pose): the logits."""
        enc = self.encode(Batch(images), training)
        return forward_images(self.decode(enc["z_mean"], training), quaternion_to_matrix(enc["quaternion"]),
                              enc["shift"], projector=self.projector, offset=enc.get("offset"), disc=self._disc)

    def reconstruct(self, batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
        """(the model's images ``(B, n, n)`` in the data's units, volumes ``(B, n, n, n)``) of a
        `Batch` (z = z_mean; its known poses, else the encoder's): the loss's forward model, the
        CTF included, so a reconstruction is comparable with its image."""
        enc = self.encode(batch)
        volumes = self.decode(enc["z_mean"])
        rot, sh = batch.rotations, batch.shifts
        if rot is None:
            rot, sh = quaternion_to_matrix(enc["quaternion"]), enc["shift"]
        images = forward_images(volumes, tf.convert_to_tensor(rot, tf.float32), sh, projector=self.projector,
                                offset=enc.get("offset"), disc=self._disc, ctf=self.ctf_of(batch),
                                link=self.config.loss.link)
        return images, volumes

    def linearized_posterior(self, batch: Batch, offset=None, noise_var=None, ctf=None):
        """Each `Batch` image's latent posterior under the decoder linearised about the prior mean,
        at its known pose: ``(z_mean, z_logvar)`` ``(B, latent)``, no gradient (``latent_inference =
        "linearized"``).

        The model image of latent z is approximated by ``y0 + G z`` with ``y0`` the image of z = 0
        and ``G``'s column k the secant ``image(e_k) - y0`` (one prior standard deviation along
        dimension k); with white Gaussian noise of variance ``noise_var`` and the N(0, I) prior the
        posterior is Gaussian with precision ``A = G^T G / var + I`` and mean ``A^-1 G^T (y - y0) /
        var`` (pixels inside the loss mask). The mean-field variances are the diagonal of ``A^-1``.

        Why: an encoder network must learn, view by view, where in a noisy image a conformation
        shows; at SNR 0.1 it learns slowly and the KL term wins. Here the decoder itself says where
        to look, as in probabilistic PCA's EM: training the decoder on these latents turns G
        towards the directions in which the particles vary.
        """
        cfg = self.config
        n, d = cfg.architecture.box, cfg.architecture.latent_dim
        images, rotations, shifts, b = _known_pose_batch(batch)
        probes = tf.concat([tf.zeros([1, d]), tf.eye(d)], 0)                       # (d + 1, d)
        vols = tf.stop_gradient(self.decode(probes))
        # low-passed: the conformation shows at low resolution, and slicing only the band's
        # frequencies (the projector's cheap features, not the loss) makes the d + 1
        # projections per image cheap
        rot_k, shift_k = tf.repeat(rotations[None], d + 1, 0), tf.repeat(shifts[None], d + 1, 0)
        proj = self.projector.project_features(vols, rot_k, shift_k, band=cfg.latent.band * n)
        ctf = self.ctf_of(batch) if ctf is None else ctf   # compute_losses passes the step's
        if ctf is not None:                                                        # (1, B, ...): per image
            proj = multiply_spectrum(proj, ctf[None])
        if offset is not None and self.offset_layer is not None:
            proj = add_offset(proj, tf.stop_gradient(offset), self._disc)
        pred = self.image_prediction(proj)                                         # (d + 1, B, n, n)
        mask = self._pixel_mask if self._pixel_mask is not None else tf.ones([n, n])
        g = tf.reshape(tf.transpose((pred[1:] - pred[:1]) * mask, [1, 0, 2, 3]), [b, d, n * n])
        r = tf.reshape((images - pred[0]) * mask, [b, n * n])
        if noise_var is None:
            noise_var = self.noise_variance()
        var = tf.cast(noise_var, tf.float32)
        eye = tf.eye(d, batch_shape=[b])
        precision = tf.matmul(g, g, transpose_b=True) / var + eye
        chol = tf.linalg.cholesky(precision)
        z_mean = tf.linalg.cholesky_solve(chol, (tf.linalg.matvec(g, r) / var)[..., None])[..., 0]
        z_var = tf.linalg.diag_part(tf.linalg.cholesky_solve(chol, eye))
        return tf.stop_gradient(z_mean), tf.stop_gradient(tf.math.log(z_var))

    def covariance_statistics(self, batch: Batch, offset=None, noise_var=None, ctf=None):
        """One `Batch`'s step of the principal-volume estimate (``latent_inference="linearized"``):
        ``(H U, variance)`` with ``U`` the current basis ``(d, n, n, n)``, ``H = mean_i Q_i^T (r_i
        r_i^T - var I) Q_i - b b^T`` the images' residual covariance (``b = mean_i Q_i^T r_i``: each
        ``r_i . Q_i u_k`` centred over the batch) taken back into the volume (``Q_i``:
        projection at pose i, low-passed to ``latent_band``, times the particle's CTF (with
        ``ModelConfig.loss.ctf``) and the link's slope, inside the loss mask; ``r_i`` the residual to the volume at z = 0), and the variance along each basis
        volume (least squares from ``r_i . Q_i u_k``). The noise term makes ``H`` unbiased for the
        conformational covariance as the back-projection sees it: the basis volumes come out
        blurred by ``mean_i Q_i^T Q_i`` (~1/|k|), their projections, where latents are read, less so.
        No gradient to the model."""
        cfg = self.config
        n, d = cfg.architecture.box, cfg.architecture.latent_dim
        images, rotations, shifts, b = _known_pose_batch(batch)
        band, mask = cfg.latent.band * n, (self._pixel_mask if self._pixel_mask is not None else 1.0)
        v0 = tf.stop_gradient(self.decode(tf.zeros([1, d])))
        # Why project_fourier whatever ModelConfig.projector: differentiable in the volume and
        # cheap (trilinear taps, the band only); the seed's code did so with the real projector too
        ctf = self.ctf_of(batch) if ctf is None else ctf   # compute_losses passes the step's

        def imaged(p):  # the microscope's filter on (..., B, n, n) projections, if the model has one
            return p if ctf is None else multiply_spectrum(p, ctf)

        l0 = imaged(project_fourier(v0, rotations[None], shifts[None], width=2, band=band)[0])
        if offset is not None and self.offset_layer is not None:
            l0 = add_offset(l0, tf.stop_gradient(offset), self._disc)
        y0 = self.image_prediction(l0)
        slope = y0 * (1.0 - y0) if cfg.loss.link == "sigmoid" else tf.ones_like(y0)
        r = (images - y0) * mask
        var = tf.cast(self.noise_variance() if noise_var is None else noise_var, tf.float32)
        basis = tf.convert_to_tensor(self.pc_basis)
        with tf.GradientTape() as tape:
            tape.watch(basis)
            q = imaged(project_fourier(basis, tf.repeat(rotations[None], d, 0), tf.repeat(shifts[None], d, 0),
                                       width=2, band=band)) * (slope * mask)[None]  # (d, B, n, n)
            # Not ramp-filtered: over many views sum_i P_i^T P_i weights frequency k by ~1/|k|, so
            # the basis volumes come out low-passed; a ramp filter (filtered back-projection)
            # removes that bias but lets the high-frequency noise in, and measured worse at SNR
            # 0.1 (hinge |rho| 0.40 vs 0.61; benchmarks/quality_heterogeneity.py)
            c = tf.reduce_sum(q * r[None], axis=[2, 3])                             # (d, B)
            # Centred over the batch, so H is a covariance (H - b b^T, b = mean_i Q_i^T r_i): while
            # the map at z = 0 is still wrong, that error is in every residual, and uncentred it
            # became the top "principal volume", its variance running away (conv3d at 64 px: 8.8e5,
            # every latent at z1 = 0.51, the map collapsed)
            c = c - tf.reduce_mean(c, axis=1, keepdims=True)
            nb = tf.cast(tf.shape(c)[1], tf.float32)
            # E[(c_i - mean c)^2] of independent noise: var |q_i|^2 (1 - 1/B) summed over the batch
            noise = var * tf.reduce_sum(q * q, axis=[2, 3]) * (1.0 - 1.0 / nb)
            f = 0.5 * tf.reduce_mean(tf.square(c) - noise, axis=1)
            total = tf.reduce_sum(f)
        hu = tape.gradient(total, basis)
        # c = a |q|^2 + noise for an image a basis volume's amplitude a away: least squares
        gain = tf.reduce_sum(q * q, axis=[2, 3])
        variance = tf.nn.relu(tf.reduce_mean(tf.square(c) - noise, axis=1)) / tf.maximum(
            tf.reduce_mean(tf.square(gain), axis=1), 1e-12)
        return tf.stop_gradient(hu), tf.stop_gradient(variance)

    def update_covariance(self, hu, variance) -> None:
        """Subspace iteration: the running mean of ``H U`` orthonormalised (signs kept) becomes
        the basis; the variances follow as a running mean (both bias-corrected)."""
        cfg = self.config
        beta = cfg.latent.covariance_ema
        n, d = cfg.architecture.box, cfg.architecture.latent_dim
        self.pc_accum.assign(beta * self.pc_accum + (1.0 - beta) * hu)
        self.pc_count.assign_add(1.0)
        corr = 1.0 - tf.pow(beta, self.pc_count)
        q, _ = tf.linalg.qr(tf.transpose(tf.reshape(self.pc_accum / corr, [d, -1])))
        q = tf.transpose(q)                                                          # (d, n^3)
        old = tf.reshape(self.pc_basis, [d, -1])
        sign = tf.where(tf.reduce_sum(q * old, axis=1) < 0, -1.0, 1.0)
        self.pc_basis.assign(tf.reshape(q * sign[:, None], [d, n, n, n]))
        # the variance is re-estimated each step along the current basis: a plain running mean
        self.pc_variance.assign(beta * self.pc_variance + (1.0 - beta) * variance)

    @property
    def linearized(self) -> bool:
        """Whether latents come from :meth:`linearized_posterior` (else the encoder's heads)."""
        mode = self.config.latent.inference
        return mode == "linearized" or (mode == "auto" and self.config.pose.mode == "known")

    def _posterior(self, h, batch: Batch, offset, noise_var=None, ctf=None):
        if not self.linearized:
            return self.z_mean_layer(h), self.z_logvar_layer(h)
        if batch.rotations is None:
            raise InputError("this model infers latents from the known poses (latent_inference="
                             "'linearized'): pass the poses (rotations, shifts)")
        return self.linearized_posterior(batch, offset, noise_var, ctf)

    def _hidden(self, images, training):
        images = tf.convert_to_tensor(images, tf.float32)
        n = self.config.architecture.box
        if images.shape.rank != 3 or tuple(images.shape[1:]) != (n, n):
            raise InputError(f"the model expects images of shape (batch, {n}, {n}), got {tuple(images.shape)}")
        h = tf.reshape(images, [-1, n * n])
        for layer in self.encoder_layers:
            h = layer(h, training=training)
        return h

    # -- the objective -------------------------------------------------------------------------
    def compute_losses(self, batch: Batch, training: bool = True,
                       seed=None, noise=None, pose_noise=None, kl_scale=1.0, start=None) -> dict:
        """All loss terms for a `Batch` of images ``(B, n, n)`` (tanh-normalised, or standardised
        with ``link="identity"``; with ``ModelConfig.loss.ctf`` its ``optics`` give each CTF).

        The batch's ``rotations`` ``(B, 3, 3)`` (and optional ``shifts`` ``(B, 2)``, px) switch to
        known poses; otherwise the pose head is used (required when ``pose_mode == "known"``). ``seed`` (int
        tensor of shape [2]) draws the reparameterisation noise with ``tf.random.stateless_normal``
        -- the same seed gives the same noise; ``seed=None`` uses z = z_mean (no noise).
        ``noise`` ``(B, latent)`` gives the standard normal draws directly (overrides ``seed``).
        With ``pose_search_deg`` and learned poses, the seed (or ``pose_noise``, uniform ``(B, R)``)
        also samples each image's searched pose from its posterior (see :meth:`search_pose`);
        without either the search takes the best pose. ``start`` ``(B, 4)``: each image's cached
        pose (its last searched one): the search only refines it locally (``search_pose``).

        Returns scalars ``recon`` (the negative log-likelihood in nats for ``likelihood="gaussian"``,
        the cross-entropy for ``"bernoulli"``; summed over pixels -- those inside the mask disc with
        ``loss_in_mask`` -- mean over batch; with ``symmetrized_loss`` and learned poses, the better
        of the projection and its 180-degree in-plane turn), ``kl`` (nats per image), ``averaging`` and
        ``pose`` (the pull of the pose head towards searched poses that beat it; 0 without search),
        ``head_won`` (the fraction of images whose head rotation won the search's first local
        round, i.e. was kept; 0 without search; not part of the total)
        and ``total = recon + b * (kl' + averaging_factor * averaging) + pose_distill * pose`` with
        ``b = beta * kl_scale`` (the warm-up) and ``kl'`` the KL less ``free_bits``; plus
        ``recon_per_sample`` ``(B,)``, ``kl_per_dim`` ``(latent,)`` (batch means), ``residual``
        (mean squared residual per pixel, what the noise variance is estimated from) and
        ``noise_var`` (the variance used); with the search, ``searched_quaternion`` ``(B, 4)`` (what
        a pose cache keeps).
        """
        cfg = self.config
        rotations, shifts = batch.rotations, batch.shifts
        images = tf.convert_to_tensor(batch.images, tf.float32)
        h = self._hidden(images, training)
        offset = None if self.offset_layer is None else self.offset_layer(h)[:, 0]
        ctf = self.ctf_of(batch)  # once per step: the posterior, the loss and the covariance use it
        if self.linearized:
            # before the first update there is no residual yet: the images' own variance bounds it
            mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
            v0 = tf.reduce_mean(tf.square(images - mean))
            z_mean, z_logvar = self._posterior(h, batch, offset, self.noise_variance(fallback=v0), ctf)
        else:
            z_mean, z_logvar = self.z_mean_layer(h), self.z_logvar_layer(h)
        z = z_mean
        if noise is None and seed is not None:
            noise = latent_noise(tf.shape(z_mean), seed)
        if pose_noise is None and seed is not None and cfg.pose.search_deg is not None:
            pose_noise = search_noise([tf.shape(images)[0], self.search_grid_size], seed)
        if noise is not None:
            z = z_mean + tf.exp(0.5 * z_logvar) * noise
        learned = rotations is None
        if learned:
            if cfg.pose.mode == "known":
                raise ConfigError("pose_mode='known' needs rotations (and shifts) for every batch")
            p = self.pose(self._pose_input(images, h, z, training))
            rotations, shifts = quaternion_to_matrix(p["quaternion"]), p["shift"]
        volumes = self.decode(z, training)
        pose_term = head_won_fraction = tf.constant(0.0)
        if learned and cfg.pose.search_deg is not None:
            q, found_shifts, head_won = self.search_pose(images, volumes, p["quaternion"], shifts,
                                                         pose_noise, ctf, start)
            # the head keeps its gradient where its rotation won; elsewhere it is pulled to the
            # searched one (1 - <q, q'>^2: 0 for the same rotation, 1 at 180 degrees, sign-free),
            # and the shift head to the searched shift (squared, in units of max_shift)
            rotations = tf.where(head_won[:, None, None], rotations, quaternion_to_matrix(q))
            agree = tf.reduce_sum(p["quaternion"] * q, axis=-1)
            scale = max(cfg.architecture.max_shift_px, 1.0)
            pose_term = (tf.reduce_mean(tf.where(head_won, 0.0, 1.0 - tf.square(agree)))
                         + tf.reduce_mean(tf.reduce_sum(tf.square(shifts - found_shifts), -1)) / scale**2)
            shifts = found_shifts
            searched = q  # the head's own rotation where it won
            head_won_fraction = tf.reduce_mean(tf.cast(head_won, tf.float32))
        logits = forward_images(volumes, rotations, shifts, projector=self.projector, offset=offset,
                                disc=self._disc, ctf=ctf)
        pixel_mask = self._pixel_mask
        n_pix = tf.reduce_sum(pixel_mask) if pixel_mask is not None else float(cfg.architecture.box ** 2)
        predicted = self.image_prediction(logits)
        sq = tf.square(images - tf.stop_gradient(predicted))
        residual = tf.reduce_sum(sq if pixel_mask is None else sq * pixel_mask) / (
            n_pix * tf.cast(tf.shape(images)[0], tf.float32))
        noise_var = self.noise_variance(fallback=residual)
        if cfg.loss.likelihood == "gaussian":
            def data_term(pred):
                return losses.gaussian_nll(images, pred, noise_var, pixel_mask)
            pred_or_logits = predicted
        else:
            def data_term(lg):
                return losses.reconstruction_loss(images, lg, pixel_mask)
            pred_or_logits = logits
        if learned and cfg.loss.symmetrized_loss:
            recon = tf.minimum(data_term(pred_or_logits), data_term(losses.rotate180(pred_or_logits)))
        else:
            recon = data_term(pred_or_logits)
        kl_dims = tf.reduce_mean(losses.kl_per_dimension(z_mean, z_logvar), axis=0)
        out = {"recon": tf.reduce_mean(recon), "kl": tf.reduce_sum(kl_dims),
               "averaging": losses.averaging_loss(volumes, cfg.loss.averaging_mirror), "pose": pose_term,
               "head_won": head_won_fraction}
        free_bits = cfg.loss.free_bits
        kl_charged = tf.reduce_sum(tf.maximum(kl_dims, free_bits)) if free_bits > 0 else out["kl"]
        b = cfg.loss.beta * tf.cast(kl_scale, tf.float32)
        out["total"] = (out["recon"] + b * (kl_charged + cfg.loss.averaging_factor * out["averaging"])
                        + cfg.pose.distill * pose_term)
        out.update(recon_per_sample=recon, kl_per_dim=kl_dims, residual=residual, noise_var=noise_var)
        if self.linearized and training:
            out["pc_update"], out["pc_variance"] = self.covariance_statistics(batch, offset, noise_var, ctf)
        out["z_mean"] = z_mean
        if learned and cfg.pose.search_deg is not None:
            out["searched_quaternion"] = tf.stop_gradient(searched)
        return out

    def get_config(self):
        return {"config": to_dict(self.config)}


def _known_pose_batch(batch: Batch):
    """A known-pose `Batch`'s (images, rotations (B, 3, 3), shifts (B, 2), B) as float32 tensors
    with static ranks: a loosely retraced step (reduce_retracing) may hand them in rank-unknown;
    no shifts are zeros."""
    images, rotations, shifts = batch.images, batch.rotations, batch.shifts
    images = tf.convert_to_tensor(images, tf.float32)
    rotations = tf.reshape(tf.convert_to_tensor(rotations, tf.float32), [-1, 3, 3])
    b = tf.shape(rotations)[0]
    shifts = tf.zeros([b, 2]) if shifts is None else tf.reshape(tf.convert_to_tensor(shifts, tf.float32), [-1, 2])
    return images, rotations, shifts, b


def build_model(config: ModelConfig | None = None, seed: int = 0) -> CryoVAE:
    """Create a :class:`CryoVAE` and its weights (so ``load_weights`` works right away); ``seed``
    draws the initial weights."""
    model = CryoVAE(config or ModelConfig(), seed=seed)
    n = model.config.architecture.box
    known = np.eye(3, dtype=np.float32)[None] if model.config.pose.mode == "known" else None
    images = np.zeros((1, n, n), np.float32)
    # any valid CTF serves to create the weights (defocus 1 um, 300 kV, Cs 2.7 mm, w 0.1, 1 A/px)
    optics = (Optics(*(np.array([v], np.float32) for v in (1e4, 1e4, 0, 300, 2.7, 0.1, 0, 0, 1)))
              if model.config.loss.ctf else None)
    model.encode(Batch(images, rotations=known, optics=optics))
    h = model._hidden(images, False)
    model.z_mean_layer(h), model.z_logvar_layer(h)  # built even when latents are not read from them
    model.decode(np.zeros((1, model.config.architecture.latent_dim), np.float32))
    model.built = True
    return model
