"""Promotion verdicts and sign-offs: when a launch phase may go on (``promotion:``, CONTRACT §3 extension).

A rule set that names one phase may carry a ``promotion`` block (``rules.promotion_loader``). At each of its
instants (``every``, event time), after every rule of the instant was evaluated, the engine judges it:

* each **gate** (a threshold rule of the set, written as the failure: ``acceptance_rate < 0.15``) *passes* when its
  rule evaluated false for every group, *fails* when it evaluated true for one, and is *inconclusive* when it could
  not decide (too few samples, no data in its window, a starved rule);
* **exposure**: the phase has run ``min_exposure.time`` since its first event, and over that trailing time saw
  ``interactions`` interactions from ``users`` distinct users (counted in a store of their own, like a rule's);
* **hold**: every gate has passed, with no pause or kill latch on the phase, at every instant for ``hold_for``;
* **sign-offs**: every listed role has signed off (``rollguard signoff``, a control input) at a time before the
  instant, and not revoked it since.

The verdict is ``blocked`` while the phase is paused or killed, a gate fails or a sign-off is missing (each named);
``inconclusive`` while nothing blocks but a gate cannot decide, exposure is short or the hold is still running;
``ready`` otherwise. A decision (``rule_id: promotion``, ``transition`` = the verdict, a ``promotion`` object with
the checklist) is recorded when the verdict or its reasons change, chained in the audit log like every decision;
with ``auto: true`` the first ``ready`` of a run sends a ``promote_rollout`` command (sealed and signed like a
rollback).

Deterministic like the rules: gate verdicts and exposure are event-time windows; a sign-off counts from its own
``ts``, so a control that arrives early counts from that time on and one that arrives after the instant it names
counts from the next instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rules.control_auth import admit, control_payload
from rules.durations import format_duration
from rules.model import Promotion, Rule, RuleSet
from rules.outputs import iso, stable_id
from rules.policy import Outputs
from rules.promotion_loader import PROMOTION_RULE_ID
from rules.state import FeatureState

__all__ = ["BoundPromotion", "probe_rules", "evaluate", "signoff", "time_changes", "SIGNOFF_TRANSITIONS", "VERDICTS",
           "PROMOTE"]

VERDICTS = ("ready", "blocked", "inconclusive")
SIGNOFF_TRANSITIONS = ("signed_off", "signoff_revoked")
PROMOTE = "promote_rollout"


@dataclass(frozen=True, eq=False)
class BoundPromotion:
    """A ``promotion`` block compiled against a plan: its gate rules and the probes that count its exposure."""

    ruleset: RuleSet
    spec: Promotion
    phase: str
    gates: tuple  # rules.plan.BoundRule, in the order listed
    probes: tuple  # rules.plan.BoundRule: interactions, then distinct users (each only when required)

    @property
    def key(self) -> tuple[str, str]:
        return (self.ruleset.name, self.phase)


def probe_rules(spec: Promotion) -> list[Rule]:
    """The metric rules whose values are the exposure counts (never evaluated as rules: no decisions)."""
    out = []
    for metric, need in (("requests", spec.min_interactions), ("active_users", spec.min_users)):
        if need:
            out.append(Rule(id=f"{PROMOTION_RULE_ID}-{metric}", tier="investigate", metric=metric, op=">=",
                            threshold=need, window_ms=spec.min_time_ms, every_ms=spec.every_ms, min_samples=0,
                            max_starved_ms=0))  # fmt: skip
    return out


def evaluate(out: Outputs, fs: FeatureState, bp: BoundPromotion, feature: str, t: int, gate_evals: dict,
             measure: Callable) -> None:  # fmt: skip
    """Judge ``bp`` at instant ``t``. ``gate_evals[(rule order, phase)]`` lists the ``(group, Evaluation)`` of each
    gate evaluated at ``t``; ``measure(probe)`` is ``(value, samples)`` of an exposure probe over its window."""
    spec, phase = bp.spec, bp.phase
    gates = [_gate(b, gate_evals.get((b.order, phase), ())) for b in bp.gates]
    exposure, short = _exposure(fs, bp, t, measure)
    latch = fs.latches.get(phase)
    clear = latch is None and all(g["status"] == "pass" for g in gates)  # what hold_for holds (exposure only grows)
    st = fs.promotions.get(bp.key)
    since = st["since"] if st is not None and clear else None
    if clear and since is None:
        since = t
    signed = {role: s for role, s in fs.signoffs.get(phase, {}).items() if not s.get("revoked") and s["ts"] < t}
    missing = [r for r in spec.signoffs if r not in signed]
    # (code, text): the verdict's reasons; the codes decide whether anything changed (the texts carry numbers)
    blocking = ([(f"latch:{latch}", f"phase {phase} is {'killed' if latch == 'kill' else 'paused'}")] if latch else []) \
        + [(f"fail:{g['rule_id']}", f"gate {g['rule_id']} fails") for g in gates if g["status"] == "fail"] \
        + [(f"signoff:{r}", f"sign-off {r} missing") for r in missing]  # fmt: skip
    waiting = [(f"inconclusive:{g['rule_id']}", f"gate {g['rule_id']} inconclusive") for g in gates
               if g["status"] == "inconclusive"] + short  # fmt: skip
    if clear and t - since < spec.hold_for_ms:
        waiting.append(("holding", f"holding since {iso(since)} ({format_duration(t - since)} of "
                                   f"{format_duration(spec.hold_for_ms)})"))  # fmt: skip
    verdict = "blocked" if blocking else "inconclusive" if waiting else "ready"
    reasons = [code for code, _ in blocking + waiting]
    changed = st is None or st["verdict"] != verdict or st["reasons"] != reasons
    blocking, waiting = [text for _, text in blocking], [text for _, text in waiting]
    detail = {
        "to": spec.to,
        "gates": gates,
        "exposure": exposure,
        "hold": {"since": iso(since) if since is not None else None, "hold_for": format_duration(spec.hold_for_ms)},
        "signoffs": {"required": list(spec.signoffs), "missing": missing,
                     "signed": {r: {k: v for k, v in signed[r].items() if k in ("operator", "at", "key_id")}
                                for r in sorted(signed)}},
        "latch": latch,
        "blocking": blocking,
        "waiting": waiting,
        "auto": spec.auto,
    }  # fmt: skip
    ready_since = st.get("ready_since") if st is not None and verdict == "ready" else None
    if verdict == "ready" and ready_since is None:
        ready_since = t
    fs.promotions[bp.key] = {"verdict": verdict, "reasons": reasons, "since": since, "ready_since": ready_since,
                             "at": t, "detail": detail}  # fmt: skip
    if not changed:
        return
    d = _decision(bp, feature, t, verdict, detail, exposure)
    out.decisions.append(d)
    if verdict == "ready" and spec.auto:
        out.commands.append({
            "command_id": stable_id("command", feature, phase, PROMOTE, bp.ruleset.name, PROMOTION_RULE_ID, {},
                                    ready_since),
            "ts": d["ts"], "feature": feature, "phase": phase, "action": PROMOTE, "to": spec.to,
            "ruleset": bp.ruleset.name, "rule_id": PROMOTION_RULE_ID, "decision_id": d["decision_id"],
            "reason": d["summary"],
        })  # fmt: skip


def time_changes(fs: FeatureState, bps, after: int) -> int | None:
    """The earliest time after ``after`` at which a verdict of ``bps`` could change with no new data: the phase
    reaching ``min_exposure.time``, a hold reaching ``hold_for``, a sign-off starting to count. The engine skips quiet
    instants of a promotion's clock only up to there (``rules.instants``), so skipping stays invisible."""
    times = []
    for bp in bps:
        first = fs.phase_first.get(bp.phase)
        if first is not None:
            times.append(first + bp.spec.min_time_ms)
        st = fs.promotions.get(bp.key)
        if st is not None and st["since"] is not None:
            times.append(st["since"] + bp.spec.hold_for_ms)
        times += [s["ts"] + 1 for s in fs.signoffs.get(bp.phase, {}).values()]
    return min((x for x in times if x > after), default=None)


