"""The per-instance rule lifecycle: ``inactive → pending → firing → resolved`` (CONTRACT §3).

Pure and explicit: :func:`advance` takes the instance, the evaluation verdict (``True``, ``False`` or ``None`` for
*insufficient*) and the evaluation instant, mutates the instance and returns the transition it made, if any.
Latching tiers (pause, kill) never resolve by themselves; only :func:`reset` (an operator resume) clears them.

>>> inst = Instance()
>>> [advance(inst, v, t, for_ms=2, keep_firing_for_ms=0, latching=False) for t, v in enumerate([True, None, True, False])]
['pending', None, 'firing', 'resolved']
"""

from __future__ import annotations

__all__ = ["Instance", "advance", "reset", "STATES"]

STATES = ("inactive", "pending", "firing", "resolved")


class Instance:
    """Lifecycle state of one (ruleset, rule, feature, phase, group)."""

    # ``verdict``: the last evaluation's verdict, in memory only (``...`` when unknown, e.g. after a restart); the
    # engine reads it to know whether a quiet instant could move a timer (rules.instants ``_skip_quiet``)
    __slots__ = ("state", "pending_since", "clear_since", "incident", "held", "paged", "verdict")

    def __init__(self, state: str = "inactive", pending_since: int | None = None, clear_since: int | None = None,
                 incident: int | None = None, held: bool = False, paged: bool = False) -> None:  # fmt: skip
        self.state = state
        self.pending_since = pending_since  # when the current pending run began
        self.clear_since = clear_since  # first false evaluation while firing (keep_firing_for timer)
        self.incident = incident  # start of the current incident: ids of its commands and pages derive from it
        self.held = held  # a kill the breaker held back
        self.paged = paged  # a trigger page went out for this incident, so its end owes a resolve
        self.verdict: bool | None | type(...) = ...

    @property
    def timing(self) -> bool:
        """Whether evaluating again with the same verdict could still make a transition (a ``for`` or
        ``keep_firing_for`` countdown that the verdict keeps running); True when the verdict is unknown."""
        if self.state == "pending":
            return self.verdict is not None
        if self.state == "firing" and self.clear_since is not None:
            return self.verdict is not None and self.verdict is not True
        return False

    def to_state(self) -> list:
        return [self.state, self.pending_since, self.clear_since, self.incident, self.held, self.paged]

    @classmethod
    def from_state(cls, s: list) -> Instance:
        return cls(*s)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Instance) and self.to_state() == other.to_state()

    def __repr__(self) -> str:
        return f"Instance{tuple(self.to_state())}"


def advance(inst: Instance, verdict: bool | None, t: int, for_ms: int, keep_firing_for_ms: int,
            latching: bool) -> str | None:  # fmt: skip
    """Apply one evaluation at instant ``t``; return ``pending``/``firing``/``cleared``/``resolved`` or None."""
    if verdict is None:  # insufficient data holds whatever state we are in
        return None
    state = inst.state
    if state == "firing":
        if latching:
            return None
        if verdict:
            inst.clear_since = None
            return None
        if inst.clear_since is None:
            inst.clear_since = t
        if t - inst.clear_since >= keep_firing_for_ms:
            inst.state, inst.clear_since, inst.pending_since = "resolved", None, None
            return "resolved"
        return None
    if state == "pending":
        if not verdict:
            inst.state, inst.pending_since, inst.incident = "inactive", None, None
            return "cleared"
        if t - inst.pending_since >= for_ms:
            inst.state = "firing"
            return "firing"
        return None
    # inactive or resolved
    if not verdict:
        return None
    inst.pending_since = inst.incident = t
    inst.held = inst.paged = False
    if for_ms == 0:
        inst.state = "firing"
        return "firing"
    inst.state = "pending"
    return "pending"


def reset(inst: Instance) -> bool:
    """Operator resume: back to inactive. Returns whether the instance was firing (so a resolve is due)."""
    was_firing = inst.state == "firing"
    inst.state, inst.pending_since, inst.clear_since, inst.incident = "inactive", None, None, None
    inst.held = inst.paged = False
    return was_firing
