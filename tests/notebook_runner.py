"""Execute a tutorial notebook top to bottom with small parameters (papermill-style injection).

Each notebook has one code cell tagged ``parameters``; the runner inserts a cell right after it
that overrides those values, then runs every cell with nbclient and fails on the first error.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run_notebook(path: Path, parameters: dict, cwd: Path, timeout: int = 900,
                 save_to: Path | None = None) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    idx = next((i for i, c in enumerate(nb.cells)
                if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
    if idx is None:
        raise AssertionError(f"{path}: no cell tagged 'parameters'")
    src = "# injected by the test suite\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)
    env_backup = dict(os.environ)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    if save_to is not None:
        nbformat.write(nb, save_to)
    return nb
