"""The ``cryovae`` commands, one module per command (routed by ``cryovae_nb.cli``).

Each module holds ``HELP`` (its one line in ``cryovae --help``), ``add_arguments(parser)`` and
``run(args) -> int``; the work itself is done by the library modules they call. ``cli.py`` owns the
one error policy (a user error is one line on stderr and exit status 2), so no command catches
errors itself.

Command modules import only TensorFlow-free modules at the top, so ``cryovae COMMAND --help``
stays fast; the one legitimate function-level import is of a heavy (TensorFlow) module inside
``run()``, marked ``# heavy:``.
"""
