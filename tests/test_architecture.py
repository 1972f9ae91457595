"""The package's shape (issue #11): every module imports, no import cycle, nothing imports upwards,
each concept defined once, and the command line answers --help without TensorFlow.

The import graph is read from the source (AST), function-level imports included: a cycle hidden
inside a function is still a cycle, it only fails later.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import cryovae_nb

PKG = Path(cryovae_nb.__file__).parent
ROOT = PKG.parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str | None:
    if isinstance(node, ast.Import):
        name = alias.name
    else:
        base = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        if node.level:
            parts = base.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            name = base + ("." + node.module if node.module else "")
        else:
            name = node.module or ""
        if f"{name}.{alias.name}" in MODULES:  # "from package import module"
            name = f"{name}.{alias.name}"
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name if name in MODULES else None


def import_edges() -> set[tuple[str, str]]:
    """(importer, imported) for every import of a cryovae_nb module, at any depth in the file
    (inside functions too), except type-checking-only imports."""
    edges = set()
    for module, path in MODULES.items():
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    t = _target(module, node, alias)
                    if t and t != module:
                        edges.add((module, t))
    return edges


def _runtime_nodes(tree):
    """Every node except those under ``if TYPE_CHECKING:`` (type hints only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _cycles(edges) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_detector_finds_a_cycle():
    # the detector itself, on a graph with a known cycle (so the real test can fail)
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert _cycles({("a", "b"), ("b", "c")}) == []


def test_no_import_cycle():
    assert _cycles(import_edges()) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_every_module_imports(module):
    importlib.import_module(module)


# The layers, lowest first: a module may import its own layer or lower ones, never a higher one
# (docs/architecture.md draws the same picture). A new module must be placed here.
LAYERS = [
    ("foundation", ["cryovae_nb", "cryovae_nb.errors", "cryovae_nb.faults", "cryovae_nb.atomic",
                    "cryovae_nb.config", "cryovae_nb.argcheck"]),
    ("math and formats", ["cryovae_nb.geometry", "cryovae_nb.volumes", "cryovae_nb.ctf",
                          "cryovae_nb.projection", "cryovae_nb.io"]),
    ("numerical core", ["cryovae_nb.model", "cryovae_nb.preprocess", "cryovae_nb.contrast",
                        "cryovae_nb.selection",
                        "cryovae_nb.synthetic", "cryovae_nb.analysis", "cryovae_nb.heterogeneity",
                        "cryovae_nb.refine"]),
    ("training", ["cryovae_nb.training"]),
    ("trained runs", ["cryovae_nb.inference"]),
    ("applications", ["cryovae_nb.launch", "cryovae_nb.tutorial", "cryovae_nb.widgets"]),
    ("command line", ["cryovae_nb.commands", "cryovae_nb.cli"]),
]


def layer_of(module: str) -> int:
    if module.endswith(".__main__"):  # an entry point sits above everything it starts
        return len(LAYERS) - 1
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (rank, p)
    if best is None:
        raise AssertionError(f"{module} is in no layer: place it in LAYERS (tests/test_architecture.py)")
    return best[0]


def test_nothing_imports_upwards():
    upward = sorted(f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                    for a, b in import_edges() if layer_of(b) > layer_of(a))
    assert upward == []


def test_the_numerical_core_never_imports_jupyter():
    # everything below the applications runs headless (the CLI, Horovod ranks, batch jobs)
    jupyter = {"ipywidgets", "nglview", "plotly", "IPython", "ipykernel", "nbformat", "nbclient"}
    top = [name for name, _ in LAYERS].index("trained runs")
    offenders = []
    for module, path in MODULES.items():
        if layer_of(module) > top:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{module} imports {n}" for n in names if n.split(".")[0] in jupyter]
    assert offenders == []


def _definitions() -> dict[str, list[str]]:
    """name -> the modules (and classes) defining it: functions, classes and module constants."""
    found: dict[str, list[str]] = {}

    def visit(body, where):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.setdefault(node.name, []).append(where)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{where}.{node.name}")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id.isupper():
                        found.setdefault(t.id, []).append(where)

    for module, path in MODULES.items():
        visit(ast.parse(path.read_text()).body, module)
    return found


# Each concept issue #11 found written several times, and the one place it lives now.
ONE_PLACE = {
    "LOSS_KEYS": "cryovae_nb.model.losses",               # was in train.py and copied in ~4 places
    "read_split": "cryovae_nb.training.data",             # was two load_split, different meanings
    "MetricsReader": "cryovae_nb.training.rundir",         # was three metrics.jsonl readers
    "RunFolder": "cryovae_nb.training.rundir",             # inference, tutorial, launch, monitor read runs
    "diameter_mask": "cryovae_nb.volumes",                 # was three masks
    "fourier_resample": "cryovae_nb.volumes",
    "centred_coords": "cryovae_nb.geometry",               # was two
    "write_particles_subset": "cryovae_nb.io.star",        # was two STAR subset exporters
    "write_selection": "cryovae_nb.selection",             # every selection back to the user's STAR
    "forward_images": "cryovae_nb.model.forward",          # loss, search, inference share it
    "search_pose": "cryovae_nb.model.pose_search",         # (and CryoVAE.search_pose, a one-line call)
    "make_decoder": "cryovae_nb.model.decoders",
    "make_projector": "cryovae_nb.model.projectors",
    "Batch": "cryovae_nb.model.batch",
    "estimate_peak_memory": "cryovae_nb.training.memory",  # the trainer and benchmarks/memory_model.py
    "device_policy": "cryovae_nb.training.devices",
}
# Names that must not come back (the duplicates and the cycle's workaround they replaced).
GONE = ["load_split", "spherical_mask", "circular_mask", "resample_volume", "centered_coords", "_centred",
        "export_kept_star", "mirror_volume", "flip_hand", "_trainer_class", "HorovodTrainer", "SCALARS", "resolved", "mirror",
        "normalize"]


def test_each_concept_is_defined_in_one_place():
    defs = _definitions()
    wrong = {}
    for name, home in ONE_PLACE.items():
        where = [w for w in defs.get(name, []) if not (name == "search_pose" and w.endswith(".CryoVAE"))]
        if where != [home]:
            wrong[name] = where
    assert wrong == {}
    assert {n: defs[n] for n in GONE if n in defs} == {}
