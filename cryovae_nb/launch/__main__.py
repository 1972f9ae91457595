"""``python -m cryovae_nb.launch``: ``cryovae launch``, or the background supervisor
(``_supervise RUN_DIR -- CMD...``) that local and mpirun jobs run under."""
import sys

from cryovae_nb.launch.cli import main

sys.exit(main())
