"""The direction of dependencies: model library -> lab core -> stages -> runner and compare.

Read from the source, not by importing: every `import` of a project module, at the top of a file or inside a
function, is an edge. A module may import its own layer and the layers below it, never one above; the graph has
no cycle; and the project's own modules are imported at the top of a file, where a reader sees them (a function
may still import a heavy third-party library lazily).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("base_model", "recipes", "reward", "alignment")

# Lowest first; a module belongs to the first layer with a matching prefix, most specific prefix first.
LAYERS = [
    ("model library", ["base_model.model", "base_model.hf", "base_model.sampler", "base_model.tokenizer",
                       "base_model.flops", "base_model"]),
    ("lab core", ["recipes.core"]),
    ("pretraining stage and model tools", ["base_model.pretrain", "base_model.export", "base_model.bench"]),
    ("SFT stage", ["recipes.sft", "recipes.sft_callbacks"]),
    ("reward stage", ["reward"]),
    ("alignment stages", ["alignment"]),
    ("runner and compare", ["recipes.core.cli", "recipes.core.runner", "alignment.compare",
                            "alignment.compare_plots", "alignment.compare_tensorboard", "alignment.overoptimization",
                            "alignment.overoptimization_plot", "alignment.gao_fits",
                            "alignment.annotator_bias", "alignment.annotator_bias_plot"]),
]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def imports(module: str, path: Path, known: dict[str, Path]):
    """(imported project module, line, at the top of the file?) for each import statement of `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield target, node.lineno, id(node) in top


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {m: list(imports(m, p, known)) for m, p in known.items()}


def upward(graph) -> list[str]:
    return [f"{m}:{line} imports {t} ({LAYERS[layer_of(t)][0]} above {LAYERS[layer_of(m)][0]})"
            for m, edges in graph.items() for t, line, _ in edges if layer_of(t) > layer_of(m)]


def hidden(graph) -> list[str]:
    return [f"{m}:{line} imports {t} inside a function" for m, edges in graph.items() for t, line, top in edges
            if not top]


def cycle(graph) -> list[str] | None:
    """One import cycle as a path of modules, or None."""
    edges = {m: sorted({t for t, _, _ in targets if t in graph}) for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]):
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1:
                return path[path.index(t):] + [m, t] if t in path else [m, t]
            if t not in state and (found := visit(t, path + [m])):
                return found
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m, [])):
            return found
    return None


def test_every_import_points_down_or_sideways(graph):
    assert not upward(graph), "\n".join(upward(graph))


def test_project_modules_are_imported_at_the_top_of_each_file(graph):
    assert not hidden(graph), "\n".join(hidden(graph))


def test_there_is_no_import_cycle(graph):
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """On crafted sources, an upward import, a function-local one and a cycle are each caught."""
    order = ["base_model.hf", "recipes.core.config", "base_model.pretrain", "recipes.sft", "reward.train",
             "alignment.dpo", "recipes.core.runner"]
    assert [layer_of(m) for m in order] == sorted(layer_of(m) for m in order) == sorted({layer_of(m) for m in order})
    source = tmp_path / "bad.py"
    source.write_text("from alignment.dpo import main\n\n\ndef f():\n    from recipes.core import errors\n")
    found = list(imports("recipes.core.bad", source, {"alignment.dpo": source, "recipes.core.errors": source}))
    assert found == [("alignment.dpo", 1, True), ("recipes.core.errors", 5, False)]
    graph = {"recipes.core.bad": found, "alignment.dpo": [("recipes.core.bad", 1, True)], "recipes.core.errors": []}
    assert upward(graph) == ["recipes.core.bad:1 imports alignment.dpo (alignment stages above lab core)"]
    assert hidden(graph) == ["recipes.core.bad:5 imports recipes.core.errors inside a function"]
    assert cycle(graph) == ["alignment.dpo", "recipes.core.bad", "alignment.dpo"]
    assert cycle({"a": [("b", 1, True)], "b": []}) is None