def _gate(b, evals) -> dict:
    """A gate's status at the instant from its rule's evaluations (one per group)."""
    r = b.rule
    g = {"rule_id": r.id, "metric": b.metric, "op": r.op, "threshold": r.threshold}
    if r.threshold_high is not None:
        g["threshold_high"] = r.threshold_high
    if not evals:
        return dict(g, status="inconclusive", value=None, samples=0, why="no data in its window")
    worst = None
    for group, ev in evals:  # a failing group first, then an undecided one, else the last passing one
        rank = 2 if ev.verdict else 1 if ev.verdict is None else 0
        if worst is None or rank > worst[0]:
            worst = (rank, group, ev)
    rank, group, ev = worst
    g.update(status=("pass", "inconclusive", "fail")[rank], value=ev.value, samples=ev.samples)
    if group:
        g["group"] = dict(zip(r.group_by, group))
    if rank == 1:
        g["why"] = f"too few samples ({ev.samples}, needs {r.min_samples})" if ev.live else "no data in its window"
    return g


def _exposure(fs: FeatureState, bp: BoundPromotion, t: int, measure: Callable) -> tuple[dict, list[tuple[str, str]]]:
    spec = bp.spec
    first = fs.phase_first.get(bp.phase)
    ran = t - first if first is not None and first < t else 0
    exp = {"time_in_phase": format_duration(ran - ran % 1000), "min_time": format_duration(spec.min_time_ms)}
    short = []
    if ran < spec.min_time_ms:
        short.append(("exposure:time", f"phase has run {format_duration(ran - ran % 60_000)} of {format_duration(spec.min_time_ms)}"))
    needs = [(name, need) for name, need in (("interactions", spec.min_interactions), ("users", spec.min_users))
             if need]  # fmt: skip
    for probe, (name, need) in zip(bp.probes, needs):
        value, _ = measure(probe)
        have = int(value or 0)
        exp[name], exp[f"min_{name}"] = have, need
        if have < need:
            short.append((f"exposure:{name}", f"{have} {name} in the last {format_duration(spec.min_time_ms)} "
                                              f"(needs {need})"))  # fmt: skip
    return exp, short


