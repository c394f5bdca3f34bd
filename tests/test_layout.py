"""The package's imports flow one way (no module imports one that imports it back, even lazily)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "varirm"


def imports_of(path: Path) -> set[str]:
    """varirm modules imported anywhere in a file (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("varirm."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("varirm.")}
    return out


def test_import_graph_has_no_cycles():
    graph = {p.stem: imports_of(p) - {p.stem} for p in PACKAGE.glob("*.py")}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join(path + [node, nxt])}"
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert graph["verify"] >= {"commands"} and "cli" not in graph["verify"]
