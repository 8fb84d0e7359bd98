"""The rollguard exception tree.

::

    RollguardError                 root: catch this to catch anything rollguard raises on purpose
    ├── InvalidEvent               one input event failed validation (rules.events); it is dead-lettered
    ├── DurationError              a duration string such as ``5m`` could not be parsed (rules.durations)
    ├── MetricNameError            a metric name is not one of CONTRACT §2 (rules.metric_names)
    ├── RulesInvalid               rule files failed validation; carries every error (rules.loader)
    ├── SketchError                a sketch got an impossible value or a corrupt state (rules.sketches)
    │   └── StateFormatError       a stored bucket is corrupt or of an unknown format version (rules.aggregate)
    ├── ScenarioError              a generated scenario is inconsistent (streams.offline.scenario_incidents)
    └── ReportInputError           an output record given to the report lacks a field (streams.offline.report)

``detectors`` sits below ``rules`` and cannot import this root: its ``DetectorError`` (and
``DetectorStateError`` for stored state that fails its signature) derive from ``Exception`` directly.

Messages say what to do, not only what went wrong.
"""

__all__ = ["RollguardError", "InvalidEvent"]


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

