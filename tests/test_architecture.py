"""The import direction detectors <- rules <- streams, a pure core (STYLE.md practice 1), and inside streams/ the
concerns under the CLI with no import circle (practice 12)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"detectors": 0, "rules": 1, "streams": 2}
IO_MODULES = {"faust", "aiokafka", "kafka", "redis", "os", "socket", "requests", "httpx", "time", "random", "uuid"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_import_direction(package):
    for path in modules(package):
        for name in imports(path):
            if name in LAYERS:
                assert LAYERS[name] <= LAYERS[package], f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize("package", ["detectors", "rules"])
def test_core_does_no_io_and_reads_no_clock(package):
    for path in modules(package):
        bad = imports(path) & IO_MODULES
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: the core takes time and data as arguments"


PRODUCT = ("rules", "streams", "detectors", "dashboards")
TEST_ONLY = {"tests", "reference_engine", "engine_kit", "conftest"}


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_never_imports_the_tests_or_the_reference_engine(package):
    # tests/reference_engine is the frozen oracle of tests/test_differential.py: the product must not lean on it
    for path in modules(package):
        bad = imports(path) & TEST_ONLY
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: test code, never shipped"
        assert "reference_engine" not in path.read_text(), f"{path.relative_to(ROOT)} names reference_engine"


# --- inside streams/: concerns under the CLI ------------------------------------------------------------------------
#
# A unit is a subpackage of streams/ (live, offline, kafka, grafana, pager) or a top-level module. Each unit may
# import itself and the units listed here, nothing else; a unit missing from the table fails the test, so a new
# package or top-level module comes with a decision about where it sits.

SHARED = {"settings", "security", "metrics_server", "subcommand", "runtime"}  # used by every concern
ALLOWED: dict[str, set[str]] = {
    "streams": set(),  # streams/__init__.py
    # shared infrastructure
    "settings": set(),
    "security": {"settings"},
    "metrics_server": set(),  # /metrics, /healthz, /ready: served by the worker and by the pager
    "subcommand": {"settings"},  # the error line and settings of every subcommand, below the CLI
    "runtime": set(),  # process set-up of the long-running commands (the garbage collector)
    # the concerns
    "kafka": SHARED,
    "live": SHARED | {"kafka", "pager"},  # the worker can run the pager in its own process (ROLLGUARD_PAGER_IN_WORKER)
    "offline": SHARED | {"kafka"},
    "grafana": SHARED | {"kafka"},
    "pager": SHARED | {"kafka"},
    # the producer SDK (public path streams.emitter); `rollguard emit --scenario` generates with offline.scenario
    "emitter": SHARED | {"kafka", "offline"},
    # commands that span concerns, and the CLI on top (the only unit that may import every other one)
    "audit_cli": SHARED | {"kafka", "live", "offline"},
    "demo": SHARED | {"kafka", "live", "offline", "emitter"},
    "cli": SHARED | {"kafka", "live", "offline", "grafana", "pager", "emitter", "audit_cli", "demo"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


STREAMS = {_module_name(p): p for p in modules("streams")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def streams_imports(module: str, *, type_checking: bool = True) -> set[str]:
    """The streams modules ``module`` imports, at the top or inside functions; ``type_checking=False`` leaves out
    the imports under ``if TYPE_CHECKING:``, which never run (annotations are not evaluated) and so cannot make an
    import circle."""
    path = STREAMS[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    def target(name: str) -> str:
        # `from streams.offline import chart_render` imports a module; `from streams.pager import serve` a name
        while name not in STREAMS and "." in name:
            name = name.rpartition(".")[0]
        return name

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and not type_checking and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(target(a.name) for a in node.names if a.name.split(".")[0] == "streams")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x` in package a.b is a.b.x
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] == "streams":
                out.update(target(f"{base}.{a.name}") for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    out.discard(module)
    return out


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as a path that returns to its start, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_every_streams_unit_has_a_place_in_the_table():
    units = {_unit(m) for m in STREAMS}
    assert not units - set(ALLOWED), f"add {sorted(units - set(ALLOWED))} to ALLOWED: which units may it import?"
    assert not set(ALLOWED) - units, f"ALLOWED names units that no longer exist: {sorted(set(ALLOWED) - units)}"


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_streams_units_import_only_what_the_table_allows(unit):
    bad = []
    for module in sorted(m for m in STREAMS if _unit(m) == unit):
        for imported in sorted(streams_imports(module)):
            other = _unit(imported)
            if other != unit and other not in ALLOWED[unit]:
                bad.append(f"{STREAMS[module].relative_to(ROOT)} imports {imported}")
    assert not bad, f"{unit} may import only {sorted(ALLOWED[unit])}:\n" + "\n".join(bad)


def test_nothing_imports_the_cli():
    importers = sorted(m for m in STREAMS if _unit(m) != "cli" and "streams.cli" in streams_imports(m))
    assert not importers, f"the CLI is on top; these import it: {importers}"


def test_the_table_has_no_circle():
    assert _circle({unit: allowed - {unit} for unit, allowed in ALLOWED.items()}) is None


def test_no_import_circle_among_streams_modules():
    graph = {m: streams_imports(m, type_checking=False) for m in STREAMS}
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_circle_search_finds_a_circle():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
