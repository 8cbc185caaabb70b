"""The package's layout rules (docs/architecture.md), checked on the source itself.

- Every module imports on its own: each is imported first thing in a process of its own.
- No import cycle inside the package, counting the imports inside functions too (only
  `if TYPE_CHECKING:` blocks are left out: they never run).
- Only the CLI (modelfusion/cli/) imports typer.
- One atomic writer: files.atomic_write / atomic_open; no other module makes a temp file
  and renames it over a target.
- No module is longer than MAX_LINES.
- The dev extra declares every third-party package the tests import.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "modelfusion"
MAX_LINES = 450
# Importing these runs something: `python -m modelfusion` starts the CLI.
NOT_IMPORTED = {"modelfusion.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def executed_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: top level, in functions, in try/if blocks;
    not the ones under `if TYPE_CHECKING:` (their `else:` branch does run)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for node in child.orelse:
                yield from executed_imports(ast.Module(body=[node], type_ignores=[]))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from executed_imports(child)


def package_imports(name: str) -> set[str]:
    """The package's modules that module `name` imports (resolved relative imports;
    `from .x import y` counts as importing x.y when y is a module, else x)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in executed_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "modelfusion")
            continue
        if node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        if target.split(".")[0] != "modelfusion":
            continue
        submodules = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
        found |= submodules
        if len(submodules) < len(node.names):
            found.add(target)
    unknown = found - MODULES.keys()
    assert not unknown, f"{name} imports modules that do not exist: {sorted(unknown)}"
    return found - {name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


# ---------------------------------------------------------------- each module on its own

# One process imports the package's third-party dependencies (so each child does not pay
# for them again), then forks one child per module; each child starts with no modelfusion
# module loaded and imports just the one. llama_cpp is left to the child that needs it.
_RUNNER = r"""
import importlib, importlib.util, json, os, sys, traceback
modules, preload = json.loads(sys.stdin.read())
for dep in preload:
    try:
        importlib.import_module(dep)
    except Exception:
        pass
assert not [m for m in sys.modules if m.split(".")[0] == "modelfusion"]
results = {}
for name in modules:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            out = {"ok": True}
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            installed = bool(top) and importlib.util.find_spec(top) is not None
            out = {"ok": False, "missing": None if installed or top == "modelfusion" else top,
                   "error": traceback.format_exc()}
        except BaseException:
            out = {"ok": False, "missing": None, "error": traceback.format_exc()}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    results[name] = json.loads(data) if data else {"ok": False, "missing": None,
                                                   "error": "the child died"}
print(json.dumps(results))
"""


def third_party_imports(paths: list[Path], *, top_level_only: bool) -> set[str]:
    names: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else list(executed_imports(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    local = {p.name for p in ROOT.iterdir() if p.is_dir()} | {"modelfusion"}  # tests, bench
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


@pytest.fixture(scope="module")
def fresh_imports() -> dict[str, dict[str, object]]:
    modules = sorted(MODULES.keys() - NOT_IMPORTED)
    preload = sorted(third_party_imports(list(MODULES.values()), top_level_only=True)
                     - {"llama_cpp"})
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps([modules, preload]),
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin",
                               "MODELFUSION_HOME": str(ROOT / ".no-home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("name", sorted(MODULES.keys() - NOT_IMPORTED))
def test_every_module_imports_on_its_own(fresh_imports, name: str):
    result = fresh_imports[name]
    if not result["ok"] and result["missing"]:
        pytest.skip(f"{name} needs {result['missing']}, which is not installed here")
    assert result["ok"], f"`import {name}` in a fresh process failed:\n{result['error']}"


# ---------------------------------------------------------------- the import graph


def test_no_import_cycle_inside_the_package():
    graph = {name: package_imports(name) for name in MODULES}
    assert graph["modelfusion.providers.base"], "the graph misses relative imports"
    assert import_cycles(graph) == []


def test_only_the_cli_imports_typer():
    outside = [name for name, path in MODULES.items()
               if not name.startswith("modelfusion.cli")
               and "typer" in third_party_imports([path], top_level_only=False)]
    assert outside == []


def _calls(tree: ast.AST) -> set[str]:
    """`os.replace(...)` -> "os.replace", `mkstemp(...)` -> "mkstemp"."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                found.add(f"{f.value.id}.{f.attr}")
            elif isinstance(f, ast.Name):
                found.add(f.id)
    return found


TEMP_FILES = {"tempfile.mkstemp", "mkstemp", "tempfile.NamedTemporaryFile",
              "NamedTemporaryFile"}
RENAMES = {"os.replace", "os.rename", "shutil.move"}


def test_there_is_one_atomic_writer():
    """Only files.py makes a temp file and renames it over a target: every other module
    writes through atomic_write / atomic_open (a temp dir, as the sandbox uses, is fine)."""
    temp_files, renames = [], []
    for name, path in MODULES.items():
        calls = _calls(ast.parse(path.read_text(encoding="utf-8")))
        if calls & TEMP_FILES:
            temp_files.append(name)
        if calls & RENAMES:
            renames.append(name)
    assert temp_files == renames == ["modelfusion.files"], \
        "write files with modelfusion.files.atomic_write / atomic_open"
    from modelfusion import files

    assert callable(files.atomic_write) and callable(files.atomic_open)


def test_no_module_is_over_the_line_limit():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these (over {MAX_LINES} lines)"


# ---------------------------------------------------------------- what the tests need


def _requirement_name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_the_dev_extra_declares_what_the_tests_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_requirement_name(r)
                for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(third_party_imports(sorted((ROOT / "tests").glob("*.py")),
                                             top_level_only=False)):
        dists = {_requirement_name(d) for d in distributions.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert undeclared == {}, "add these to [project.optional-dependencies] dev"
