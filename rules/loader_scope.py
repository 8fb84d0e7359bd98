"""The typed readers of the rule loader: :class:`Scope` reads one key of a located mapping (a duration, a number, a
choice, a list of names, a band…) and reports what is wrong with it, located, to the file's checker
(``rules.loader``); :class:`RuleError` is one such report. The block loaders (``compare_loader``, ``where_loader``,
``drift_loader``) read through the same scope, so every message has the same shape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from rules.durations import DurationError, parse_duration
from rules.located_yaml import LocatedMap, describe, did_you_mean, line_of
from rules.metric_names import MetricNameError, parse_metric
from rules.model import SEGMENT_KEY, Mode, Op, Tier

__all__ = ["RuleError", "Scope", "DURATION_KEYS", "RULE_ID", "MAX_MIN_SAMPLES"]

DURATION_KEYS = ("every", "window", "for", "keep_firing_for", "baseline", "trailing_baseline")
RULE_ID = re.compile(r"[a-z0-9_-]{1,128}")
MAX_MIN_SAMPLES = 1_000_000_000


@dataclass(frozen=True)
class RuleError:
    """One problem in a rule file. ``line`` is 1-based; ``ruleset``/``rule_id`` are None when unknown.

    >>> print(RuleError("r.yaml", 12, "x", "y", "unknown key 'treshold'"))
    r.yaml:12: ruleset 'x' rule 'y': unknown key 'treshold'
    """

    file: str
    line: int | None
    ruleset: str | None
    rule_id: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        scope = f" ruleset {self.ruleset!r}" if self.ruleset else ""
        scope += f" rule {self.rule_id!r}" if self.rule_id else ""
        return f"{where}:{scope}: {self.message}" if scope else f"{where}: {self.message}"


class Scope:
    """What errors are attributed to (ruleset, rule); its typed readers report into the file's checker."""

    def __init__(self, checker, ruleset: str | None = None, rule_id: str | None = None) -> None:
        self.checker, self.ruleset, self.rule_id = checker, ruleset, rule_id

    def error(self, line: int | None, message: str) -> None:
        self.checker.errors.append(RuleError(self.checker.source, line, self.ruleset, self.rule_id, message))

    def keys(self, m: LocatedMap, allowed: Sequence[str], where: str, misplaced: dict[str, str] | None = None) -> None:
        """Report duplicate and unknown keys of ``m``; ``where`` prefixes messages (``"defaults: "``)."""
        self.checker.visited.add(id(m))
        for key, line, first in m.duplicates:
            self.error(line, f"{where}duplicate key {key!r} (first on line {first})")
        for key in m:
            if key in allowed:
                continue
            if misplaced and key in misplaced:
                self.error(line_of(m, key), f"{where}key {key!r} {misplaced[key]}")
            else:
                self.error(line_of(m, key), f"{where}unknown key {key!r}{did_you_mean(key, allowed)}")

    def string(self, m: LocatedMap, key: str, path: str, pattern: re.Pattern[str] | None = None) -> str | None:
        value = m[key]
        if not isinstance(value, str):
            self.error(line_of(m, key), f"{path}: expected a string, got {describe(value)}")
        elif pattern is not None and not pattern.fullmatch(value):
            self.error(line_of(m, key), f"{path}: {value!r} must match {pattern.pattern}")
        else:
            return value
        return None

    def choice(self, m: LocatedMap, key: str, path: str, options: Sequence[str]) -> str | None:
        value = m[key]
        if isinstance(value, str) and value in options:
            return value
        hint = did_you_mean(value, options) if isinstance(value, str) else ""
        if key == "op" and value in ("", None):
            hint = ' (quote it, e.g. op: ">": an unquoted > starts a YAML block scalar)'
        self.error(line_of(m, key), f"{path}: must be one of {', '.join(options)}; got {describe(value)}{hint}")
        return None

    def duration(self, m: LocatedMap, key: str, path: str) -> int | None:
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            message = f"expected a duration such as '30s', '5m' or '1h', got {describe(value)}"
            self.error(line_of(m, key), f"{path}: {message}")
            return None
        try:
            ms = parse_duration(str(value))
        except DurationError as exc:
            self.error(line_of(m, key), f"{path}: {exc}")
            return None
        if ms == 0 and key in ("every", "window", "baseline", "trailing_baseline", "max_starved"):
            self.error(line_of(m, key), f"{path}: must be longer than 0s" + (" (or off)" if key == "max_starved" else ""))
            return None
        return ms

    def number(self, m: LocatedMap, key: str, path: str) -> float | None:
        value = m[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e300 else math.inf
            if math.isfinite(number):
                return number
        self.error(line_of(m, key), f"{path}: expected a finite number, got {describe(value)}")
        return None

    def count(self, m: LocatedMap, key: str, path: str) -> int | None:
        value = m[key]
        if type(value) is int and 0 <= value <= MAX_MIN_SAMPLES:
            return value
        message = f"expected a whole number from 0 to {MAX_MIN_SAMPLES}, got {describe(value)}"
        self.error(line_of(m, key), f"{path}: {message}")
        return None

    def names(
        self, m: LocatedMap, key: str, path: str, pattern: re.Pattern[str], example: str, empty_ok: bool = False
    ) -> tuple[str, ...] | None:
        """A list of distinct strings matching ``pattern`` (non-empty unless ``empty_ok``)."""
        value = m[key]
        if not isinstance(value, list) or not (value or empty_ok):
            size = "a" if empty_ok else "a non-empty"
            self.error(line_of(m, key), f"{path}: expected {size} list such as {example}, got {describe(value)}")
            return None
        ok = True
        for index, item in enumerate(value):
            if not isinstance(item, str) or not pattern.fullmatch(item):
                shown = repr(item) if isinstance(item, str) else describe(item)
                message = f"{shown} must be a string matching {pattern.pattern}"
                self.error(line_of(value, index), f"{path}[{index}]: {message}")
                ok = False
            elif item in value[:index]:
                self.error(line_of(value, index), f"{path}[{index}]: {item!r} is listed twice")
                ok = False
        return tuple(value) if ok else None

    def band(self, m: LocatedMap, key: str, path: str) -> tuple[float, float] | None:
        """``[low, high]``: two finite numbers, low below high."""
        value = m[key]
        ok = len(value) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                     for x in value)  # fmt: skip
        if not ok:
            message = f"a band is two finite numbers [low, high] such as [0.15, 0.165], got {describe(value)}"
            self.error(line_of(m, key), f"{path}: {message}")
            return None
        lo, hi = float(value[0]), float(value[1])
        if not lo < hi:
            self.error(line_of(m, key), f"{path}: the band's low line must be below its high line, got [{lo:g}, {hi:g}]")
            return None
        return lo, hi

    def field(self, m: LocatedMap, key: str, path: str) -> Any:
        """The validated value of a rule or defaults key (durations in ms), or None after reporting why not."""
        if key in DURATION_KEYS:
            return self.duration(m, key, path)
        if key == "max_starved":  # a duration, or off (YAML reads a bare off as false)
            return 0 if m[key] is False or m[key] == "off" else self.duration(m, key, path)
        if key == "min_samples":
            return self.count(m, key, path)
        if key == "threshold" and isinstance(m[key], list):  # a band, for op between / outside
            return self.band(m, key, path)
        if key in ("threshold", "confidence", "resolve_threshold"):
            value = self.number(m, key, path)
            if key == "confidence" and value is not None and not 0 < value < 1:
                self.error(line_of(m, key), f"{path}: must be strictly between 0 and 1 (e.g. 0.95), got {value:g}")
                return None
            return value
        if key in ("mode", "tier", "op"):
            return self.choice(m, key, path, get_args({"mode": Mode, "tier": Tier, "op": Op}[key]))
        if key == "group_by":
            return self.names(m, key, path, SEGMENT_KEY, "[platform]", empty_ok=True)
        value = self.string(m, key, path, {"id": RULE_ID, "across": SEGMENT_KEY}.get(key))
        if value is not None and key == "runbook" and not value.strip():
            self.error(line_of(m, key), f"{path}: must not be empty (omit it instead)")
            return None
        if value is not None and key == "metric":
            try:
                parse_metric(value)
            except MetricNameError as exc:
                self.error(line_of(m, key), f"metric: {exc}")
                return None
        return value
