"""Running the tutorial notebooks headless: inject parameters after the cell tagged
``parameters`` (papermill style), execute top to bottom, optionally save as HTML."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from cryovae_nb.atomic import write_text_atomic
from cryovae_nb.errors import ConfigError, InputError

NOTEBOOKS = ("01_preprocess.ipynb", "02_train.ipynb", "04_evaluate.ipynb", "05_latent_landscape.ipynb")
# what executing them needs: pyproject's `notebooks` extra (JupyterLab is not among them)
RUNNER_MODULES = ("nbformat", "nbclient", "nbconvert", "ipykernel")


def check_runner_installed() -> None:
    """One line naming what is missing, before any work (``make demo`` installs the extra; a bare
    ``pip install .[cpu]`` does not)."""
    missing = [m for m in RUNNER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"executing the tutorial notebooks needs {', '.join(missing)}: "
                          "pip install -e '.[cpu,notebooks]' (or skip them with --no-notebooks)")


def notebooks_dir() -> Path | None:
    """The repository's ``notebooks/`` (None when the package is installed without it)."""
    d = Path(__file__).resolve().parents[2] / "notebooks"
    return d if (d / NOTEBOOKS[0]).is_file() else None


def execute_notebook(path: str | os.PathLike, parameters: dict, cwd: str | os.PathLike, *,
                     timeout: int = 900, html: str | os.PathLike | None = None):
    """Run a tutorial notebook top to bottom with ``parameters`` injected after its cell tagged
    ``parameters`` (papermill style); optionally write it as HTML. Raises on the first error."""
    check_runner_installed()
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    idx = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(idx) != 1:
        raise InputError(f"expected one cell tagged 'parameters', found {len(idx)}", path)
    cell = nbformat.v4.new_code_cell("# injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx[0] + 1, cell)
    env = dict(os.environ)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env)
    if html is not None:
        import logging

        from nbconvert import HTMLExporter

        logging.getLogger("traitlets").setLevel(logging.ERROR)  # "alternative text missing" on plots
        body, _ = HTMLExporter().from_notebook_node(nb)
        write_text_atomic(html, body)
    return nb
