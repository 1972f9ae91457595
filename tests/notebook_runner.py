"""Execute a tutorial notebook top to bottom with small parameters (papermill-style injection).

The library's ``cryovae_nb.tutorial.notebooks.execute_notebook`` does the work (``make demo`` runs the same
path); this keeps the tests' call short and saves the executed copy when asked.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

from cryovae_nb.tutorial.notebooks import execute_notebook


def run_notebook(path: Path, parameters: dict, cwd: Path, timeout: int = 900,
                 save_to: Path | None = None) -> nbformat.NotebookNode:
    nb = execute_notebook(path, parameters, cwd, timeout=timeout)
    if save_to is not None:
        nbformat.write(nb, save_to)
    return nb
