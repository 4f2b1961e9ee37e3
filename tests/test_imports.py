"""The package's import graph (every import statement, inside functions too): no cycle, and method
modules are reached only through the registry (`methods.get_method`), so the run model, passes, backends,
report and bench never name a method. calibration/<method>.py calibrates that one method and may import it."""
import ast
from pathlib import Path

import ditreduce

ROOT = Path(ditreduce.__file__).parent
METHOD_MODULES = {"ditreduce.methods." + m for m in ("coredit", "dito", "random", "todo", "tome", "uniform")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("ditreduce",) + path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _edges(name: str, path: Path, modules: dict) -> set[str]:
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ditreduce")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ditreduce"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
            out |= subs or {target}   # `from pkg import submodule` imports the submodule
            if len(subs) < len(node.names):
                out.add(target)       # `from pkg import name` runs the package
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():  # the check itself can fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_module_outside_methods_imports_a_method_module():
    bad = []
    for name, deps in _graph().items():
        if name.startswith("ditreduce.methods"):
            continue
        for dep in deps & METHOD_MODULES:
            own = name.startswith("ditreduce.calibration.") and name.rsplit(".", 1)[1] == dep.rsplit(".", 1)[1]
            if not own:
                bad.append(f"{name} imports {dep}")
    assert bad == []
