"""The pipeline's layout, checked statically: every dvc.yaml stage is one module under
`spotdiff.stages` (its command and its entry point), each stage's `deps` cover every first-party module it imports (transitively,
function-level imports included), and no first-party modules import each other in a circle.

A stage whose deps miss a module it runs is a correctness bug: DVC then does not re-run it when that
code changes. These tests make that impossible to merge.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "spotdiff"

# May be left out of a stage's deps: error types, atomic-write helpers, the params schema (DVC tracks
# the params themselves: every key is spelled in params.yaml, tests/test_params.py) and MLflow set-up.
EXEMPT = {"spotdiff", "spotdiff.errors", "spotdiff.fsutil", "spotdiff.params", "spotdiff.tracking"}
# The command-line layer (the CLI, the non-stage commands and the stage modules, each of which holds its
# stage's command) may defer imports (they keep `spotdiff --help` fast); only the CLI imports it.
CLI_LAYER = ("spotdiff.cli", "spotdiff.commands", "spotdiff.stages")


def module_files() -> dict[str, Path]:
    """Every first-party module: dotted name -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def _resolve(name: str) -> str | None:
    """The first-party module a dotted name refers to (a module, or a name inside one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """First-party modules `module` imports, at any level (top, function, class, try/except)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        for target in targets:
            if target == "spotdiff" or target.startswith("spotdiff."):
                resolved = _resolve(target)
                if resolved and resolved != module:
                    found.add(resolved)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def closure(start: str) -> set[str]:
    """`start` and every first-party module importing it runs: its imports, transitively, plus each
    imported module's parent packages (`import a.b.c` runs a/__init__.py and a/b/__init__.py)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parents = [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]
        todo.extend(p for p in parents if p in MODULES)
        todo.extend(GRAPH[m])
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


STAGES = stages()


def test_every_stage_is_one_module_with_its_command_and_entry_point():
    import typer

    from spotdiff.stages import STAGES as declared

    assert list(STAGES) == list(declared)
    for name, stage in STAGES.items():
        module = importlib.import_module(f"spotdiff.stages.{name}")
        assert callable(getattr(module, "run", None)), f"spotdiff.stages.{name} has no run()"
        assert "Reads:" in (module.__doc__ or "") and "Writes:" in module.__doc__, (
            f"spotdiff.stages.{name}: the docstring must list what it reads and writes")
        command_name = name.replace("_", "-")  # check_params runs `spotdiff check-params`
        assert stage["cmd"].split()[:2] == ["spotdiff", command_name], (
            f"dvc.yaml stage {name} must run `spotdiff {command_name}`, got {stage['cmd']!r}")
        # The stage's command lives in the stage module, and nowhere else.
        app = typer.Typer()
        module.register(app)
        assert [c.name for c in app.registered_commands] == [command_name]
        assert inspect.getmodule(app.registered_commands[0].callback) is module
        assert not (PACKAGE / "commands" / f"{name}.py").exists(), (
            f"spotdiff.commands.{name}: a stage's command belongs in spotdiff/stages/{name}.py")


def test_the_flow_runs_the_one_stage_list():
    source = (ROOT / "flows" / "pipeline.py").read_text()
    assert "from spotdiff.stages import STAGES" in source
    assert "STAGES: tuple" not in source and "STAGES = (" not in source


def test_only_the_cli_imports_the_command_line_layer():
    importers = sorted(m for m, imported in GRAPH.items() if not m.startswith(CLI_LAYER)
                       and any(i.startswith(CLI_LAYER) for i in imported))
    assert importers == [], f"library modules import the command-line layer: {importers}"


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_cover_the_code_it_runs(name):
    deps = [d for d in STAGES[name].get("deps", [])]
    needed = sorted(m for m in closure(f"spotdiff.stages.{name}") if m not in EXEMPT)
    missing = [MODULES[m].relative_to(ROOT).as_posix() for m in needed if not covered(MODULES[m], deps)]
    assert not missing, f"dvc.yaml stage {name}: deps miss first-party code it runs: {missing}"
    # ...and name nothing it does not run (a stale dep re-runs a stage for no reason).
    code_deps = [d for d in deps if d.startswith("src/")]
    unused = [d for d in code_deps
              if not any(covered(MODULES[m], [d]) for m in needed)]
    assert not unused, f"dvc.yaml stage {name}: deps name code it does not run: {unused}"


def test_the_closure_follows_function_level_imports_and_parent_packages():
    """The walker itself: a function-level import counts, and `spotdiff.a.b` brings `spotdiff.a`."""
    assert "spotdiff.models.cyws" in closure("spotdiff.stages.train")
    assert "spotdiff.training" in closure("spotdiff.stages.train")  # the package __init__
    # stage modules import the library only inside functions; the walker must still see it
    assert "spotdiff.training.lit" in GRAPH["spotdiff.stages.train"]


def _cycles() -> list[list[str]]:
    """Every import circle among first-party modules (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
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
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles() == []


def test_no_deferred_first_party_imports_outside_the_cli_layer():
    """A function-level import of our own code hides a circle or an ordering problem; only the CLI
    layer defers imports (of anything), to keep `spotdiff --help` fast."""
    offenders = []
    for module, path in MODULES.items():
        if module.startswith(CLI_LAYER):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("spotdiff"):
                        offenders.append(f"{path.relative_to(ROOT)}:{inner.lineno} {inner.module}")
                    elif isinstance(inner, ast.Import) and any(a.name.startswith("spotdiff") for a in inner.names):
                        offenders.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert not offenders, "function-level imports of spotdiff modules outside the CLI layer:\n" + "\n".join(
        sorted(set(offenders)))
