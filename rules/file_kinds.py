"""Which YAML files are rule files and which are ``rollguard rules test`` cases files.

docs/rules-testing.md suggests keeping a pack's cases next to the pack, so one folder may hold both kinds. Folder
walks tell them apart: a cases file is named ``*.test.yaml`` / ``*.test.yml`` or has a top-level ``tests:`` key (a
rule file never has one: the rule loader refuses the key); a rule file has a top-level ``rules:`` key. The rule
loader skips cases files, and ``rules test`` skips rule files, so neither reads the other's files.

>>> is_cases_file("packs/safe-llm.test.yaml", "")
True
>>> is_cases_file("packs/checks.yaml", "rule_files: [safe-llm.yaml]\\ntests:\\n  - name: t\\n")
True
>>> is_cases_file("packs/safe-llm.yaml", "version: 1\\nname: safe-llm\\nrules: []\\n")
False
>>> is_rule_file("packs/safe-llm.yaml", "version: 1\\nname: safe-llm\\nrules: []\\n")
True
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["CASES_SUFFIXES", "is_cases_name", "has_tests_key", "is_cases_file", "is_rule_file"]

CASES_SUFFIXES = (".test.yaml", ".test.yml")


def _top_level_key(name: str) -> re.Pattern[str]:
    # Block style at column 0 (optionally quoted). Indented lines, comments and block scalars never match, and the
    # files rollguard documents are block style; a flow-style cases file can still be named *.test.yaml.
    return re.compile(rf"^(?:{name}|'{name}'|\"{name}\")[ \t]*:(?:[ \t]|$)", re.MULTILINE)


_TESTS_KEY = _top_level_key("tests")
_RULES_KEY = _top_level_key("rules")


def is_cases_name(path: str | Path) -> bool:
    """Whether the file name says ``rules test`` cases (``*.test.yaml`` or ``*.test.yml``)."""
    return Path(path).name.lower().endswith(CASES_SUFFIXES)


def has_tests_key(text: str) -> bool:
    """Whether the YAML ``text`` has a top-level ``tests:`` key (what makes a cases file)."""
    return _TESTS_KEY.search(text) is not None


def is_cases_file(path: str | Path, text: str) -> bool:
    """Whether ``path`` (with content ``text``) is a cases file: by its name or by a top-level ``tests:`` key."""
    return is_cases_name(path) or has_tests_key(text)


def is_rule_file(path: str | Path, text: str) -> bool:
    """Whether ``path`` is recognisably a rule file: a top-level ``rules:`` key and nothing of a cases file."""
    return not is_cases_file(path, text) and _RULES_KEY.search(text) is not None
