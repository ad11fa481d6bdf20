"""The package's folders are the pipeline: each stage imports only the stages below it.

The order, lowest first (DESIGN.md, README "Development"):

    programs < model < render < run < remote < check < tour < the top (cli, lab, pytest_plugin)

netlab.errors and the package root (`__version__`) are the foundation every
stage may import. netlab.programs imports nothing of netlab at all: its
modules are shipped as source to a remote python3. Every import counts, also
one inside a function. No root needed; nothing runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "netlab"
STAGES = ("programs", "model", "render", "run", "remote", "check", "tour")
TOP_MODULES = {"__init__", "__main__", "cli", "lab", "pytest_plugin", "errors"}
FOUNDATION = {"netlab", "netlab.errors"}
TOP = len(STAGES)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> int:
    """The rank of MODULE (a dotted name under netlab) in the pipeline."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else TOP


def imported(path: Path):
    """(line, the netlab module imported) for every import in PATH, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "netlab":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "netlab":
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; name the stage"
            for alias in node.names:  # `from netlab.run import journal` imports netlab.run.journal
                submodule = f"{node.module}.{alias.name}"
                where = PACKAGE.parent / Path(*submodule.split("."))
                is_module = where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()
                yield node.lineno, submodule if is_module else node.module


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_a_stage_imports_only_the_stages_below_it(path):
    own = module_name(path)
    for line, module in imported(path):
        assert stage_of(own) > 0, f"{path}:{line}: netlab.programs imports nothing of netlab ({module})"
        if module in FOUNDATION:
            continue
        assert stage_of(module) <= stage_of(own), (
            f"{path}:{line}: {own} ({_stage_name(own)}) imports {module} ({_stage_name(module)}), a higher stage")


def _stage_name(module: str) -> str:
    rank = stage_of(module)
    return STAGES[rank] if rank < TOP else "top"


def test_every_module_sits_in_a_stage():
    loose = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem not in TOP_MODULES)
    assert not loose, f"modules outside the stages' folders: {loose}; put each in the stage it belongs to"
    folders = sorted(path.name for path in PACKAGE.iterdir()
                     if path.is_dir() and any(path.glob("*.py")))
    assert folders == sorted(STAGES), "a new folder of modules is a new stage: add it to STAGES, in its place"


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_says_what_it_does_and_may_import(stage):
    init = PACKAGE / stage / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc, f"{init} has no docstring"
    assert "import" in doc, f"{init}'s docstring does not say what the stage may import"


def test_the_walk_sees_imports_inside_functions():
    """The walk sees an import inside a function, and ranks it above its importer."""
    path = PACKAGE / "render" / "plan.py"
    found = dict((module, line) for line, module in imported(path))
    assert "netlab.model.source" in found  # plan imports source inside make_plan
    ssh = dict((module, line) for line, module in imported(PACKAGE / "remote" / "ssh.py"))
    assert "netlab.programs" in ssh  # `from netlab import programs` is the stage, not the root
    assert stage_of("netlab.check.verify") > stage_of("netlab.render.plan")
    assert stage_of("netlab.cli") == TOP
