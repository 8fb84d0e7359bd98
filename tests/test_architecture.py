"""The import direction detectors <- rules <- streams, and a pure core (STYLE.md practice 1)."""

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
