"""The README's command list stays true: every `./dev rollguard ...` line parses with the real CLI parser."""

import re
import shlex
from pathlib import Path

import pytest

from streams.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCK = README.split("## Commands", 1)[1].split("```")[1]
LINES = [ln.split("  #")[0].strip() for ln in BLOCK.splitlines() if ln.strip().startswith("./dev rollguard")]


def _args(line: str) -> list[str]:
    line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # optional parts: take them
    line = line.replace("FEATURE", "email-reply").replace('"$GRAFANA_TOKEN"', "token").split(" > ")[0]
    return shlex.split(line)[2:]


def test_the_list_is_not_empty():
    assert len(LINES) >= 15


@pytest.mark.parametrize("line", LINES)
def test_readme_command_parses(line):
    try:
        build_parser().parse_args(_args(line))
    except SystemExit as e:
        pytest.fail(f"{line!r} does not parse (exit {e.code})")
