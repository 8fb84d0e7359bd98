"""Write ``deploy/constraints.txt``: the exact versions of rollguard's runtime dependencies in this environment.

``./dev python deploy/lock.py > deploy/constraints.txt`` after changing ``[project].dependencies`` (and after
running the tests against the new versions). The image build installs the rollguard wheel with ``pip install
--constraint deploy/constraints.txt``, so what runs in production is what was tested, not whatever was released
since. Only the dependency closure of the installed ``rollguard`` distribution is written (test tools and anything
else in the virtualenv are left out); ``setuptools`` too, which the image's virtualenv brings itself.
"""

from __future__ import annotations

import sys
from importlib.metadata import distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# Exact versions of rollguard's runtime dependencies (the closure of pyproject.toml [project].dependencies on
# Linux / CPython 3.11), as installed and tested in the development environment. deploy/Dockerfile installs the
# wheel with `pip install --constraint` this file, so an image build never picks up an untested release.
# Regenerate after changing dependencies: ./dev python deploy/lock.py > deploy/constraints.txt"""
SKIP = {"setuptools", "pip", "wheel"}


def closure(root: str = "rollguard") -> dict[str, str]:
    """Canonical name -> installed version of every runtime requirement reachable from ``root`` (extras off)."""
    env = {"extra": ""}
    versions: dict[str, str] = {}
    todo = [Requirement(r) for r in distribution(root).requires or ()]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in versions:
            continue
        dist = distribution(req.name)
        versions[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or ()]
    return versions


def main() -> int:
    print(HEADER)
    for name, version in sorted(closure().items()):
        if name not in SKIP:
            print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
