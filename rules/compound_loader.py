"""Loading a compound rule (``all:`` / ``any:``, CONTRACT §3 extension), with located errors like ``rules.loader``.

::

    - id: mobile-lags-while-desktop-leads
      tier: investigate
      all:                                  # or any:
        - {metric: acceptance_rate, where: {platform: mobile}, op: "<", threshold: 0.14}
        - {metric: acceptance_rate, where: {platform: desktop}, op: ">", threshold: 0.17}
      window: 1d
      every: 1h
      for: 2d
      min_samples: 200

A condition takes ``metric``, ``op``, ``threshold`` (a band with ``between`` / ``outside``), and optionally ``where``,
``min_samples`` and ``confidence``; everything else — window, clocks, ``for``, groups, tier, mode, summary,
runbook — is the rule's and shared. Each condition is loaded as a threshold rule made of the rule's shared keys and
its own, so it is checked exactly as a rule of its own would be (its errors point at its lines); the loader then
renames them ``<id>#1``, ``<id>#2``…
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rules.located_yaml import LocatedMap, describe, line_of

if TYPE_CHECKING:
    from rules.loader_scope import Scope

__all__ = ["COMBINE_KEYS", "CONDITION_KEYS", "MAX_CONDITIONS", "condition_items"]

COMBINE_KEYS = ("all", "any")
CONDITION_KEYS = ("metric", "op", "threshold", "where", "min_samples", "confidence")
MAX_CONDITIONS = 8
# rule keys that belong to each condition, and rule keys a compound rule does not take
_IN_CONDITIONS = ("metric", "op", "threshold", "where", "confidence")
_NOT_COMPOUND = ("drift", "baseline", "trailing_baseline", "across", "compare", "resolve_threshold")
_EXAMPLE = '[{metric: acceptance_rate, op: "<", threshold: 0.14}, {metric: error_rate, op: ">", threshold: 0.02}]'


def condition_items(scope: Scope, item: LocatedMap) -> tuple[str, list[LocatedMap | None]] | None:
    """``(all | any, items)``: for each condition, a rule item made of the rule's shared keys and the condition's own
    (None for a condition that is not a mapping), or None after reporting why there are none."""
    kinds = [k for k in COMBINE_KEYS if k in item]
    if len(kinds) > 1:
        scope.error(line_of(item, "any"), "any: give all or any, not both (a rule combines its conditions one way)")
        return None
    kind = kinds[0]
    for key in _IN_CONDITIONS:
        if key in item:
            message = f"goes into each condition of {kind}: (a compound rule has no {key} of its own)"
            scope.error(line_of(item, key), f"{key}: {message}")
    for key in _NOT_COMPOUND:
        if key in item:
            message = f"not on a compound rule ({kind}:); give that condition a rule of its own"
            scope.error(line_of(item, key), f"{key}: {message}")
    seq = item[kind]
    if not isinstance(seq, list) or not 2 <= len(seq) <= MAX_CONDITIONS:
        message = f"expected a list of 2 to {MAX_CONDITIONS} conditions such as {_EXAMPLE}, got {describe(seq)}"
        scope.error(line_of(item, kind), f"{kind}: {message}")
        return None
    shared = {k: v for k, v in item.items() if k not in COMBINE_KEYS + _IN_CONDITIONS + _NOT_COMPOUND + ("summary",)}
    out: list[LocatedMap | None] = []
    for i, cond in enumerate(seq):
        if not isinstance(cond, LocatedMap):
            message = f"expected a condition (a mapping with metric, op and threshold), got {describe(cond)}"
            scope.error(line_of(seq, i), f"{kind}[{i}]: {message}")
            out.append(None)
            continue
        scope.keys(cond, CONDITION_KEYS, f"{kind}[{i}]: ")  # a missing metric, op or threshold: as for any rule
        merged = LocatedMap({**shared, **{k: v for k, v in cond.items() if k in CONDITION_KEYS}})
        merged.line = cond.line
        merged.key_lines = {**{k: line_of(item, k) for k in shared}, **cond.key_lines}
        merged.duplicates = []  # reported on the condition itself
        out.append(merged)
    return kind, out
