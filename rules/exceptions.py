"""The rollguard exception tree.

::

    RollguardError                 root: catch this to catch anything rollguard raises on purpose
    ├── InvalidEvent               one input event failed validation (rules.events); it is dead-lettered
    ├── DurationError              a duration string such as ``5m`` could not be parsed (rules.durations)
    ├── RulesInvalid               rule files failed validation; carries every error (rules.loader)
    └── EngineError                the engine was driven wrongly (e.g. state from another rule set)

Messages say what to do, not only what went wrong.
"""

__all__ = ["RollguardError", "InvalidEvent", "EngineError"]


class RollguardError(Exception):
    """Root of every error rollguard raises on purpose."""


class InvalidEvent(RollguardError):
    """An input event failed validation.

    ``reason`` is a short machine-friendly code (``invalid_json``, ``schema``, ``not_an_object``),
    ``detail`` the located, human-readable explanation (``ts: input should be ...``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EngineError(RollguardError):
    """The engine was used in a way that cannot give correct decisions; the message says how to fix the call."""
