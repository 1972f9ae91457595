"""Start-up cost of the console script: seconds and peak RSS of ``cryovae --help`` and of
``cryovae COMMAND --help`` for every command, each in a fresh interpreter (what a user waits for
before any work; the goal is under a second, without TensorFlow).

    python benchmarks/cli_startup.py [--repeat 3]

The child runs with ``-P`` so the working directory does not shadow PYTHONPATH's checkout.
Each figure is the best of ``--repeat`` runs (a shared machine only ever adds time). Peak RSS is the
child's ``ru_maxrss``. Whether TensorFlow was imported is printed too (it should not be).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# runs in the child: the help, then whether TensorFlow came in and the peak RSS (ru_maxrss, KiB)
CHILD = """
import resource, sys
from cryovae_nb import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
import json
print('@@' + json.dumps(['tensorflow' in sys.modules, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
"""


def measure(argv: list[str]) -> tuple[float, float, bool]:
    """(seconds, peak RSS in MB, TensorFlow imported) of one ``cryovae ARGV`` in a new process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-P", "-c", CHILD, *argv], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("@@"))
    tf, rss_kib = json.loads(line[2:])
    return seconds, rss_kib / 1024, tf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    results = {}
    from cryovae_nb import cli

    for argv in (["--help"], *([name, "--help"] for name in cli.COMMANDS)):
        runs = [measure(argv) for _ in range(args.repeat)]
        seconds = min(r[0] for r in runs)
        rss = min(r[1] for r in runs)
        results["cryovae " + " ".join(argv)] = dict(seconds=round(seconds, 2), peak_rss_mb=round(rss),
                                                    tensorflow=runs[0][2])
        print(f"cryovae {' '.join(argv):<18} {seconds:6.2f} s  {rss:6.0f} MB peak RSS  "
              f"tensorflow imported: {runs[0][2]}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
