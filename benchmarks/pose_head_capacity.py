"""How well can the pose head learn poses at all? Trained on the TRUE poses (issue #13).

The pose head (the encoder's dense stack, then a dense(4) quaternion, ``CryoVAE.pose``) is what
would make inference search-free (``cryovae encode --pose head``). In ab initio training it is
pulled towards the searched poses (``PoseConfig.distill``), which are themselves noisy. This
benchmark gives it the best possible targets instead: the L's true rotations, with the loss the
distillation uses (1 - <q, q_true>^2, sign-free), nothing else trained. It prints, every
``--eval-every`` steps, the median angle to the truth on training images and on held-out ones,
and the held-out fractions within 10 and 20 degrees, for each SNR given. A head that cannot
generalise here cannot after distillation either.

    .venv/bin/python benchmarks/pose_head_capacity.py --snr 0.1,1,0 --steps 1500
    .venv/bin/python benchmarks/pose_head_capacity.py --encoder cnn --snr 0.1

Measured (stop 21; 2 shared cores, load ~2; 19,000 training / 1,000 held-out images of the L at
40 px, batch 120, lr 1e-4, 1,500 steps, ~80 s per SNR): SNR 0.1: train 19.1 deg, held-out 112.2
deg (chance ~126), 0.3 % within 10, 1.1 % within 20 (it memorises the noise); SNR 1: train 14.5,
held-out 43.7 deg, 4.5 % / 18.2 %; noise-free: 15.0 / 14.8 deg, 24.6 % / 69.3 %. So at the SNR of
real data this head does not learn poses that carry over to unseen images, even from the truth:
the search stays the inference default. A small convolutional encoder (``--encoder cnn``, lr 1e-3,
the same data, ~600 s at load ~3) reaches 56.3 deg held-out at SNR 0.1 (train 38.3; 0.9 % / 10.4 %
within 10 / 20 deg) and was still improving: the lever for a search-free head is the encoder.

The library's conv pose encoder (``--encoder library-conv``: ``pose_encoder="conv"``, the heads on
model/pose_encoder.py; lr 1e-3, the same data and steps; stop 22, load ~8-11, 1,122 s): SNR 0.1
held-out 89.1 / 83.2 / 78.1 deg after 500 / 1,000 / 1,500 steps (train 93.0 / 66.1 / 49.2; 0.6 %
/ 3.8 % within 10 / 20 deg at 1,500): well below the dense head's 112 but above the reference
CNN's 56 (its differences: leaky ReLU, a tanh'd quaternion normalised, as CryoVAE's heads are).
The dense head re-run then (``--encoder head --snr 0.1``): 110.8 / 112.6 / 112.2 deg held-out.
At the training runs' lr (``--learning-rate 1e-4 --steps 500``) the conv head: 99.7 / 93.7 deg after 250 / 500.

    PYTHONPATH=. .venv/bin/python benchmarks/pose_head_capacity.py --encoder library-conv --snr 0.1
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def reference_cnn(n: int, seed: int):
    """A small convolutional encoder (three conv + pool stages, a dense layer, a quaternion), not
    the library's: what a convolutional pose encoder would gain over the dense one."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([
        keras.Input((n, n, 1)),
        L.Conv2D(32, 5, padding="same", activation="relu"), L.AveragePooling2D(2),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.AveragePooling2D(2),
        L.Conv2D(128, 3, padding="same", activation="relu"), L.AveragePooling2D(2),
        L.Flatten(), L.Dense(256, activation="relu"), L.Dense(4)])


def run_snr(snr: float, args) -> None:
    import numpy as np
    import tensorflow as tf

    from cryovae_nb import geometry, synthetic
    from cryovae_nb.model import ModelConfig, build_model
    from cryovae_nb.model.batch import Batch
    from cryovae_nb.model.projectors import project_fourier

    n, count = args.box, args.n_train + args.n_test
    rng = np.random.default_rng(args.seed)
    volume = synthetic.lshape_volume(n).astype(np.float32)
    rotations = geometry.random_rotations(count, rng).astype(np.float32)
    chunk = 500
    images = np.concatenate([project_fourier(np.repeat(volume[None], len(rotations[i:i + chunk]), 0),
                                             rotations[i:i + chunk], None, width=2).numpy()
                             for i in range(0, count, chunk)])
    if snr > 0:  # SNR as signal variance over noise variance, over the whole image
        images = images + rng.normal(0, images.std() / np.sqrt(snr), images.shape).astype(np.float32)
    images = (images / images.std()).astype(np.float32)
    q_true = geometry.matrix_to_quaternion(rotations.astype(np.float64)).astype(np.float32)
    train, test = np.arange(args.n_train), np.arange(args.n_train, count)

    if args.encoder in ("head", "library-conv"):
        conv = args.encoder == "library-conv"  # the library's conv pose encoder (PoseConfig.encoder)
        model = build_model(ModelConfig().with_options(box=n, pose_mode="learned",
                                                       pose_encoder="conv" if conv else "dense"), seed=args.seed)
        model.encode(Batch(images[:2]), search=False)  # builds the layers
        layers = (model.pose_encoder,) if conv else tuple(model.encoder_layers)
        layers = (*layers, model.quaternion_layer)
        variables = [v for layer in layers for v in layer.trainable_variables]

        def predict(x, training=False):
            return model.encode(Batch(x), training=training, search=False)["quaternion"]
    else:
        net = reference_cnn(n, args.seed)
        variables = net.trainable_variables

        def predict(x, training=False):
            return tf.math.l2_normalize(net(x[..., None], training=training), -1)
    opt = tf.keras.optimizers.Adam(args.learning_rate)

    @tf.function(jit_compile=True)
    def step(x, q):
        with tf.GradientTape() as tape:
            p = predict(x, training=True)
            loss = tf.reduce_mean(1.0 - tf.square(tf.reduce_sum(p * q, -1)))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def errors(idx):
        q = np.concatenate([np.asarray(predict(images[idx[i:i + 1000]])) for i in range(0, len(idx), 1000)])
        return geometry.rotation_angle_deg(geometry.quaternion_to_matrix(q.astype(np.float64)), rotations[idx])

    print(f"\n{args.encoder} encoder, SNR {snr:g}: {args.n_train} training / {args.n_test} held-out images of the L at {n} px")
    print(f"{'step':>6} {'train deg':>9} {'held-out deg':>12} {'<10':>6} {'<20':>6} {'s':>5}")
    t0 = time.monotonic()
    for s in range(args.steps + 1):
        if s % args.eval_every == 0 or s == args.steps:
            tr, te = errors(train[:1000]), errors(test)
            print(f"{s:6d} {np.median(tr):9.1f} {np.median(te):12.1f} {np.mean(te < 10):6.3f} "
                  f"{np.mean(te < 20):6.3f} {time.monotonic() - t0:5.0f}", flush=True)
        if s < args.steps:
            b = rng.choice(train, args.batch, replace=False)
            step(images[b], q_true[b])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snr", default="0.1,1,0", help="comma-separated SNRs (0: no noise)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--box", type=int, default=40)
    ap.add_argument("--n-train", type=int, default=19000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="default: 1e-4 for the head (the training default's scale), 1e-3 for the CNNs")
    ap.add_argument("--encoder", choices=["head", "library-conv", "cnn"], default="head",
                    help="the model's pose head on its dense encoder, on the library's conv pose encoder "
                         "(pose_encoder='conv'), or a reference convolutional one")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.learning_rate is None:
        args.learning_rate = 1e-4 if args.encoder == "head" else 1e-3
    for snr in (float(s) for s in args.snr.split(",")):
        run_snr(snr, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
