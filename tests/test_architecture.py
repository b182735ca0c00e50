"""The shape of the code, checked: imports point one way, no cycle, no module over 600 lines.

Layers, bottom up (a package may import only from packages listed before it, and from itself):
ledger (the books, the chain client, the error tree's root and the bounded reader every outside byte goes
through), then node.protocol (the signed and sent values), node.toploc (proof math), node.http,
node.pipeline, node.worker, node.validator, node.orchestration, node.launch (processes assembled from
their parts) and node.cli on top. A function-level import of our own
code is allowed only where it keeps torch out of start-up (and says so in a comment) or in node.cli, whose
handlers import their area only when run, so that `stagewise --help` stays instant.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600

# package -> the packages of ours it may import (besides itself). Every package of the node may use the
# node's foundation: its settings (every STAGEWISE_* variable) and its CommandError.
FOUNDATION = {"ledger", "node.errors", "node.settings"}
ALLOWED: dict[str, set[str]] = {
    "ledger": set(),
    "node": set(),
    "node.errors": {"ledger"},
    "node.settings": {"ledger"},
    "node.protocol": {"ledger"},
    "node.tasks": set(),
    "node.toploc": FOUNDATION | {"node.protocol"},
    "node.http": FOUNDATION,
    "node.wallet": FOUNDATION | {"node.protocol"},
    "node.pipeline": FOUNDATION | {"node.protocol", "node.toploc", "node.http"},
    "node.worker": FOUNDATION | {"node.protocol", "node.toploc", "node.http", "node.pipeline", "node.wallet"},
    "node.validator": FOUNDATION | {"node.protocol", "node.toploc", "node.http", "node.pipeline", "node.wallet"},
    "node.orchestration": FOUNDATION | {"node.protocol", "node.toploc", "node.http", "node.pipeline", "node.validator",
                                        "node.tasks"},
    "node.launch": FOUNDATION | {"node.protocol", "node.toploc", "node.http", "node.pipeline", "node.wallet",
                                 "node.worker", "node.validator", "node.orchestration", "node.tasks"},
    "node.cli": {"ledger", "node"},
}
# the heavy modules (they import torch at module level): a function may import them to keep start-up light
HEAVY = ("node.pipeline.", "node.toploc.", "node.validator.defence", "node.validator.replay_models")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*ROOT.glob("node/**/*.py"), *ROOT.glob("ledger/**/*.py")]):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def area(module: str) -> str:
    """The package (or top-level module) of ours that `module` belongs to, as ALLOWED names them."""
    if module.startswith("ledger"):
        return "ledger"
    for name in sorted(ALLOWED, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return module


def project_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module imported, line, inside a function) for every import of our own code in `path`."""
    tree = ast.parse(path.read_text())
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in ("node", "ledger") and name in MODULES:
                found.append((name, node.lineno, id(node) in inside))
    return found


def test_every_import_points_down_the_layers():
    wrong = []
    for module, path in MODULES.items():
        source = area(module)
        if source not in ALLOWED:
            wrong.append(f"{module}: in no layer; add its package to ALLOWED")
            continue
        for target, line, _ in project_imports(path):
            if target in ("node", "ledger"):
                continue
            destination = area(target)
            if destination == source or destination in ALLOWED[source] or (
                "node" in ALLOWED[source] and destination != "node.cli" and target.startswith("node.")
            ):
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{line} ({source}) imports {target} ({destination})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_ledger_imports_nothing_from_the_node():
    offenders = [f"{path.relative_to(ROOT)}:{line} {target}" for module, path in MODULES.items() if module.startswith("ledger")
                 for target, line, _ in project_imports(path) if target.startswith("node")]
    assert not offenders


def test_no_import_cycle_among_modules():
    graph = {m: {t for t, _, inner in project_imports(p) if not inner and t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ is imported with any of its modules: count that edge too
    for m in MODULES:
        parent = m.rpartition(".")[0]
        if parent in MODULES:
            graph[m].add(parent)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_inside_functions_only_keep_torch_out_of_start_up():
    wrong = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for target, line, inner in project_imports(path):
            if not inner or module.startswith("node.cli"):
                continue
            if not target.startswith(HEAVY):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function; import it at the top")
                continue
            above = [lines[i].strip() for i in range(line - 2, max(-1, line - 6), -1)]
            said = "#" in lines[line - 1] or any(
                text.startswith("#") for text in _block_above(above)
            )
            if not said:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function without a comment why")
    assert not wrong, "\n".join(wrong)


def _block_above(lines_above: list[str]) -> list[str]:
    """The lines above an import that belong to the same import block, and the first line above that."""
    block = []
    for text in lines_above:
        block.append(text)
        if not text.startswith(("from ", "import ")) and text:
            break
    return block


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_600_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines; split it by responsibility"


def test_every_error_we_raise_on_purpose_derives_from_one_base():
    import importlib
    import inspect

    from ledger.errors import StagewiseError

    outside = []
    for module in MODULES:
        loaded = importlib.import_module(module)
        for name, value in vars(loaded).items():
            if (inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module
                    and not issubclass(value, StagewiseError)):
                outside.append(f"{module}.{name}")
    assert not outside, f"errors outside the tree rooted at StagewiseError: {outside}"
