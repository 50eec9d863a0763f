"""The layering of nnslim, checked on the source (ast, nothing imported):

    cli -> api -> pipeline / loading -> algorithms (quant, pruning, distillation, lowrank)
        -> graph and primitives -> runtime

Algorithms get their data from the step Context and never import the public face, the CLI, the
testbeds or the evaluation code; graph and runtime never import algorithms; module-level imports form
no cycle (a cycle makes import order matter)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "nnslim"
ALGORITHMS = ("quant", "pruning", "distillation", "lowrank")
FACE = ("api", "cli", "pipeline", "loading", "demo", "testbeds", "eval")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute nnslim module names imported by a file (function-local imports too unless top_level_only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("nnslim")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nnslim"):
                continue
            out.add(target)
            for a in node.names:  # `from . import artifact` imports a module
                if (ROOT.parent / (target.replace(".", "/") + f"/{a.name}.py")).exists() or \
                        (ROOT.parent / (target.replace(".", "/") + f"/{a.name}")).is_dir():
                    out.add(f"{target}.{a.name}")
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, top_level_only) for p in sorted(ROOT.rglob("*.py"))}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_algorithms_never_import_the_face_testbeds_or_evaluation():
    bad = [f"{m} imports {t}" for m, targets in _graph(False).items() if _area(m) in ALGORITHMS
           for t in targets if _area(t) in FACE]
    assert not bad, bad


def test_graph_and_runtime_never_import_algorithms_or_the_face():
    bad = [f"{m} imports {t}" for m, targets in _graph(False).items() if _area(m) in ("graph", "runtime")
           for t in targets if _area(t) in ALGORITHMS + FACE]
    assert not bad, bad


def test_no_import_cycles_at_module_level():
    graph = _graph(True)
    known = set(graph)
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if t not in known or t == m or t == "nnslim" or m.startswith(t + "."):
                continue  # a package's own __init__ importing its children is not a cycle
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles[:3]


def test_the_checker_sees_imports():
    """The checks above would pass on an empty graph: make sure the parser finds real edges."""
    graph = _graph(False)
    assert "nnslim.pipeline" in graph["nnslim.api"]
    assert "nnslim.graph.modules" in graph["nnslim.quant.ptq"]
    assert any(t.startswith("nnslim.runtime") for t in graph["nnslim.quant.w8a8"])
