"""The shape of the code: the mini world is a plug-in, the import graph has no cycle, files stay
short. Read from the source (ast), so a new import that breaks a rule fails here."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [p for p in (ROOT / "safeclip").rglob("*.py") if "mini" not in p.relative_to(ROOT).parts]
APP = [ROOT / "app.py", *(ROOT / "demo").glob("*.py")]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            if node.module:  # ``from . import x`` imports the submodule x, not the package
                found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def strings(path: Path) -> list[str]:
    """String constants of the code, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs]


def test_nothing_outside_the_mini_world_imports_it():
    offenders = {module_name(p): sorted(m for m in imports(p) if m.startswith("safeclip.mini"))
                 for p in CORE + APP}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_code_outside_the_plug_in_asks_which_world_runs():
    """The core names no world: no string constant 'mini' (or a mini path) outside docstrings."""
    found = {module_name(p): [s for s in strings(p) if "mini" in s.lower()] for p in CORE + APP}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_import_graph_has_no_cycle():
    files = CORE + APP + list((ROOT / "safeclip" / "mini").glob("*.py"))
    names = {module_name(p): p for p in files}
    graph = {m: {i for i in imports(p) if i in names and i != m} for m, p in names.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_the_library_never_imports_gradio():
    assert [module_name(p) for p in CORE if any(m.startswith("gradio") for m in imports(p))] == []


def test_no_file_is_over_500_lines():
    files = [p for p in ROOT.rglob("*.py") if not any(part.startswith(".") or part in
                                                      ("work", "runs", "build") for part in
                                                      p.relative_to(ROOT).parts)]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}


def test_every_command_has_main_with_argv():
    import importlib

    from safeclip.cli import commands
    for verb, (target, _) in commands().items():
        module, func = target.split(":")
        fn = getattr(importlib.import_module(module), func)
        assert "argv" in fn.__code__.co_varnames[:fn.__code__.co_argcount], verb
