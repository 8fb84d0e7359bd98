"""Rule hot reload: carry a feature's state over from one compiled plan to the next.

What survives a reload is what still means the same thing under the new rules:

* window buckets of a store with the same ``every`` and segment keys (a store that now also needs latency
  sketches or user counts, which the old one did not keep, starts empty: its rules see data from the reload on);
* lifecycle instances of rules that still exist (pending timers and firing incidents continue); instances of
  removed rules end with a ``resolved`` decision (``cause: rule_removed``) and a page resolve if they had paged,
  and so do instances of rules whose ``mode`` changed (``cause: mode_changed``): a shadow rule promoted to enforce
  fires afresh, with its command, if its condition still holds;
* drift detectors whose rule kept the same detector, signal and parameters;
* starvation clocks (``rules.starvation``) of rules that still exist with the same mode and a ``max_starved``;
  a flagged one of a rule removed, switched off or changed in mode ends with ``fed`` and its page resolves;
* promotion verdicts (``rules.promotion``) of promotion blocks still loaded for the same rule set and phase (a changed
  block judges afresh at its next instant, against the verdict it last recorded); sign-offs and phases' first event
  times always (they are facts about the feature, not about the rules);
* latches (a killed feature stays killed until an operator resumes it) and evaluation clocks of every kept
  ``every``; a new ``every`` starts at the next instant after the feature's current position.
"""

from __future__ import annotations

from rules.outputs import decision, iso, page
from rules.plan import Plan
from rules.policy import Outputs
from rules.starvation import end as end_starvation
from rules.starvation import max_starved_ms
from rules.state import FeatureState

__all__ = ["migrate"]


def migrate(fs: FeatureState, feature: str, old: Plan, new: Plan, out: Outputs) -> None:
    """Rewrite ``fs`` in place from ``old`` to ``new``; decisions about removed rules go to ``out``."""
    remap: dict[int, int] = {}
    for key, spec in old.stores.items():
        nspec = new.stores.get(key)
        if nspec is None:
            continue
        if (nspec.needs_latency and not spec.needs_latency) or (nspec.needs_users and not spec.needs_users):
            continue
        remap[spec.id] = nspec.id
    fs.stores = {remap[sid]: series for sid, series in fs.stores.items() if sid in remap}

    kept = {bp.key for bp in new.promotions}
    fs.promotions = {k: v for k, v in fs.promotions.items() if k in kept}
    t = fs.max_ts if fs.max_ts is not None else 0
    for key in sorted(fs.instances):
        b, nb = old.by_key.get((key[0], key[1])), new.by_key.get((key[0], key[1]))
        if nb is not None and (b is None or b.rule.mode == nb.rule.mode):
            continue
        # removed, or its mode changed: a shadow incident promoted to enforce must start afresh, so that it fires
        # with its command and page if the condition still holds
        cause = "rule_removed" if nb is None else "mode_changed"
        inst = fs.instances.pop(key)
        if b is None or inst.state not in ("pending", "firing"):
            continue
        d = decision(
            t=t, ruleset=b.ruleset, rule=b.rule, feature=feature, phase=key[2],
            group=dict(zip(b.rule.group_by, key[3])), transition="resolved", metric=b.metric, value=None,
            samples=0, window_start=t, window_end=t, extra={"cause": cause, "plan_version": new.version,
                                                            "incident_start": iso(inst.incident)},
        )  # fmt: skip
        out.decisions.append(d)
        if inst.paged:
            out.pages.append(page(action="resolve", dec=d, incident=inst.incident))

    for key in sorted(fs.starving):
        b, nb = old.by_key.get((key[0], key[1])), new.by_key.get((key[0], key[1]))
        if nb is not None and b is not None and b.rule.mode == nb.rule.mode and max_starved_ms(nb.rule) is not None:
            continue  # the clock runs on (a changed max_starved applies from the next evaluation)
        cause = "rule_removed" if nb is None else "mode_changed" if b is None or b.rule.mode != nb.rule.mode else (
            "max_starved_off")  # fmt: skip
        end_starvation(out, fs, b, feature, key, t, cause)

    for key in list(fs.detectors):
        ob, nb = old.by_key.get((key[0], key[1])), new.by_key.get((key[0], key[1]))
        if ob is None or nb is None or ob.rule.drift != nb.rule.drift:
            del fs.detectors[key]
            fs.drift_pending.pop(key, None)
            fs.drift_last.pop(key, None)

    everys = new.profile(feature).everys
    nxt = {e: v for e, v in fs.next_eval.items() if e in everys}
    if nxt or fs.next_eval:  # clocks were running: new ones start at the next instant of the current watermark
        start = min(fs.next_eval.values())
        for e in everys - set(nxt):
            nxt[e] = start - start % e + e
    fs.next_eval = nxt
