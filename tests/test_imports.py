"""The package's import graph (docs/design.md, "Layout and the direction of imports"): files
as nodes, every import as an edge, those inside functions included. No cycle; no import up the
order of the units; and `matryoshka.runtime` imports neither torch nor onnx, the folder package
no torch, anywhere in their files."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "matryoshka"
# top to bottom: a unit imports only units below it (or itself, without a cycle)
ORDER = ["__main__", "cli", "search", "search_report", "bundle", "importer", "exporter",
         "training", "model", "calibration", "folder", "data", "int8_check", "quantize",
         "pair_scale", "runtime", "logs", "io", "errors", "__init__"]
NOT_IMPORTED = {"runtime": {"torch", "onnx"}, "folder": {"torch"}}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> list[str]:
    """Every module that `name` (at `path`) imports, at any depth of its code."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            out += [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                    for a in node.names]
    return out


def graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Edges between the package's modules, and the outside top-level packages each imports."""
    known = modules(root)
    edges, outside = {m: set() for m in known}, {m: set() for m in known}
    for name, path in known.items():
        for target in imported(name, path, known):
            if not target.startswith(f"{root.name}.") and target != root.name:
                outside[name].add(target.split(".")[0])
                continue
            while target not in known:
                target = target.rpartition(".")[0]
            if target != name:
                edges[name].add(target)
    return edges, outside


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph, as the path around it, or []."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def upward(edges: dict[str, set[str]]) -> list[str]:
    rank = {u: i for i, u in enumerate(ORDER)}
    return [f"{a} -> {b}" for a, targets in sorted(edges.items()) for b in sorted(targets)
            if unit(a) != unit(b) and rank[unit(b)] <= rank[unit(a)]]


def test_every_unit_has_its_place_in_the_order():
    assert {unit(m) for m in modules()} <= set(ORDER)


def test_the_import_graph_has_no_cycle():
    assert not cycle(graph()[0]), " -> ".join(cycle(graph()[0]))


def test_no_module_imports_up_the_order():
    assert not upward(graph()[0])


@pytest.mark.parametrize("where", sorted(NOT_IMPORTED))
def test_the_torch_free_packages_import_no_torch(where):
    _, outside = graph()
    bad = {m: sorted(outside[m] & NOT_IMPORTED[where]) for m in outside
           if unit(m) == where and outside[m] & NOT_IMPORTED[where]}
    assert not bad


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    """The old tree's shape: calibration imported the exporter's cascade files, and the exporter
    imported calibration back (inside a function)."""
    pkg = tmp_path / "matryoshka"
    for rel, text in {"__init__.py": "", "exporter/__init__.py": "",
                      "exporter/cascades.py": "import torch\n\n\ndef f():\n"
                                              "    from matryoshka.calibration import c\n",
                      "calibration/__init__.py": "",
                      "calibration/c.py": "from matryoshka.exporter.cascades import x\n",
                      "runtime/__init__.py": "", "runtime/r.py": "def g():\n    import onnx\n"
                      }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    edges, outside = graph(pkg)
    assert cycle(edges) == ["matryoshka.calibration.c", "matryoshka.exporter.cascades",
                            "matryoshka.calibration.c"]
    assert upward(edges) == ["matryoshka.calibration.c -> matryoshka.exporter.cascades"]
    assert outside["matryoshka.runtime.r"] == {"onnx"}
    assert outside["matryoshka.exporter.cascades"] == {"torch"}
