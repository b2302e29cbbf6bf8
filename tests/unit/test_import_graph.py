"""graylb's import graph: no cycles, every module importable on its own, and the httpx half
installable without gRPC.

Imports flow one way (README "Code map"): transports -> balancer -> routing / picking -> rules /
discovery -> instance, versioning, errors; a registry package (consul, nacos) builds on the
neutral packages and is never imported by them.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import graylb

ROOT = Path(graylb.__file__).resolve().parent
MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages([str(ROOT)], prefix="graylb.")
    if not name.startswith("graylb._proto")  # generated stubs
)
# The neutral core must not know any registry.
NEUTRAL = (
    "graylb.balancer",
    "graylb.call",
    "graylb.routing",
    "graylb.picking",
    "graylb.rules",
    "graylb.discovery",
    "graylb.propagation",
    "graylb.transports",
    "graylb.admin",
    "graylb.telemetry",
    "graylb.watching",
)


def _path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return Path(spec.origin)


def _is_package(module: str) -> bool:
    return _path(module).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_imports(module: str) -> set[str]:
    """graylb modules ``module`` imports, wherever the import statement stands — at the top, in
    a try / if, or inside a function (a late import that dodges a cycle is still a cycle) —
    except under ``if TYPE_CHECKING``. ``from pkg import name`` counts as importing
    ``pkg.name`` when that is a module."""
    tree = ast.parse(_path(module).read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES or m == "graylb"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def test_the_package_import_graph_has_no_cycle() -> None:
    # graylb/__init__ is the public facade: it imports everything and nothing imports it.
    graph = {m: module_imports(m) - {"graylb"} for m in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    importers_of_facade = sorted(m for m in MODULES if "graylb" in module_imports(m))
    assert importers_of_facade == [], f"modules importing the graylb facade: {importers_of_facade}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_neutral_core_imports_no_registry() -> None:
    offenders = {
        m: sorted(i for i in module_imports(m) if i.startswith(("graylb.consul", "graylb.nacos")))
        for m in MODULES
        if m.startswith(NEUTRAL)
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    def run(module: str) -> tuple[str, str]:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
        return module, r.stderr.strip().splitlines()[-1] if r.returncode else ""

    with ThreadPoolExecutor(4) as pool:
        failures = {m: err for m, err in pool.map(run, MODULES) if err}
    assert failures == {}


HTTPX_ONLY = textwrap.dedent(
    """
    import sys
    sys.modules["grpc"] = None          # as if graylb[grpc] were not installed
    sys.modules["google.protobuf"] = None
    import httpx, graylb, graylb.testing, graylb.testing.pytest_plugin, graylb.cli
    assert graylb.HAS_GRPC is False and not hasattr(graylb, "GrayChannel")
    from graylb.testing import serve_wsgi
    server = serve_wsgi(lambda environ, start: (start("200 OK", []), [b"v2"])[1])
    registry = graylb.StaticDiscovery({"orders": [{"host": server.host, "port": server.port, "version": "v2"}]})
    with httpx.Client(transport=graylb.GrayTransport(graylb.Balancer(registry, services=["orders"]))) as client:
        print(client.get("http://orders/").text)
    server.stop()
    """
)


def test_the_httpx_half_works_without_grpc_installed() -> None:
    r = subprocess.run([sys.executable, "-c", HTTPX_ONLY], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "v2"


@pytest.mark.parametrize("module", ["graylb.transports.grpc", "graylb.transports.grpc_interceptors"])
def test_grpc_modules_need_grpc(module: str) -> None:
    assert "grpc" in {name.split(".")[0] for name in _top_level_imports(module)}


def _top_level_imports(module: str) -> set[str]:
    tree = ast.parse(_path(module).read_text(encoding="utf-8"))
    return {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
