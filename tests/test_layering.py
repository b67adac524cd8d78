"""The import directions of ../shared/DESIGN.md's layout, read from the source (every import
statement, those inside functions too), so that a wrong-way import fails here and not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


RULES = [
    # (files, packages they must not import, why)
    ("dvlad/runtime", ["dvlad.server", "dvlad.testing"], "a job runs without the daemon"),
    ("dvlad/lanes", ["dvlad.server", "dvlad.runtime", "dvlad.testing"], "the lanes are the engine, under the runtime"),
    ("dvlad/policies", ["dvlad.envs", "dvlad.lanes", "dvlad.server", "dvlad.runtime"],
     "models know nothing of simulators (the contract is dvlad.spaces)"),
    ("dvlad/envs", ["dvlad.policies", "dvlad.lanes", "dvlad.server", "dvlad.runtime"],
     "simulators know nothing of models"),
    ("dvlad/rl", ["dvlad.envs", "dvlad.policies", "dvlad.lanes", "dvlad.server", "dvlad.runtime"],
     "the losses are pure maths"),
    ("dvlad/store", ["dvlad.server", "dvlad.runtime", "dvlad.lanes", "dvlad.sched"], "the server acts on the store"),
    ("dvlad/gpu", ["dvlad.server", "dvlad.runtime", "dvlad.lanes"], "inventory and plans are read, not acted on"),
    ("dvlad/sharing", ["dvlad.server", "dvlad.lanes"], "a shared base is held for jobs, below the lanes"),
    ("sdk/dvla", ["dvlad"], "the client speaks HTTP only"),
    ("scripts", ["tests"], "scripts never import tests"),
]


@pytest.mark.parametrize(("folder", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_imports_point_one_way(folder, forbidden, why):
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for path in sources(folder)
             for name in sorted(imports_of(path)) if any(within(name, f) for f in forbidden)]
    assert not wrong, f"{why}:\n" + "\n".join(wrong)


def test_the_scheduler_imports_nothing_of_dvlad():
    """sched decides, the server acts: its decisions are pure functions of what it is given."""
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for path in sources("dvlad/sched")
             for name in sorted(imports_of(path)) if within(name, "dvlad") and not within(name, "dvlad.sched")]
    assert not wrong, "\n".join(wrong)


def test_the_rules_see_real_imports():
    """The reader finds imports inside functions too (a rule that reads nothing passes anything)."""
    assert "dvlad.envs" in imports_of(ROOT / "dvlad/lanes/env_workers.py")  # make_env, inside worker_main
    assert "dvlad.policies" in imports_of(ROOT / "dvlad/lanes/learner.py")
    assert all(sources(folder) for folder, _, _ in RULES)
