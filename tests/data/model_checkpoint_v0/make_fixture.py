"""How tests/test_model_compat.py's fixtures were made: tiny models, their losses on a fixed batch,
and a checkpoint of two of them after two training steps (``outputs.npz``: what the model gave then).

Run against the code before the decoder/projector registries (commit 4fa2591, issue 11), as
``PYTHONPATH=<that checkout> python make_fixture.py OUT``; it imports that version's names
(``cryovae_nb.train.make_checkpoint``), so it does not run against later code -- which is the point:
later code must restore what this one wrote.
"""
import json, sys
from pathlib import Path
import numpy as np, tensorflow as tf
import cryovae_nb
from cryovae_nb import geometry
from cryovae_nb.model import ModelConfig, build_model, make_train_step, make_optimizer
from cryovae_nb.train import make_checkpoint
print(cryovae_nb.__file__, file=sys.stderr)
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
CFGS = {
    "known": dict(box=8, latent_dim=2, encoder_layers=1, encoder_units=16, decoder_layers=2,
                  decoder_units=16, pose_mode="known", seed=3),
    "known_encoder": dict(box=8, latent_dim=3, encoder_layers=2, encoder_units=16, decoder_layers=1,
                          decoder_units=16, pose_mode="known", latent_inference="encoder",
                          projector="real", kl_warmup_steps=5, free_bits=0.1, seed=4),
    "learned": dict(box=12, latent_dim=2, encoder_layers=1, encoder_units=16, decoder_layers=1,
                    decoder_units=16, pose_mode="learned", pose_search_deg=30.0, seed=5),
    "learned_real": dict(box=10, latent_dim=2, encoder_layers=1, encoder_units=16, decoder_layers=1,
                         decoder_units=16, pose_mode="learned", pose_search_deg=40.0, projector="real",
                         likelihood="bernoulli", search_reference="mean", image_offset=False,
                         pose_input="latent", seed=7),
    "learned_head": dict(box=8, latent_dim=3, encoder_layers=2, encoder_units=16, decoder_layers=1,
                         decoder_units=16, pose_mode="learned", pose_search_deg=None, symmetrized_loss=True,
                         link="identity", loss_in_mask=False, volume_mask=None, seed=2),
}
def batch(n, b=4):
    rng = np.random.default_rng(11)
    return (rng.random((b, n, n)).astype(np.float32),
            geometry.random_rotations(b, rng).astype(np.float32),
            rng.uniform(-1, 1, (b, 2)).astype(np.float32))
losses = {}
for name, kw in CFGS.items():
    cfg = ModelConfig(**kw)
    model = build_model(cfg)
    images, rot, sh = batch(cfg.box)
    known = cfg.pose_mode == "known"
    args = (images, rot, sh) if known else (images,)
    o = model.compute_losses(*args, training=True, seed=tf.constant([1, 2]))
    losses[name] = {k: float(o[k]) for k in ("recon", "kl", "averaging", "pose", "total", "noise_var")}
    if name not in ("known", "learned"):
        continue
    # checkpoint after two training steps (eager, no XLA)
    opt = make_optimizer(model)
    step = make_train_step(model, opt, jit=False)
    for s in range(2):
        step(*args, seed=tf.constant([s, 9]))
    make_checkpoint(model, opt).write(str(out / name / "ckpt"))
    z = np.random.default_rng(1).standard_normal((2, cfg.latent_dim)).astype(np.float32)
    enc = model.encode(images, **({"rotations": rot, "shifts": sh} if known else {}))
    o2 = model.compute_losses(*args, training=False, seed=tf.constant([3, 4]))
    np.savez(out / name / "outputs.npz", z=z, volumes=model.decode(z).numpy(),
             **{f"enc_{k}": v.numpy() for k, v in enc.items()},
             **{f"loss_{k}": o2[k].numpy() for k in ("recon", "kl", "total")})
    (out / name / "variables.json").write_text(json.dumps(sorted(v.path for v in model.weights)))
(out / "losses.json").write_text(json.dumps(losses, indent=1))
print(json.dumps(losses, indent=1))
