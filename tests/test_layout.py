"""The package layout is the architecture: who may import whom, no import circles, one file per stage.

Read from the code's own import statements (every `import` and `from ... import`, inside functions too),
so a lazy import cannot hide a circle or a layer crossing. The layers, bottom up (README, Architecture):
core -> data -> {text, engines, parsers, models} -> reports -> stages / ops -> commands -> cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"

# What each folder of pipeline/ may import from the others (its own folder is always allowed). `pipeline`
# itself (`__version__`) is open to all.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "text": {"core"},
    "engines": {"core"},
    "models": set(),
    "parsers": {"core", "data"},
    "reports": {"core", "data", "text"},
    "stages": {"core", "data", "text", "engines", "parsers", "models", "reports"},
    "ops": {"core", "data", "text", "engines", "parsers", "models", "reports"},
    "commands": {"core", "data", "text", "engines", "parsers", "models", "reports", "stages", "ops"},
    "cli": {"core", "data", "text", "engines", "parsers", "models", "reports", "stages", "ops", "commands"},
    "__main__": {"cli"},
}
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every `pipeline...` module that `path` imports, at any depth of the file (a `from pkg import mod`
    names the module `pkg.mod` when such a module exists)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "pipeline":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(f): f for f in FILES}
GRAPH = {name: imports_of(f) - {name} for name, f in MODULES.items()}


def folder(module: str) -> str:
    """`pipeline.stages.shard` -> `stages`; `pipeline.cli` -> `cli`; `pipeline` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_graph_is_read_from_the_code():
    # Guards the test itself: known imports must be seen, lazy ones included.
    assert "pipeline.core.ledger" in GRAPH["pipeline.core.runner"]
    assert "pipeline.reports.caption_report" in GRAPH["pipeline.stages.refine"]  # imported inside finalize
    assert "pipeline.commands" in GRAPH["pipeline.cli"]  # `import pipeline.commands` inside a function


def test_no_import_circles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH.get(v, ())):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if folder(m) in ALLOWED))
def test_each_folder_imports_only_the_layers_below_it(module):
    own = folder(module)
    crossing = sorted(m for m in GRAPH[module] if folder(m) not in {own, ""} | ALLOWED[own])
    assert not crossing, f"{module} ({own}/) may import {sorted(ALLOWED[own]) or 'nothing else'}, not {crossing}"


def test_a_stage_never_imports_another_stage():
    for module, deps in GRAPH.items():
        if folder(module) == "stages" and module != "pipeline.stages":
            others = sorted(d for d in deps if folder(d) == "stages")
            assert not others, f"{module} imports the stage(s) {others}; move what they share into core/ or data/"


def test_the_top_level_holds_only_the_entry_points():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in TOP_LEVEL)
    assert not loose, f"pipeline/ {loose}: put each module in the folder of its role (README, Architecture)"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(ALLOWED) - {"cli", "__main__"}, folders


def test_every_stage_file_is_registered_and_every_registered_stage_has_its_file():
    from pipeline.core.registry import REGISTRY

    files = {p.stem for p in (PACKAGE / "stages").glob("*.py") if p.name != "__init__.py"}
    specs = {s.module for s in REGISTRY.values() if s.module.startswith("pipeline.")}
    assert specs == {f"pipeline.stages.{f}" for f in files}


def test_the_trainer_uses_only_the_data_contracts_of_the_pipeline():
    # evaluate parses generated faces with the parse stage's own parser; scoring gets it as a callable
    extra = {"evaluate.py": {"parsers"}}
    for path in sorted((ROOT / "train").rglob("*.py")):
        used = {folder(m) for m in imports_of(path)}
        allowed = {"data"} | extra.get(path.name, set())
        assert used <= allowed, f"{path.relative_to(ROOT)} imports pipeline/{sorted(used - allowed)}"


def test_every_module_says_what_it_is():
    missing = [str(f.relative_to(ROOT)) for f in FILES
               if not ast.get_docstring(ast.parse(f.read_text())) and f.stat().st_size > 0]
    assert not missing, f"modules without a docstring: {missing}"
