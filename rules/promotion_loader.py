"""Loading a rule set's ``promotion:`` block (CONTRACT §3 extension), with located errors like ``rules.loader``.

::

    phases: [closed_beta]
    promotion:
      to: regional_expansion               # the phase a ready verdict promotes to
      gates: [gate-acceptance-15pct, gate-nps-40]   # rules of this set: a gate passes while its condition is false
      hold_for: 1d                         # every gate passes this long before ready (default 0)
      min_exposure: {time: 14d, interactions: 5000, users: 200}
      signoffs: [pm, engineering, legal]   # roles recorded with `rollguard signoff`
      every: 1h                            # default: the least common multiple of the gates' every
      auto: false                          # true: a ready verdict sends a signed promote_rollout command

The rule set must name exactly one phase (the one promoted from). Gates are threshold rules of the same set (not drift
rules, not ``.srm`` companions); ``every`` must be a multiple of each gate's ``every``, so that every gate is evaluated
at every promotion instant.
"""

from __future__ import annotations

import math
from rules.durations import format_duration
from rules.loader_scope import RULE_ID, Scope
from rules.located_yaml import LocatedMap, describe, line_of
from rules.model import PHASE_NAME, ROLE_NAME, Promotion, Rule

__all__ = ["load_promotion", "PROMOTION_KEYS", "PROMOTION_RULE_ID"]

PROMOTION_KEYS = ("to", "gates", "hold_for", "min_exposure", "signoffs", "every", "auto")
_EXPOSURE_KEYS = ("time", "interactions", "users")
# the rule_id of promotion and sign-off decisions (a rule of a set with a promotion block may not take it)
PROMOTION_RULE_ID = "promotion"


def load_promotion(scope: Scope, doc: LocatedMap, phases: tuple[str, ...] | None,
                   rules: tuple[Rule, ...]) -> Promotion | None:  # fmt: skip
    """The validated ``promotion`` block of ``doc``, or None after reporting every problem."""
    block = doc["promotion"]
    line = line_of(doc, "promotion")
    if not isinstance(block, LocatedMap):
        scope.error(line, f"promotion: expected a mapping with to, gates, ... got {describe(block)}")
        return None
    before = len(scope.checker.errors)
    scope.keys(block, PROMOTION_KEYS, "promotion: ")
    for key in ("to", "gates"):
        if key not in block:
            scope.error(block.line, f"promotion: missing required key {key!r}")
    if phases is None or len(phases) != 1:
        scope.error(line, "promotion: the rule set must list exactly one phase, the one it promotes from "
                          "(phases: [closed_beta])")  # fmt: skip
    to = scope.string(block, "to", "promotion.to", PHASE_NAME) if "to" in block else None
    if to is not None and phases and to in phases:
        scope.error(line_of(block, "to"), f"promotion.to: {to!r} is the phase promoted from; name the next one")
    gates = scope.names(block, "gates", "promotion.gates", RULE_ID, "[gate-acceptance]") if "gates" in block else None
    by_id = {r.id: r for r in rules}
    for r in rules:
        if r.id == PROMOTION_RULE_ID:
            scope.error(r.line, f"rule id {PROMOTION_RULE_ID!r} is taken by the rule set's promotion decisions")
    everys = []
    for i, gate in enumerate(gates or ()):
        r = by_id.get(gate)
        where = f"promotion.gates[{i}]"
        if r is None:
            known = ", ".join(x.id for x in rules if x.drift is None and x.srm_of is None) or "none"
            scope.error(line_of(block["gates"], i), f"{where}: no threshold rule {gate!r} in this rule set ({known})")
        elif r.drift is not None or r.srm_of is not None:
            kind = "a drift rule" if r.drift is not None else "a sample-ratio companion"
            scope.error(line_of(block["gates"], i), f"{where}: {gate!r} is {kind}; a gate is a threshold rule")
        else:
            everys.append(r.every_ms)
    hold = _duration(scope, block, "hold_for")
    every = _duration(scope, block, "every")
    if every is not None and every == 0:
        scope.error(line_of(block, "every"), "promotion.every: must be longer than 0s")
    elif every is not None:
        for ms in sorted(set(everys)):
            if every % ms:
                scope.error(line_of(block, "every"), f"promotion.every: {format_duration(every)} is not a multiple of "
                            f"a gate's every ({format_duration(ms)}): every gate must be evaluated at every "
                            "promotion instant")  # fmt: skip
                break
    elif everys:
        every = math.lcm(*everys)
    time = interactions = users = 0
    if "min_exposure" in block:
        exp = block["min_exposure"]
        if not isinstance(exp, LocatedMap) or not exp:
            scope.error(line_of(block, "min_exposure"), "promotion.min_exposure: expected a mapping such as "
                        f"{{time: 14d, interactions: 5000, users: 200}}, got {describe(exp)}")  # fmt: skip
        else:
            scope.keys(exp, _EXPOSURE_KEYS, "promotion.min_exposure: ")
            time = _duration(scope, exp, "time", "promotion.min_exposure.time") or 0
            if "interactions" in exp:
                interactions = scope.count(exp, "interactions", "promotion.min_exposure.interactions") or 0
            if "users" in exp:
                users = scope.count(exp, "users", "promotion.min_exposure.users") or 0
            if (interactions or users) and not time:
                scope.error(line_of(block, "min_exposure"), "promotion.min_exposure: interactions and users are "
                            "counted over the trailing time; give time too (time: 14d)")  # fmt: skip
    signoffs = ()
    if "signoffs" in block:
        signoffs = scope.names(block, "signoffs", "promotion.signoffs", ROLE_NAME, "[pm, engineering, legal]",
                               empty_ok=True)  # fmt: skip
    auto = block.get("auto", False)
    if not isinstance(auto, bool):
        scope.error(line_of(block, "auto"), f"promotion.auto: expected true or false, got {describe(auto)}")
    if len(scope.checker.errors) > before or to is None or not gates or every is None or signoffs is None:
        return None
    return Promotion(to=to, gates=gates, every_ms=every, hold_for_ms=hold or 0, min_time_ms=time,
                     min_interactions=interactions, min_users=users, signoffs=signoffs, auto=auto,
                     line=line)  # fmt: skip


def _duration(scope: Scope, m: LocatedMap, key: str, path: str | None = None) -> int | None:
    return scope.duration(m, key, path or f"promotion.{key}") if key in m else None
