"""Streaming-preprocess throughput and peak memory on a large stack.

    python benchmarks/preprocess_throughput.py [N=100000] [--box 256] [--out-box 64] [--workdir /tmp]

Generates (once; reused while its size matches) an N x box x box float32 noise stack in --workdir,
then Fourier-crops it to --out-box, tanh-normalises and masks it through ``preprocess_stack`` and
prints images/s and the peak RSS of the process (``ru_maxrss``). The stack (26 GB at the default
size) must never be in memory at once: the target is a peak below 2 GiB.

Generation runs in a child process so its own memory does not count. Input pages may come from the
page cache on a second run (faster than a cold disk); the script says when the file was reused.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def stack_path(workdir: Path, n: int, box: int) -> Path:
    return workdir / f"cryovae_bench_{n}x{box}.mrcs"


def expected_size(n: int, box: int) -> int:
    return 1024 + n * box * box * 4


def generate(path: Path, n: int, box: int, chunk: int = 512) -> None:
    from tqdm.auto import tqdm

    from cryovae_nb.io import StackWriter

    rng = np.random.default_rng(0)
    j = np.arange(box) - box // 2
    blob = np.exp(-(j[None, :] ** 2 + j[:, None] ** 2) / (2 * (box / 8) ** 2)).astype(np.float32)
    with StackWriter(path, n, box, 1.0) as w:
        for start in tqdm(range(0, n, chunk), desc="generate", unit="chunk"):
            k = min(chunk, n - start)
            w.write(rng.standard_normal((k, box, box), dtype=np.float32) + blob)


class RSSSampler(threading.Thread):
    """Samples RSS every 50 ms (ru_maxrss gives only the peak; this also shows file-backed pages)."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.peak, self.peak_file, self.stop = psutil.Process(), 0, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            info = self.proc.memory_info()
            self.peak = max(self.peak, info.rss)
            self.peak_file = max(self.peak_file, getattr(info, "shared", 0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", nargs="?", type=int, default=100_000, help="images in the stack")
    ap.add_argument("--box", type=int, default=256)
    ap.add_argument("--out-box", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--keep-output", action="store_true")
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src = stack_path(workdir, args.n, args.box)
    if args.generate_only:
        generate(src, args.n, args.box)
        return 0
    reused = src.is_file() and src.stat().st_size == expected_size(args.n, args.box)
    if not reused:
        t = time.perf_counter()
        subprocess.run([sys.executable, os.path.abspath(__file__), str(args.n), "--box", str(args.box),
                        "--workdir", str(workdir), "--generate-only"], check=True)
        print(f"generated {src} ({src.stat().st_size / 2**30:.1f} GiB) in {time.perf_counter() - t:.0f} s")

    import cryovae_nb.preprocess as pp

    cfg = pp.PreprocessConfig(box=args.out_box, normalise="tanh", mask_diameter=0.95,
                              chunk_size=args.chunk_size)
    out = workdir / f"cryovae_bench_out_{args.n}x{args.out_box}"
    sampler = RSSSampler()
    sampler.start()
    t = time.perf_counter()
    result = pp.preprocess_stack(src, out, cfg, progress=True)
    dt = time.perf_counter() - t
    sampler.stop.set()
    sampler.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    assert len(result) == args.n and result.box == args.out_box

    gib = 2 ** 30
    print(f"input : {args.n} x {args.box} px ({src.stat().st_size / gib:.2f} GiB, "
          f"{'reused: pages may be cached' if reused else 'just written'})")
    print(f"output: {args.out_box} px, chunk {args.chunk_size}")
    print(f"time {dt:.1f} s -> {args.n / dt:,.0f} images/s ({src.stat().st_size / gib / dt:.2f} GiB/s read)")
    print(f"peak RSS (ru_maxrss) {peak / gib:.2f} GiB; sampled peak {sampler.peak / gib:.2f} GiB "
          f"(of which file-backed/shared up to {sampler.peak_file / gib:.2f} GiB)")
    verdict = "OK" if peak < 2 * gib else "OVER"
    print(f"target peak < 2 GiB: {verdict}")
    if not args.keep_output:
        for p in pp.output_paths(out).values():
            p.unlink(missing_ok=True)
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
