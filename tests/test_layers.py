"""The package's layers hold (DESIGN.md, "Packages" and "The pipeline around the online stage"): no import
cycles between tiller's sub-packages, and no layer imports one it must never import; the training core
(tiller/training/) and the stages beside the online one never import the online learner.

Read from the source with `ast`, nothing imported: every `import` counts, at module level or inside a
function (a lazy import is still a dependency), relative ones resolved. A layer is the first name below
tiller/: a sub-package (learner/, training/) or a top-level module (config, models); tiller/__init__.py is
"tiller". The checker is itself tested on a small package written on the spot, one bad import in it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tiller"

# layer -> the layers it must never import. The design's table, the training core's seam, and the rule
# that protocol/ sits under everything that talks over the wire.
NEVER = {
    "protocol": {"actors", "learner", "cli", "training", "offline", "eval", "judging"},
    "training": {"learner", "actors", "judging", "protocol", "cli", "offline", "eval"},
    "offline": {"learner", "cli"},
    "eval": {"learner", "cli"},
    "actors": {"learner", "cli"},
    "learner": {"actors", "cli"},
    "config": {"actors", "learner", "cli", "training", "offline", "eval", "judging", "protocol"},
}

Edges = dict[str, dict[str, list[str]]]  # importing layer -> imported layer -> ["file.py:line", ...]


def _module_parts(path: Path, root: Path) -> list[str]:
    """`tiller/learner/main.py` -> ["learner", "main"]; a package's __init__.py -> the package's parts."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(node: ast.AST, path: Path, root: Path) -> list[list[str]]:
    """The names an import statement brings in, as parts below the package (["training", "guard"]), or
    [] for imports from outside it. `from pkg import name` yields pkg + name: name may be a module."""
    package = root.name
    if isinstance(node, ast.Import):
        dotted = [alias.name.split(".") for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the importing module's package, `level - 1` packages up
            here = _module_parts(path, root)
            if path.name != "__init__.py":
                here = here[:-1]
            base = [package, *here[:len(here) - (node.level - 1)]]
        else:
            base = []
        module = base + (node.module.split(".") if node.module else [])
        dotted = [module + [alias.name] for alias in node.names]
    else:
        return []
    return [parts[1:] for parts in dotted if parts[0] == package]


def layer_edges(root: Path) -> Edges:
    """Every import between two different layers of the package at `root`, with where it is."""
    layers = {p.name for p in root.iterdir() if (p / "__init__.py").exists()}
    layers |= {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    edges: Edges = {}
    for path in sorted(root.rglob("*.py")):
        parts = _module_parts(path, root)
        source = parts[0] if parts else root.name
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(node, path, root):
                target = name[0] if name and name[0] in layers else root.name  # else a name in __init__.py
                if target != source:
                    where = f"{path.relative_to(root.parent)}:{node.lineno}"
                    edges.setdefault(source, {}).setdefault(target, []).append(where)
    return edges


def forbidden(edges: Edges, never: dict[str, set[str]]) -> list[str]:
    """One line per import a layer must never make, naming the file and line."""
    return [f"{source} imports {target} ({', '.join(edges[source][target])})"
            for source, banned in never.items() for target in sorted(banned & set(edges.get(source, {})))]


def cycles(edges: Edges) -> list[list[str]]:
    """The groups of layers that import one another, round and round (Tarjan's strongly connected
    components with more than one layer)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(layer: str) -> None:
        index[layer] = low[layer] = len(index)
        stack.append(layer)
        for target in edges.get(layer, {}):
            if target not in index:
                visit(target)
                low[layer] = min(low[layer], low[target])
            elif target in stack:
                low[layer] = min(low[layer], index[target])
        if low[layer] == index[layer]:
            group = []
            while not group or group[-1] != layer:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for layer in sorted(edges):
        if layer not in index:
            visit(layer)
    return found


def describe(edges: Edges, group: list[str]) -> str:
    """A cycle with the imports that make it."""
    return "; ".join(f"{a} -> {b} ({edges[a][b][0]})" for a in group for b in group if b in edges.get(a, {}))


# --------------------------------------------------------------------------- tiller itself


def test_no_import_cycles_between_tillers_layers():
    edges = layer_edges(ROOT)
    assert "learner" in edges and "training" in edges["learner"]  # the walk sees real imports
    found = cycles(edges)
    assert not found, "import cycles: " + " | ".join(describe(edges, group) for group in found)


@pytest.mark.parametrize("layer", sorted(NEVER))
def test_no_layer_imports_what_it_must_never_import(layer):
    if not (ROOT / layer).is_dir() and not (ROOT / f"{layer}.py").exists():
        pytest.skip(f"tiller/{layer} does not exist yet")
    assert forbidden(layer_edges(ROOT), {layer: NEVER[layer]}) == []


# --------------------------------------------------------------------------- the checker, on a made-up package


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_lazy_import_of_the_learner_from_training_is_caught_as_forbidden_and_as_a_cycle(tmp_path):
    pkg = write_package(tmp_path / "tiller", {
        "__init__.py": "",
        "training/__init__.py": "",
        "training/engine.py": "import torch\n\n\ndef build():\n    from tiller.learner.trainer import PolicyTrainer\n",
        "learner/__init__.py": "",
        "learner/trainer.py": "from tiller.training.engine import build\n",
        "protocol/__init__.py": "",
        "protocol/codec.py": "from tiller import learner\n",
    })
    edges = layer_edges(pkg)
    assert forbidden(edges, NEVER) == ["protocol imports learner (tiller/protocol/codec.py:1)",
                                       "training imports learner (tiller/training/engine.py:5)"]
    assert cycles(edges) == [["learner", "training"]]


def test_relative_imports_and_names_from_the_package_init_resolve_to_their_layers(tmp_path):
    pkg = write_package(tmp_path / "tiller", {
        "__init__.py": "STARTED = 0\n",
        "config.py": "",
        "eval/__init__.py": "from .. import config\n",
        "eval/run.py": "from ..learner import main\nfrom . import helpers\nfrom tiller import STARTED\n",
        "learner/__init__.py": "",
    })
    edges = layer_edges(pkg)
    assert edges == {"eval": {"config": ["tiller/eval/__init__.py:1"], "learner": ["tiller/eval/run.py:1"],
                              "tiller": ["tiller/eval/run.py:3"]}}
    assert forbidden(edges, NEVER) == ["eval imports learner (tiller/eval/run.py:1)"]
    assert cycles(edges) == []
