"""Horovod scaling: training images/s with 1 and 2 processes here, and a paper estimate for GPU nodes.

    python benchmarks/scaling.py                 # the thesis model at box 40, batch 32 per rank
    python benchmarks/scaling.py --small         # a quick run with a small model

Runs ``horovodrun -np 1`` and ``-np 2 --gloo`` on this machine with the real Trainer
(cryovae_nb.training.horovod), reads the Trainer's own images/s (global: all ranks' images over the
step time, the first logging interval -- tracing -- left out), times the gradient all-reduce
itself, and prints the bytes all-reduced per step (trainable parameters x 4 bytes).

The estimate for 4 GPUs x N nodes assumes a step = compute + all-reduce, not overlapped
(conservative): compute is the seed's figure (1-2 steps/s at 120 images per V100, i.e. ~0.67 s) or
--gpu-step-s; the all-reduce is hierarchical: a ring over NVLink inside a node, then a ring over
InfiniBand across nodes carrying 1/4 of the bytes per GPU (2(p-1)/p x bytes / bandwidth per ring).
On a CPU machine the 2-process ratio measures core sharing, not Horovod: 2 ranks on 2 cores each
get half the cores one rank had.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_data(path: Path, n: int, box: int) -> None:
    import numpy as np

    from cryovae_nb.io import write_stack

    # throughput does not depend on the image content: uniform values in [0, 1] like tanh output
    rng = np.random.default_rng(0)
    write_stack(path, rng.random((n, box, box), dtype=np.float32), pixel_size=1.0)


def worker(cfg_path: str, out_path: str, reps: int) -> None:
    """One rank: train, then time the gradient all-reduce alone; rank 0 writes the figures."""
    import tensorflow as tf

    from cryovae_nb.training import horovod

    trainer = horovod.make_trainer(cfg_path, progress=False)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    reduce_grads = trainer.hooks.grad_reducer  # the Horovod all-reduce; None in one process
    grads = [tf.zeros_like(v.value) for v in trainer.model.trainable_variables]
    allreduce_s = None
    if reduce_grads is not None:
        reduce_grads(grads)  # warm-up (negotiation, buffers)
        t0 = time.perf_counter()
        for _ in range(reps):
            reduce_grads(grads)
        allreduce_s = (time.perf_counter() - t0) / reps
    if trainer.is_chief:
        from cryovae_nb.training.rundir import read_metrics

        records = [r for r in read_metrics(trainer.run_dir) if r["split"] == "train"]
        json.dump({"size": trainer.size, "images_per_s": [r["images_per_s"] for r in records],
                   "gradient_bytes": horovod.gradient_bytes(trainer.model),
                   "allreduce_s": allreduce_s, "wall_s": wall}, open(out_path, "w"))


def run(np_: int, cfg: dict, tmp: Path, reps: int) -> dict:
    from cryovae_nb.launch.commands import find_executable, horovodrun_command

    hvdrun = find_executable("horovodrun")
    if hvdrun is None:
        sys.exit("horovodrun not found: install Horovod with `make horovod` (scripts/install_horovod.sh)")
    cfg = {**cfg, "run_dir": str(tmp / f"run_np{np_}")}
    cfg_path = tmp / f"cfg_np{np_}.json"
    cfg_path.write_text(json.dumps(cfg))
    out = tmp / f"result_np{np_}.json"
    cmd = horovodrun_command(np_, [sys.executable, __file__, "--worker", str(cfg_path), str(out), str(reps)],
                             horovodrun=hvdrun)
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--box", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--interval", type=int, default=5, help="steps per timing interval")
    p.add_argument("--intervals", type=int, default=3, help="timed intervals (+1 warm-up)")
    p.add_argument("--small", action="store_true", help="a small model (quick check)")
    p.add_argument("--reps", type=int, default=5, help="timed all-reduces")
    p.add_argument("--gpu-step-s", type=float, default=0.67,
                   help="compute time of one step on one GPU for the estimate (seed: 1-2 steps/s on V100)")
    p.add_argument("--nvlink-GBps", type=float, default=100.0, help="per-GPU NVLink bandwidth, GB/s")
    p.add_argument("--ib-Gbps", type=float, default=100.0, help="inter-node InfiniBand, Gb/s")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], int(a.worker[2]))
        return

    from cryovae_nb.training.horovod import hierarchical_allreduce_seconds, ring_allreduce_seconds

    model = {"box": a.box}
    if a.small:
        model.update(encoder_layers=2, encoder_units=128, decoder_layers=2, decoder_units=128, latent_dim=8)
    steps = a.interval * (a.intervals + 1)
    with tempfile.TemporaryDirectory(prefix="cryovae_scaling_") as tmp:
        tmp = Path(tmp)
        n = 2 * a.batch_size * (steps + 1) + 8
        make_data(tmp / "data.mrcs", n, a.box)
        cfg = {"data": str(tmp / "data.mrcs"), "batch_size": a.batch_size, "max_steps": steps,
               "log_every": a.interval, "sample_every": 10**9, "checkpoint_every": 10**9,
               "n_test_eval": 0, "n_samples": 0, "test_fraction": 0.01, "jit": False, "model": model}
        results = {np_: run(np_, cfg, tmp, a.reps) for np_ in (1, 2)}

    ips = {k: statistics.median(v["images_per_s"][1:]) for k, v in results.items()}  # skip tracing
    nbytes = results[1]["gradient_bytes"]
    cores = os.cpu_count()
    print(f"model: box {a.box}, {'small' if a.small else 'thesis'} architecture, batch {a.batch_size} per rank; "
          f"{cores} CPU cores")
    print(f"gradient all-reduced per step: {nbytes:,} bytes ({nbytes / 2**20:.1f} MiB, float32)")
    print(f"1 process : {ips[1]:8.1f} images/s   ({a.batch_size / ips[1] * 1e3:.0f} ms/step)")
    print(f"2 processes: {ips[2]:8.1f} images/s   ({2 * a.batch_size / ips[2] * 1e3:.0f} ms/step)")
    print(f"ratio 2/1 : {ips[2] / ips[1]:.2f}   (on {cores} cores: each rank gets {cores / 2:.0f} core(s) "
          "instead of all; this measures core sharing more than Horovod)")
    if results[2]["allreduce_s"] is not None:
        t = results[2]["allreduce_s"]
        print(f"measured all-reduce of the gradients, 2 ranks (gloo, localhost): {t * 1e3:.1f} ms "
              f"= {nbytes / t / 1e9:.2f} GB/s effective ({t / (2 * a.batch_size / ips[2]) * 100:.0f} % of a step)")

    nv, ib = a.nvlink_GBps * 1e9, a.ib_Gbps / 8 * 1e9
    b = 120  # images per GPU, as the thesis trained
    print(f"\npaper estimate, 4 GPUs per node, {b} images per GPU, "
          f"compute {a.gpu_step_s:.2f} s/step/GPU (seed's V100 figure), NVLink {a.nvlink_GBps:g} GB/s, "
          f"IB {a.ib_Gbps:g} Gb/s, step = compute + all-reduce (no overlap):")
    print(f"{'nodes':>5} {'GPUs':>5} {'all-reduce ms':>14} {'flat ring ms':>13} {'images/s':>10} {'efficiency':>10}")
    for nodes in (1, 2, 4, 8, 16, 32):
        g = 4 * nodes
        t_ar = hierarchical_allreduce_seconds(nbytes, 4, nodes, intra_bw=nv, inter_bw=ib)
        flat = ring_allreduce_seconds(nbytes, g, ib if nodes > 1 else nv, 5e-6)
        step = a.gpu_step_s + t_ar
        print(f"{nodes:>5} {g:>5} {t_ar * 1e3:>14.2f} {flat * 1e3:>13.2f} {g * b / step:>10.0f} "
              f"{a.gpu_step_s / step * 100:>9.1f}%")
    print("(efficiency = compute / (compute + all-reduce); the flat ring sends 2(p-1)/p x bytes over IB "
          "per GPU, the hierarchical one only 1/4 of that across nodes)")


if __name__ == "__main__":
    main()
