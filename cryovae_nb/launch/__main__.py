"""``python -m cryovae_nb.launch _supervise RUN_DIR -- CMD...``: the background supervisor that local
and mpirun jobs run under (``cryovae launch`` itself is ``cryovae_nb.commands.launch``)."""
from __future__ import annotations

import sys
from pathlib import Path

from cryovae_nb.launch.supervise import _supervise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["_supervise"] or len(argv) < 4 or argv[2] != "--":
        print("usage: python -m cryovae_nb.launch _supervise RUN_DIR -- CMD...", file=sys.stderr)
        return 2
    return _supervise(Path(argv[1]), argv[3:])


if __name__ == "__main__":
    sys.exit(main())
