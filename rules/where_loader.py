"""Loading a rule's ``where:`` filter (CONTRACT §3 extension), with located errors like the rest of ``rules.loader``.

::

    where: {region: eu}                      # region = eu
    where: {region: [eu, uk]}                # region in (eu, uk)
    where: {plan: {not: free}}               # plan != free
    where: {plan: {not: [free, trial]}, model_version: m-2}

Keys are segment keys or the arm fields ``model_version``, ``prompt_version``, ``variant``; an event without the key
has the value "". Every matcher must admit an event for it to count toward the rule (its store, ``rules.windows``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rules.located_yaml import LocatedMap, describe, line_of
from rules.model import SEGMENT_KEY, Matcher

if TYPE_CHECKING:
    from rules.loader_scope import Scope

__all__ = ["load_where"]

_EXAMPLE = "{region: eu} or {plan: {not: [free, trial]}}"


def load_where(scope: Scope, item: LocatedMap) -> tuple[Matcher, ...] | None:
    """The matchers of ``item["where"]`` in key order (so equal filters share a store), or None after reporting."""
    w = item["where"]
    if not isinstance(w, LocatedMap) or not w:
        scope.error(line_of(item, "where"), f"where: expected a mapping such as {_EXAMPLE}, got {describe(w)}")
        return None
    scope.keys(w, tuple(w), "where: ")
    out, ok = [], not w.duplicates
    for key, spec in w.items():
        line = line_of(w, key)
        if not isinstance(key, str) or not SEGMENT_KEY.fullmatch(key):
            shown = repr(key) if isinstance(key, str) else describe(key)
            message = f"{shown} must be a segment key matching {SEGMENT_KEY.pattern} (or an arm field such as variant)"
            scope.error(line, f"where: {message}")
            ok = False
            continue
        negate = isinstance(spec, LocatedMap)
        if negate:
            if list(spec) != ["not"]:
                message = f"a mapping takes only 'not' ({{not: free}}), got {sorted(map(str, spec))}"
                scope.error(line, f"where.{key}: {message}")
                ok = False
                continue
            spec = spec["not"]
        values = _values(scope, spec, line, f"where.{key}")
        if values is None:
            ok = False
            continue
        out.append(Matcher(key=key, values=values, negate=negate))
    return tuple(sorted(out, key=lambda m: m.key)) if ok else None


def _values(scope: Scope, spec, line: int | None, path: str) -> tuple[str, ...] | None:
    items = spec if isinstance(spec, list) else [spec]
    if not items:
        scope.error(line, f"{path}: expected a value or a non-empty list of values, got an empty list")
        return None
    for x in items:
        if isinstance(x, bool) or not isinstance(x, str) or not x or len(x) > 128:
            hint = " (quote it: segment values are strings)" if isinstance(x, (int, float)) else ""
            scope.error(line, f"{path}: values are strings of 1 to 128 characters, got {describe(x)}{hint}")
            return None
    if len(set(items)) != len(items):
        scope.error(line, f"{path}: a value is listed twice")
        return None
    return tuple(sorted(items))
