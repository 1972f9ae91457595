"""``python -m cryovae_nb.training``: train in this process, or as one rank of a Horovod job (what
`cryovae_nb.launch` starts): the ``cryovae train`` command under the console script's error policy."""
import sys

from cryovae_nb.cli import run_command

raise SystemExit(run_command("train", sys.argv[1:], prog="python -m cryovae_nb.training"))
