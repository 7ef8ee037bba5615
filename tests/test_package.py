"""Properties of the package as a whole: no import circle, and no shared module names a defense."""

import ast
import re
from pathlib import Path

import pytest

from privbench.registry import list_defenses

ROOT = Path(__file__).parents[1] / "privbench"
SHARED = ["runner.py", "cli.py", "evaluation.py", "figures.py", "leaderboard.py", "config.py", "card.py",
          "registry.py", "engine", "attacks/base.py", "defenses/base.py", "collapse.py", "matched.py",
          "budget.py", "worst_case.py", "seeds.py", "plane.py", "sweep.py"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every privbench module -> the privbench modules it imports anywhere (top level, inside
    functions and under TYPE_CHECKING alike); ``from package import name`` counts as an import
    of the submodule when ``name`` is one."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module in modules:
                    subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                    plain = [a for a in node.names if f"{node.module}.{a.name}" not in modules]
                    edges |= subs | ({node.module} if plain else set())
        graph[name] = edges - {name}
    return graph


def test_the_import_graph_has_no_circle():
    graph, state, stack = imports(), {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    assert "privbench.defenses.mixup.defense" in graph
    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_package_inits_are_not_counted_as_circles_by_accident():
    graph = imports()
    assert "privbench.defenses.mixup.plots" in graph["privbench.defenses.mixup.study"]
    assert "privbench.defenses.mixup" not in graph["privbench.defenses.mixup.study"]


@pytest.mark.parametrize("shared", SHARED)
def test_no_shared_module_names_a_defense(shared):
    path = ROOT / shared
    text = "".join(p.read_text() for p in ([path] if path.is_file() else sorted(path.rglob("*.py"))))
    code = re.sub(r'"""[\s\S]*?"""|#[^\n]*', "", text)  # docstrings and comments may name examples
    for defense in set(list_defenses()) - {"none"}:  # "none", the baseline, is the default defense
        assert not re.search(rf"""["']{re.escape(defense)}["']""", code), f"{shared} names {defense!r}"
    assert "Mixup" not in code and "mixup" not in code.replace("privbench.defenses.mixup", "")


def test_loading_every_component_imports_neither_timm_nor_torchvision():
    """timm (and torchvision under it) does not import on a CPU build of torch: only
    ``learned-reid``'s timm backbone may import it, when asked for."""
    import subprocess
    import sys

    code = ("import sys; from privbench import cli; from privbench.registry import ATTACKS, DEFENSES, TASKS; "
            "[r.names() for r in (ATTACKS, DEFENSES, TASKS)]; "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