def _decision(bp: BoundPromotion, feature: str, t: int, verdict: str, detail: dict, exposure: dict) -> dict:
    spec = bp.spec
    if verdict == "ready":
        summary = f"{feature}/{bp.phase} may be promoted to {spec.to}: every gate passes" + (
            f", held {format_duration(spec.hold_for_ms)}" if spec.hold_for_ms else "") + (
            ", signed off by " + ", ".join(spec.signoffs) if spec.signoffs else "")  # fmt: skip
    else:
        first, then = (detail["blocking"], detail["waiting"]) if verdict == "blocked" else (detail["waiting"], [])
        summary = f"promotion of {feature}/{bp.phase} to {spec.to} {verdict}: " + "; ".join(first) + (
            f" (waiting: {'; '.join(then)})" if then else "")  # fmt: skip
    start = t - spec.min_time_ms if spec.min_time_ms else t
    d = _record(bp, feature, t, verdict, summary[:1000])
    d.update(samples=exposure.get("interactions", 0), window_start=iso(start), promotion=detail)
    return d


def _record(bp: BoundPromotion, feature: str, t: int, transition: str, summary: str, extra_id=()) -> dict:
    """A decision of the rule set's promotion (the fields of CONTRACT §4, with ``rule_id: promotion``)."""
    return {
        "decision_id": stable_id("decision", bp.ruleset.name, PROMOTION_RULE_ID, feature, bp.phase, {}, transition,
                                 t, *extra_id),
        "ts": iso(t), "ruleset": bp.ruleset.name, "ruleset_version": bp.ruleset.version,
        "rule_id": PROMOTION_RULE_ID, "tier": PROMOTION_RULE_ID, "mode": "enforce", "feature": feature,
        "phase": bp.phase, "group": {}, "transition": transition, "metric": PROMOTION_RULE_ID, "value": None,
        "threshold": None, "op": None, "samples": 0, "window_start": iso(t), "window_end": iso(t),
        "summary": summary,
    }  # fmt: skip


def signoff(out: Outputs, fs: FeatureState, plan, control) -> None:
    """Record (or, with ``revoke``, withdraw) a role's sign-off of a feature's phase (a control input): one decision
    per promotion block of that phase that lists the role. A sign-off no loaded promotion asks for is refused as a
    dead letter (``signoff_unknown``): a typo in a role must not look recorded."""
    phase, role = control.phase, control.role
    promos = [bp for bp in plan.promotions_for(control.feature) if bp.phase == phase]
    wanted = [bp for bp in promos if role in bp.spec.signoffs]
    if not wanted:
        roles = sorted({r for bp in promos for r in bp.spec.signoffs})
        detail = (f"no loaded rule set has a promotion of {control.feature}/{phase}" if not promos else
                  f"no promotion of {control.feature}/{phase} asks for role {role!r} (roles: {', '.join(roles)})")
        out.dead_letters.append({"reason": "signoff_unknown", "detail": detail + "; nothing recorded",
                                 "source": control.origin, "payload": control_payload(control)})  # fmt: skip
        return
    if not admit(control, fs, out.dead_letters):  # signed: applied once, never stale (rules.control_auth)
        return
    entry = {"ts": control.ts, "at": iso(control.ts), "id": control.event_id}
    if control.operator:
        entry["operator"] = control.operator
    if control.key_id is not None:
        entry["key_id"] = control.key_id
    if control.revoke:
        entry["revoked"] = True
    fs.signoffs.setdefault(phase, {})[role] = entry
    transition = SIGNOFF_TRANSITIONS[1] if control.revoke else SIGNOFF_TRANSITIONS[0]
    who = f" by {control.operator}" if control.operator else ""
    for bp in wanted:
        verb = "withdrew the" if control.revoke else "signed off the"
        summary = f"{role}{who} {verb} promotion of {control.feature}/{phase} to {bp.spec.to}: {control.reason}"
        d = _record(bp, control.feature, control.ts, transition, summary[:1000], (role, control.event_id))
        d.update(role=role, signoff_id=control.event_id, reason=control.reason,
                 **({"operator": control.operator} if control.operator else {}),
                 **({"key_id": control.key_id} if control.key_id is not None else {}))  # fmt: skip
        out.decisions.append(d)
