"""``python -m cryovae_nb.training``: train in this process, or as one rank of a Horovod job."""
from cryovae_nb.training.cli import main

raise SystemExit(main())
