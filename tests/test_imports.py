"""The shape of the package, read from the source with ``ast`` (nothing is imported):

* no import cycle among edge_agent's modules, counting imports inside functions too (a
  function-level import hides a cycle from Python, not from a reader); imports under
  ``if TYPE_CHECKING:`` are for annotations only and do not count;
* paho's ``Client`` is constructed only inside ``edge_agent/mqtt/``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edge_agent"


def module_name(path: Path) -> str:
    """``edge_agent/mqtt/client.py`` -> ``edge_agent.mqtt.client`` (a package is its name)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve_from(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = here.split(".")
    if not is_package:
        base.pop()  # a module's relative import starts at its package
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _dotted(child.test).endswith("TYPE_CHECKING"):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The project modules ``name`` imports anywhere in its file (not the packages above the
    module it names: Python runs those first, but that is not an arrow a person drew)."""
    out: Set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve_from(node, name, path.name == "__init__.py")
            # `from pkg import sub` imports the submodule; `from mod import func` the module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a module-less attribute path
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def import_graph() -> Dict[str, Set[str]]:
    mods = project_modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_type_checking_imports_do_not_count(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.a\n"
                   "def f():\n    import p.b\n")
    assert imports_of("p.m", mod, {"p.a", "p.b", "p.m"}) == {"p.b"}


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_relative_imports_resolve():
    src = "from . import a\nfrom .b import thing\nfrom .. import c\n"
    got = [_resolve_from(n, "p.sub.x", False) for n in ast.parse(src).body]
    assert got == ["p.sub", "p.sub.b", "p"]
    got = [_resolve_from(n, "p.sub", True) for n in ast.parse(src).body]
    assert got == ["p.sub", "p.sub.b", "p"]


def test_no_import_cycle_among_project_modules():
    graph = import_graph()
    assert len(graph) > 50, "the walk found too few modules"
    found = cycles(graph)
    assert not found, "import cycles (each list imports itself around): " + "; ".join(
        " <-> ".join(c) for c in found)


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a chain of attribute reads on a name, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id] + parts[::-1])


def _constructs_paho_client(tree: ast.AST) -> bool:
    """True when the module calls ``Client(...)`` from paho (``paho.Client``,
    ``mqtt.Client`` after ``import paho.mqtt.client as mqtt``, or an imported ``Client``)."""
    aliases: Set[str] = set()  # names bound to paho.mqtt.client
    direct: Set[str] = set()  # names bound to paho.mqtt.client.Client
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "paho.mqtt.client" and a.asname:
                    aliases.add(a.asname)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if node.module == "paho.mqtt" and a.name == "client":
                    aliases.add(a.asname or a.name)
                if node.module == "paho.mqtt.client" and a.name == "Client":
                    direct.add(a.asname or a.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in direct:
            return True
        if isinstance(f, ast.Attribute) and f.attr == "Client":
            if isinstance(f.value, ast.Name) and f.value.id in aliases:
                return True
            if _dotted(f.value) == "paho.mqtt.client":
                return True
    return False


def test_paho_client_detection():
    assert _constructs_paho_client(ast.parse(
        "import paho.mqtt.client as m\nc = m.Client(m.CallbackAPIVersion.VERSION2)\n"))
    assert _constructs_paho_client(ast.parse(
        "from paho.mqtt.client import Client as C\nc = C()\n"))
    assert not _constructs_paho_client(ast.parse(
        "import paho.mqtt.client as m\nx = m.MQTTv5\n"))


def test_only_mqtt_constructs_paho_clients():
    makers = [name for name, path in project_modules().items()
              if _constructs_paho_client(ast.parse(path.read_text(encoding="utf-8")))]
    assert makers, "the walk found no paho client at all"
    assert all(m.startswith("edge_agent.mqtt.") for m in makers), makers
    # and inside mqtt/, one factory: the connection, the requester and listen use it
    assert makers == ["edge_agent.mqtt.paho_client"], makers


def test_old_module_paths_are_the_moved_modules():
    """Every path in edge_agent.MOVED has no file of its own and imports as the module it names
    (one object: a patch through either name is seen through both)."""
    import importlib

    import edge_agent

    for old, new in edge_agent.MOVED.items():
        assert old not in project_modules(), f"{old} still has a file"
        assert new in project_modules(), f"{old} points to {new}, which does not exist"
        mod = importlib.import_module(old)
        assert mod is importlib.import_module(new)
        assert mod.__spec__.name == new  # still reads as what it is


def package_of(module: str) -> str:
    """The folder a module sits in (``edge_agent.mqtt.client`` -> ``edge_agent.mqtt``); a
    module at the root of edge_agent is a folder of its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph() -> Dict[str, Set[str]]:
    """Which folders import which. An import of a leaf module (one that imports nothing of
    ours, e.g. ``mqtt/topics.py``) draws no arrow: nothing can come back through it."""
    graph = import_graph()
    leaves = {m for m, deps in graph.items() if not deps}
    out: Dict[str, Set[str]] = {package_of(m): set() for m in graph}
    for mod, deps in graph.items():
        for dep in deps - leaves:
            a, b = package_of(mod), package_of(dep)
            if a != b and b != "edge_agent":  # the package itself: __version__, old paths
                out[a].add(b)
    return out


def test_packages_import_each_other_one_way():
    found = cycles(package_graph())
    assert not found, "folders that import each other: " + "; ".join(
        " <-> ".join(c) for c in found)


def test_the_root_of_the_package_holds_only_what_docs_architecture_justifies():
    """Every other module sits in a folder that says what it is part of (docs/architecture.md
    names the one module left at the root and why)."""
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "metrics.py"], root
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert "`metrics.py`" in doc
