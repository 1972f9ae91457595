"""The tutorial path as library calls (what the notebooks import), and ``cryovae demo``.

* ``workspace`` -- the tutorial workdir's paths, the embedded hinge dataset it simulates and
  preprocesses, and the training run it launches (``ensure_tutorial_data`` / ``ensure_tutorial_run``
  create what is missing, so every notebook also runs on its own).
* ``evaluation`` -- the simulated truth, a run's consensus map and FSC, the latent against the
  simulated motion, per-particle reconstructions and errors.
* ``plots`` -- the matplotlib figures of the notebooks and the demo.
* ``notebooks`` -- executing a notebook headless with injected parameters.
* ``demo`` -- what ``cryovae demo`` runs (``make demo``; the command is cryovae_nb.commands.demo).

This file imports nothing: a notebook imports the module it needs.
"""
