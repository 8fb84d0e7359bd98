"""The parsed form of a rule unit-test cases file (``rollguard rules test``), as :mod:`rules.case_loader` builds it.

A :class:`CasesFile` holds the rule sets its ``rule_files`` name and its tests; a :class:`Case` holds one test's
inputs (validated events and controls, in event-time order), its expectations and the engine settings it runs with.
Offsets (``at``, ``from``, ``to``) are milliseconds after the file's ``start``. The format is ``docs/rules-testing.md``.

>>> x = Expectation(None, "pii-leak", frozenset({"firing"}), at=240_000, command="rollback")
>>> x.describe()
'at 4m: pii-leak firing (command rollback)'
>>> x.matches({"rule_id": "pii-leak", "transition": "firing"}, 240_000)
True
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from rules.durations import format_duration
from rules.engine import EngineConfig
from rules.events import Control, Event
from rules.exceptions import RollguardError
from rules.loader import RuleError
from rules.model import RuleSet
from rules.outputs import STARVATION_TRANSITIONS
from rules.promotion import PROMOTE, SIGNOFF_TRANSITIONS, VERDICTS

__all__ = ["CaseError", "CasesInvalid", "Expectation", "Case", "CasesFile", "format_offset", "DEFAULT_START",
           "TRANSITIONS", "FIRES", "COMMANDS", "STARVATION", "PROMOTION"]  # fmt: skip

DEFAULT_START = "2026-11-02T00:00:00Z"  # a Monday, midnight UTC: day-scale instants fall on day boundaries
# decisions about a rule's data, not its condition (rules.starvation): `exact` checks them only in a case that
# expects one
STARVATION = frozenset(STARVATION_TRANSITIONS)
# the decisions of a rule set's promotion block (rules.promotion, rule ``promotion``): `exact` checks them only in a case
# that expects one, too
PROMOTION = frozenset(VERDICTS + SIGNOFF_TRANSITIONS)
TRANSITIONS = ("pending", "firing", "resolved", "cleared", "inhibited", "held", *STARVATION_TRANSITIONS, *VERDICTS,
               *SIGNOFF_TRANSITIONS)  # fmt: skip
FIRES = frozenset({"firing", "held", "inhibited"})  # the condition held for `for`: what expect_no forbids by default
COMMANDS = {"rollback": "rollback", "pause": "pause_rollout", "pause_rollout": "pause_rollout", "promote": PROMOTE,
            PROMOTE: PROMOTE, "shadow_only": "shadow_only", "revert_model": "revert_model", "none": "none"}  # fmt: skip


@dataclass(frozen=True)
class CaseError:
    """One problem in a cases file; ``line`` is 1-based or None, ``test`` the test's name when known."""

    file: str
    line: int | None
    test: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: test {self.test!r}: {self.message}" if self.test else f"{where}: {self.message}"


class CasesInvalid(RollguardError):
    """A cases file (or a rule file it names) is invalid; ``errors`` holds every problem. Fix them all and rerun."""

    def __init__(self, errors: list[CaseError | RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(map(str, errors)))


@dataclass(frozen=True)
class Expectation:
    """A decision that must (``expect``) or must not (``expect_no``) happen, at offset ``at`` from the file's ``start``
    or within the span ``[lo, hi)`` (either end open when None). ``expect_no`` may glob ``rule``."""

    line: int | None
    rule: str
    transitions: frozenset[str]
    at: int | None = None
    lo: int | None = None
    hi: int | None = None
    filters: tuple[tuple[str, Any], ...] = ()  # decision fields that must be equal: ruleset, tier, phase, group...
    command: str | None = None
    page: str | None = None

    def matches(self, d: dict, t: int) -> bool:
        """Whether decision ``d`` (made at offset ``t``) is one this expectation talks about."""
        if not fnmatch.fnmatchcase(d["rule_id"], self.rule) or d["transition"] not in self.transitions:
            return False
        if self.at is not None and t != self.at:
            return False
        if (self.lo is not None and t < self.lo) or (self.hi is not None and t >= self.hi):
            return False
        return all(d.get(k) == v for k, v in self.filters)

    def describe(self) -> str:
        when = f"at {format_offset(self.at)}" if self.at is not None else _span(self.lo, self.hi)
        extra = [f"{k} {v}" for k, v in self.filters]
        extra += [f"command {self.command}"] * bool(self.command) + [f"page {self.page}"] * bool(self.page)
        return f"{when}: {self.rule} {'|'.join(sorted(self.transitions))}" + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class Case:
    name: str
    line: int | None
    inputs: list[Event | Control]
    expect: list[Expectation]
    expect_no: list[Expectation]
    exact: str | None  # None | "listed" | "all"
    config: EngineConfig


@dataclass
class CasesFile:
    path: str
    rulesets: tuple[RuleSet, ...]
    start_ms: int
    cases: list[Case] = field(default_factory=list)


def format_offset(ms: int | None) -> str:
    """An offset from the file's start as a duration (``1d4h``); a negative one with a minus sign."""
    return "-" + format_duration(-ms) if ms is not None and ms < 0 else format_duration(ms or 0)


def _span(lo: int | None, hi: int | None) -> str:
    if lo is None and hi is None:
        return "during the test"
    return f"from {format_offset(lo or 0)}" + (f" to {format_offset(hi)}" if hi is not None else "")
