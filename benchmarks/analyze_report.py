"""What ``cryovae analyze`` costs on the demo's run, part by part (issue #14).

Three reports of one run, in one process (the model loaded once, as ``cryovae analyze`` loads it):

- ``cold``: a fresh report folder (encoding, UMAP, reconstruction errors all computed);
- ``options changed`` (``--k`` + 1): rebuilt, the cached encoding, UMAP and errors reused;
- ``up to date``: the same options again: nothing recomputed.

Each line gives the wall time and the per-part breakdown the report records (report.json
``timings_s``). The run is ``demo_output/run`` (``cryovae demo --no-notebooks``) unless ``--run``
names another.

    python benchmarks/analyze_report.py [--run demo_output/run] [--k 5]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from cryovae_nb.analysis.report import ReportOptions, report
from cryovae_nb.inference import load_run
from cryovae_nb.tutorial.notebooks import notebooks_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="demo_output/run", help="a trained run folder (default: %(default)s)")
    p.add_argument("--k", type=int, default=5)
    args = p.parse_args()
    t = time.perf_counter()
    run = load_run(args.run)
    print(f"{run}: {len(run.particles)} particles; loaded in {time.perf_counter() - t:.1f} s")
    out = Path(tempfile.mkdtemp(prefix="analyze-bench-")) / "report"
    try:
        for label, k in (("cold", args.k), ("options changed", args.k + 1), ("up to date", args.k + 1)):
            t = time.perf_counter()
            s = report(run, out, ReportOptions(k=k), notebooks=notebooks_dir(), progress=False)
            wall = time.perf_counter() - t
            parts = ", ".join(f"{name} {sec:.1f}" for name, sec in s["timings_s"].items())
            print(f"{label:>16}: {wall:6.1f} s" + ("" if label == "up to date" else f"  ({parts})"))
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
