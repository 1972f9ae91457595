"""Peak memory of each tutorial notebook run as a user runs it: the kernel and every process it
starts (notebook 03's horovodrun and its ranks), with the notebook's own parameters.

    python benchmarks/notebook_memory.py [--workdir DIR] [--notebooks 01 02 03 04 05]
                                         [--train-budget 90] [--cluster-steps 100]

The notebooks run in order on one WORKDIR, as in the tutorial. Two shortenings, neither of which
changes what is held in memory: 02's wall-clock budget (default 180 s) and 03's MAX_STEPS (default
300) are cut (``--train-budget``, ``--cluster-steps``, still past a sample and a checkpoint).

Every process started for a notebook inherits a marker in its environment; a sampler reads
/proc every ``--interval`` seconds and sums, over the marked processes, the proportional set size
(PSS: shared pages such as TensorFlow's libraries counted once across the ranks, which is what a
container's memory limit like binder's 2 GB sees) and the resident set size (RSS, shared pages
counted in every process). Printed per notebook: the peak of each sum and the kernel's own peak
RSS (VmHWM, exact, read by a last cell the runner appends).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import nbformat

from cryovae_nb.tutorial.notebooks import execute_notebook

REPO = Path(__file__).resolve().parents[1]
NAMES = {"01": "01_preprocess.ipynb", "02": "02_train.ipynb", "03": "03_cluster_training.ipynb",
         "04": "04_evaluate.ipynb", "05": "05_latent_landscape.ipynb"}
MARK = "CRYOVAE_NOTEBOOK_MEMORY_TAG"
# the last cell: the kernel's exact peak RSS, tagged so it can be read back from the outputs
HWM_CELL = ("import json\n"
            "_hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print('KERNEL_HWM_KIB', json.dumps(int(_hwm)))")


def _marked_pids(tag: str) -> list[int]:
    needle = f"{MARK}={tag}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:  # gone, or not ours
                pass
    return pids


def _pss_rss_kib(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class Sampler(threading.Thread):
    def __init__(self, tag: str, interval: float):
        super().__init__(daemon=True)
        self.tag, self.interval = tag, interval
        self.peak_pss = self.peak_rss = self.peak_procs = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            pids = _marked_pids(self.tag)
            sizes = [_pss_rss_kib(p) for p in pids]
            self.peak_pss = max(self.peak_pss, sum(s[0] for s in sizes))
            self.peak_rss = max(self.peak_rss, sum(s[1] for s in sizes))
            self.peak_procs = max(self.peak_procs, len(pids))
            self.done.wait(self.interval)


def measure(name: str, params: dict, workdir: Path, interval: float) -> dict:
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(HWM_CELL))
    tag = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        nbformat.write(nb, path)
        os.environ[MARK] = tag  # the kernel, and whatever it starts, inherit it
        sampler = Sampler(tag, interval)
        sampler.start()
        t = time.monotonic()
        try:
            done = execute_notebook(path, params, workdir, timeout=3600)
        finally:
            sampler.done.set()
            sampler.join()
            del os.environ[MARK]
    text = "".join(o.get("text", "") for o in done.cells[-1].get("outputs", []))
    hwm = int(text.split("KERNEL_HWM_KIB", 1)[1].split()[0])
    return {"notebook": name, "seconds": round(time.monotonic() - t, 1),
            "peak_pss_mib": round(sampler.peak_pss / 1024), "peak_rss_sum_mib": round(sampler.peak_rss / 1024),
            "kernel_peak_rss_mib": round(hwm / 1024), "max_processes": sampler.peak_procs}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="folder the notebooks run in (default: a temp one)")
    ap.add_argument("--notebooks", nargs="+", default=list(NAMES), choices=list(NAMES))
    ap.add_argument("--train-budget", type=float, default=90.0, help="02's TRAIN_BUDGET_S (its default: 180)")
    ap.add_argument("--cluster-steps", type=int, default=100, help="03's MAX_STEPS (its default: 300)")
    ap.add_argument("--interval", type=float, default=0.25, help="sampling interval, seconds")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nbmem_"))
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = {"02": {"TRAIN_BUDGET_S": args.train_budget}, "03": {"MAX_STEPS": args.cluster_steps}}
    print(f"workdir {workdir}")
    for key in args.notebooks:
        row = measure(NAMES[key], overrides.get(key, {}), workdir, args.interval)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
