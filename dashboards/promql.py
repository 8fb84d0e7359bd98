"""PromQL selectors for the dashboards, built from the metric contract's names and labels.

Label values are quoted the way PromQL reads them (a double-quoted string with ``\\`` and ``"`` escaped), so a
rule id or rule-set name can never break out of its matcher. Template variables are always matched as regexes
(``=~``), because a multi-value or "All" selection expands to a regex.

>>> selector("rollguard_rule_state", {"ruleset": "safe-llm", "state": "firing"}, FEATURE_PHASE)
'rollguard_rule_state{ruleset="safe-llm",state="firing",feature=~"$feature",phase=~"$phase"}'
>>> selector("rollguard_events_total", {}, {"instance": "$instance"})
'rollguard_events_total{instance=~"$instance"}'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["quote", "selector", "FEATURE_PHASE", "FEATURE_PHASE_SEGMENT", "FEATURE_ONLY", "INSTANCE"]

# The template-variable filters the dashboards apply; ``segment`` filters the rule series' ``group`` label.
FEATURE_PHASE: Mapping[str, str] = MappingProxyType({"feature": "$feature", "phase": "$phase"})
FEATURE_PHASE_SEGMENT: Mapping[str, str] = MappingProxyType({**FEATURE_PHASE, "group": "$segment"})
FEATURE_ONLY: Mapping[str, str] = MappingProxyType({"feature": "$feature"})
INSTANCE: Mapping[str, str] = MappingProxyType({"instance": "$instance"})


def quote(value: str) -> str:
    """A PromQL string literal.

    >>> print(quote('a"b\\\\c'))
    "a\\"b\\\\c"
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector(metric: str, exact: Mapping[str, str], regex: Mapping[str, str] = MappingProxyType({})) -> str:
    """``metric{...}`` with ``exact`` as ``=`` matchers and ``regex`` (template variables, label families such as
    ``flag_.*``) as ``=~`` matchers."""
    parts = [f"{label}={quote(value)}" for label, value in exact.items()]
    parts += [f"{label}=~{quote(value)}" for label, value in regex.items()]
    return f"{metric}{{{','.join(parts)}}}" if parts else metric
