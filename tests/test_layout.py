"""The package's architecture, checked: no import cycles, and no layer importing a layer above it.

The layers follow the pipeline of the README's picture. A module may import its own subpackage and
any subpackage of a lower layer, never one above (imports inside functions count too)."""

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "lmtrain"
LAYERS = {
    "errors": 0, "formatting": 0,
    "cli": 1, "config": 1,
    "corpus": 2,
    "tokenizer": 3,
    "data": 4, "model": 4, "evals": 4, "publish": 4,
    "training": 5,
    "finetune": 6, "inference": 6, "plan": 6,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lmtrain_imports(path: Path) -> set[str]:
    """The lmtrain modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmtrain"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from lmtrain.x import module`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lmtrain"))
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "metrics" not in p.relative_to(PACKAGE).parts[1:2]]
    modules = {module_name(p): p for p in files}
    return {name: {m for m in lmtrain_imports(path) if m in modules and m != name} for name, path in modules.items()}


def layer_of(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "lmtrain"
    return top, LAYERS.get(top, -1)


def test_every_subpackage_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.name != "__init__.py"
            and (p.suffix == ".py" or (p / "__init__.py").is_file())}  # fmt: skip
    assert tops == set(LAYERS), f"add new subpackages to LAYERS: {tops ^ set(LAYERS)}"


def test_no_layer_imports_a_layer_above_it():
    wrong = []
    for module, imported in import_graph().items():
        top, layer = layer_of(module)
        for target in imported:
            target_top, target_layer = layer_of(target)
            if target_top != top and target_layer >= layer:
                wrong.append(f"{module} ({top}, layer {layer}) imports {target} ({target_top}, layer {target_layer})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_graph_holds_the_real_edges():
    """The checks are not vacuous: imports at module level, inside functions and of modules are all seen."""
    graph = import_graph()
    assert "lmtrain.config.recipe" in graph["lmtrain.data.prepare"]  # module level
    assert "lmtrain.model.adapters" in graph["lmtrain.inference.generation"]
    assert len(graph) > 30
