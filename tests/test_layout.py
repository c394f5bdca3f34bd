"""The package's shape: imports flow one way (no module imports one that imports it back, even
lazily), modules and functions stay small enough to read, and nothing under the command line builds
command lines."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "varirm"


def imports_of(path: Path) -> set[str]:
    """varirm modules imported anywhere in a file (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("varirm."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "varirm":  # from varirm import jobs
            out |= {a.name for a in node.names}
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
    # the verification runs jobs through the Python API's functions, never through the command line
    assert graph["verify"] >= {"jobs"} and not graph["verify"] & {"cli", "api"}
    assert "cli" not in set().union(*(deps for name, deps in graph.items() if name != "__main__"))


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    assert not long_modules and not long_functions, long_modules + long_functions


def test_no_command_lines_built_below_the_cli():
    """Jobs call each other as functions: no ``--flag`` strings in the modules that run other jobs."""
    for name in ("api", "jobs", "verify", "regimes"):
        flags = [node.value for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text()))
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)
                 and re.fullmatch(r"--[a-z_][\w.]*", node.value)]
        assert not flags, (name, flags)
