"""What a lifecycle transition does: latching, inhibition, the kill breaker, and operator resume (CONTRACT §3, §4).

Alertmanager-style pipeline of small decisions, all pure: given the feature's latches and the breaker state, a
``firing`` transition becomes one of

* ``firing``   — with a page, plus a command when it raises the feature/phase latch (ok → pause, → kill);
* ``inhibited`` — a lower tier while the feature/phase is killed: recorded, no page;
* ``held``     — a kill beyond ``max_kills_per_hour``: recorded, no command, one critical page per hour.

The breaker's page resolves, in event time, at the first transition of an hour whose budget is free again (any
hour after the paged one, when ``max_kills_per_hour`` > 0), or when an operator resume re-arms a held kill. Held
kills themselves stay held until resumed: the resolve says the breaker has room again, not that anyone acted.

Shadow-mode rules produce decisions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rules.control_auth import admit
from rules.lifecycle import Instance, reset
from rules.outputs import command, decision, iso, page, stable_id
from rules.state import BreakerState, FeatureState

__all__ = ["Outputs", "Policy"]

HOUR_MS = 3_600_000


@dataclass
class Outputs:
    """What one engine step produced, in order."""

    decisions: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    pages: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)  # events the engine quarantined (``ts_outlier``)

    def extend(self, other: Outputs) -> None:
        self.decisions += other.decisions
        self.commands += other.commands
        self.pages += other.pages
        self.dead_letters += other.dead_letters

    def __bool__(self) -> bool:
        return bool(self.decisions or self.commands or self.pages or self.dead_letters)


@dataclass(frozen=True)
class Policy:
    max_kills_per_hour: int = 5

    def on_transition(self, out: Outputs, fs: FeatureState, breaker: BreakerState, bound, inst: Instance,
                      transition: str, feature: str, phase: str, group: dict, t: int, ev) -> None:  # fmt: skip
        """Turn one lifecycle transition into decisions, commands and pages."""
        rule = bound.rule
        if self.max_kills_per_hour:
            # the budget frees up with the next event-time hour: the first transition there closes older pages
            for hour in breaker.open_hours(before=t // HOUR_MS):
                self._close_breaker(out, breaker, hour, (hour + 1) * HOUR_MS, "budget_free")

        def dec(tr: str, **extra) -> dict:
            d = decision(
                t=t, ruleset=bound.ruleset, rule=rule, feature=feature, phase=phase, group=group, transition=tr,
                metric=bound.metric, value=ev.value, samples=ev.samples, window_start=ev.window_start,
                window_end=ev.window_end, details=ev.details or None, extra=extra or None,
            )  # fmt: skip
            out.decisions.append(d)
            return d

        if transition != "firing":
            # a resolved decision says when its incident began, so a reader needs no memory to draw its span
            d = dec(transition, incident_start=iso(inst.incident)) if (
                transition == "resolved" and inst.incident is not None) else dec(transition)
            if transition == "resolved" and inst.paged:
                out.pages.append(page(action="resolve", dec=d, incident=inst.incident))
                inst.paged = False
            return
        if rule.mode == "shadow":
            dec("firing")
            return
        latch = fs.latches.get(phase)
        tier = rule.tier
        if tier != "kill" and latch == "kill":
            dec("inhibited", inhibited_by="kill")
            return
        if tier == "kill" and latch != "kill":
            hour = t // HOUR_MS
            kills = breaker.kills.setdefault(hour, set())
            # the kill's identity, not a count: re-processing the same input after a crash never counts it twice
            kill_id = stable_id("kill", feature, phase, bound.ruleset.name, rule.id, group, inst.incident)
            issued = len(kills)
            if kill_id not in kills and issued >= self.max_kills_per_hour:
                inst.held = True
                d = dec("held", breaker={"kills_this_hour": issued, "max_kills_per_hour": self.max_kills_per_hour})
                if hour not in breaker.paged:
                    breaker.paged.add(hour)
                    out.pages.append(self._breaker_page(d, hour, issued))
                return
            kills.add(kill_id)
        d = dec("firing")
        if tier in ("pause", "kill") and (latch is None or (latch == "pause" and tier == "kill")):
            fs.latches[phase] = tier
            out.commands.append(command(tier=tier, dec=d, incident=inst.incident, action=rule.action))  # sealed later
        out.pages.append(page(action="trigger", dec=d, incident=inst.incident))
        inst.paged = True

    def _close_breaker(self, out: Outputs, breaker: BreakerState, hour: int, t: int, cause: str) -> None:
        why = (f"the hour from {iso(hour * HOUR_MS)} is over, kills are allowed again" if cause == "budget_free"
               else "an operator resume re-armed a held kill")  # fmt: skip
        breaker.resolved.add(hour)
        out.pages.append({
            "event_action": "resolve",
            "dedup_key": "rollguard-breaker-" + stable_id("breaker", hour),
            "payload": {
                "summary": f"Kill breaker closed: {why}. Kills held in that hour stay held until resumed "
                           "(rollguard status).",
                "source": "rollguard",
                "severity": "critical",
                "timestamp": iso(t),
                "component": "rollguard",
                "group": "breaker",
                "class": "kill-breaker",
                "custom_details": {"cause": cause, "hour_start": iso(hour * HOUR_MS),
                                   "max_kills_per_hour": self.max_kills_per_hour},
            },
        })  # fmt: skip

    def _breaker_page(self, d: dict, hour: int, issued: int) -> dict:
        summary = (
            f"Kill breaker open: {issued} rollbacks already issued in the hour from {iso(hour * HOUR_MS)}; "
            f"held the kill of {d['ruleset']}/{d['rule_id']} on {d['feature']}/{d['phase']}. "
            "A human must decide whether to roll back."
        )
        return {
            "event_action": "trigger",
            "dedup_key": "rollguard-breaker-" + stable_id("breaker", hour),
            "payload": {
                "summary": summary,
                "source": "rollguard",
                "severity": "critical",
                "timestamp": d["ts"],
                # the breaker is global, like the monitor: the held kill is named in the summary and details, and
                # the resolve (which knows only the hour) carries the same component and group
                "component": "rollguard",
                "group": "breaker",
                "class": "kill-breaker",
                "custom_details": {
                    "held_decision_id": d["decision_id"],
                    "held_feature": d["feature"],
                    "held_phase": d["phase"],
                    "held_rule": f"{d['ruleset']}/{d['rule_id']}",
                    "kills_this_hour": issued,
                    "max_kills_per_hour": self.max_kills_per_hour,
                },
            },
        }

    def resume(self, out: Outputs, fs: FeatureState, plan, control, breaker: BreakerState | None = None) -> None:
        """Operator resume: clear latches and reset latching instances of the feature (one phase or all). Re-arming
        a held kill is the human decision the breaker page asked for: it resolves the open breaker pages."""
        t = control.ts
        extra = {"cause": "operator_resume", "resume_id": control.event_id, "reason": control.reason}
        if control.operator:
            extra["operator"] = control.operator
        if not admit(control, fs, out.dead_letters):  # signed: applied once, never stale (rules.control_auth)
            return
        if control.key_id is not None:
            extra["key_id"] = control.key_id
        phases = {control.phase} if control.phase else set(fs.latches) | fs.phases
        for key in sorted(k for k in fs.instances if k[2] in phases):
            bound = plan.by_key.get((key[0], key[1]))
            inst = fs.instances[key]
            if bound is None or not bound.latching or inst.state != "firing":
                continue
            incident, paged = inst.incident, inst.paged
            if inst.held and breaker is not None:
                for hour in breaker.open_hours():
                    self._close_breaker(out, breaker, hour, t, "operator_resume")
            reset(inst)
            d = decision(
                t=t, ruleset=bound.ruleset, rule=bound.rule, feature=control.feature, phase=key[2],
                group=dict(zip(bound.rule.group_by, key[3])), transition="resolved", metric=bound.metric,
                value=None, samples=0, window_start=t, window_end=t,
                extra=dict(extra, incident_start=iso(incident)) if incident is not None else extra,
            )  # fmt: skip
            out.decisions.append(d)
            if paged:
                out.pages.append(page(action="resolve", dec=d, incident=incident))
        for ph in sorted(phases):
            fs.latches.pop(ph, None)
