"""Numbers, metric values and summaries as people read them in report.md, the charts and the CLI's output; and
report.md's times, evidence cells and Markdown tables (:mod:`streams.offline.report` lays the sections out).

Presentation only: the JSON outputs (decisions, commands, pages) are the contract and keep their raw values and
summary texts; these functions change how the report shows them.

>>> plural(1, "PNG"), plural(2_500, "PNG")
('1 PNG', '2,500 PNGs')
>>> metric_value("error_rate", 0.07525, False), metric_value("latency_p95", 1523.4, False)
('7.52%', '1,523 ms')
>>> metric_value("all(acceptance_rate{region in (eu, us)} < 0.14, acceptance_rate between [0.1, 0.2])", 0.13, False)
'13%'
>>> readable_summary("kill: safe-llm/errors on email-reply/closed_beta: error_rate = 0.07525 > 0.05")
'kill: safe-llm/errors on email-reply/closed_beta: error_rate = 7.52% > 5%'
>>> drift_evidence("drift:hddm_a:error", 0.0, {"drift_flags": 1})
'drift flagged (mean since detector restart 0%)'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rules.metric_names import MetricNameError, is_rate_metric
from rules.outputs import iso

__all__ = ["plural", "number", "metric_value", "drift_evidence", "readable_summary", "comparison_evidence", "percent",
           "evidence", "fmt_ts", "fmt_duration", "md_table", "md_row", "md_cell", "count_list"]

# A drift rule's value is its detector's level of the signal; show it in the unit of the matching metric.
_DRIFT_SIGNAL_METRIC = {"acceptance": "acceptance_rate", "error": "error_rate", "thumbs_down": "thumbs_down_rate",
                        "latency_ms": "latency_mean", "cost_usd": "cost_per_request", "tokens_out": "tokens_out_mean"}  # fmt: skip
# Detectors with a level of their own (river's ``estimation``); for the others rollguard reports the mean of the
# values since the detector last started afresh, which it does on the update after each drift (detectors/base.py).
_OWN_ESTIMATE = {"adwin": "window mean"}
# The sentence rules.outputs.render_summary writes for a rule without a summary template.
_FALLBACK = re.compile(
    r"(?P<head>(?:investigate|pause|kill): \S+/\S+ on \S+/\S+(?: \[.*\])?: )(?P<metric>[a-z_]+(?::[a-z0-9_]+)?) = "
    r"(?P<value>\S+)(?: (?P<op>[<>]=?) (?P<threshold>\S+))?"
)


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and ``word``, with an ``s`` (or ``words``) unless ``n`` is 1; thousands separated."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"


def number(x: float) -> str:
    """A number with the precision its size deserves: ``1,523``, ``12.3``, ``4.23``, ``0.0123``."""
    if not math.isfinite(x):
        return str(x)
    size = abs(x)
    decimals = 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 1 or size == 0 else \
        min(6, 2 - math.floor(math.log10(size)))  # fmt: skip
    text = f"{x:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


# a compound rule's conditions (rules.compound.describe: ``all(m1{filter} < x, m2 between [lo, hi])``) without their
# filters and bands, whose commas and values are not conditions
_FILTERS_AND_BANDS = re.compile(r"\{[^}]*\}|\[[^\]]*\]")


def _condition_metrics(metric: str) -> set[str]:
    """The metrics of a compound rule's description.

    >>> sorted(_condition_metrics("any(error_rate{region in (eu, us)} between [0.1, 0.5], error_rate > 0.3)"))
    ['error_rate']
    """
    return {part.split(" ", 1)[0] for part in _FILTERS_AND_BANDS.sub("", metric[4:-1]).split(", ")}


def metric_value(metric: str | None, value: Any, relative: bool) -> str:
    """A metric value in its unit, decided by the metric name (docs/contract.md §2)."""
    if value is None:
        return "—"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if relative:  # baseline rules compare (value - value_then) / value_then
        return ("+" if value > 0 else "") + number(value * 100) + "%"
    if metric and metric.startswith(("all(", "any(")):  # a compound rule: its conditions' unit, when they share one
        names = _condition_metrics(metric)
        metric = names.pop() if len(names) == 1 else None
    name, _, param = (metric or "").partition(":")
    if name == "drift":
        name = _DRIFT_SIGNAL_METRIC.get(param.rpartition(":")[2], "")
    if name.endswith("_rate"):
        return number(value * 100) + "%"
    if name.startswith("latency_"):
        return number(value) + " ms"
    if name.startswith("cost_"):
        return ("-$" if value < 0 else "$") + number(abs(value))
    return number(value)


def drift_evidence(metric: str, value: float | None, details: Mapping | None) -> str:
    """What a drift rule's decision shows: whether its detector flagged drift in the step, and the detector's level
    under its true name — ADWIN's window mean, otherwise the mean since the detector's last restart (which follows
    every flag, so right after one it covers few values and is not the metric's current value)."""
    detector = metric.split(":")[1] if metric.count(":") >= 2 else ""
    flags = (details or {}).get("drift_flags") or 0
    flagged = ("drift flagged" + (f" ×{flags}" if flags > 1 else "")) if flags else ""
    level = "" if value is None else \
        f"{_OWN_ESTIMATE.get(detector, 'mean since detector restart')} {metric_value(metric, value, False)}"
    if flagged and level:
        return f"{flagged} ({level})"
    return flagged or level or "—"


def _percent(text: str) -> str:
    try:
        return number(float(text) * 100) + "%"
    except ValueError:
        return text  # "n/a"


def readable_summary(text: str) -> str:
    """A rule's summary as the report shows it: in the sentence rollguard writes for a rule without a template,
    a rate metric's value and threshold become percentages (``error_rate = 7.52% > 5%``); any other text is
    returned as it is."""
    m = _FALLBACK.fullmatch(text)
    if m is None:
        return text
    try:
        if not is_rate_metric(m["metric"]):
            return text
    except (MetricNameError, KeyError):
        return text
    out = f"{m['head']}{m['metric']} = {_percent(m['value'])}"
    return out + (f" {m['op']} {_percent(m['threshold'])}" if m["op"] else "")


def percent(x: float | None) -> str:
    """A share as a percentage with one decimal ("—" for None)."""
    return "—" if x is None else f"{x:.1%}"


def comparison_evidence(d: Mapping, metric: str | None, details: Mapping) -> str:
    """Treatment - control with its interval and both arms.

    >>> comparison_evidence({"value": -0.03, "op": "<", "threshold": -0.02}, "acceptance_rate", {"compare": {
    ...     "control": "control", "control_value": 0.3, "control_samples": 90000, "treatment": ["model-upgrade"],
    ...     "treatment_value": 0.27, "treatment_samples": 10000, "lo": -0.041, "hi": -0.021, "relative": False}})
    '-3% [-4.1%, -2.1%] (< -2%); model-upgrade 27% (10,000) vs control 30% (90,000)'
    """
    c = details["compare"]
    rel = bool(c.get("relative"))
    text = metric_value(metric, d.get("value"), rel)
    if c.get("lo") is not None and "quantile_test" not in c:
        text += f" [{metric_value(metric, c['lo'], rel)}, {metric_value(metric, c['hi'], rel)}]"
    elif "quantile_test" in c:
        q = c["quantile_test"]
        beyond, line, expected = percent(q["share_beyond"]), metric_value(metric, q["line"], False), percent(q["expected_share"])
        text += f", {beyond} beyond {line} (expected {expected})"
    if d.get("threshold") is not None:
        text += f" ({d.get('op')} {metric_value(metric, d['threshold'], rel)})"
    arms = ", ".join(c["treatment"]) or "treatment"
    return (f"{text}; {arms} {metric_value(metric, c['treatment_value'], False)} ({c['treatment_samples']:,}) vs "
            f"{c['control']} {metric_value(metric, c['control_value'], False)} ({c['control_samples']:,})")


# --- report.md: times, evidence, tables ---------------------------------------------------------------------------


def fmt_ts(ms: int) -> str:
    return iso(ms).replace("T", " ")  # "2026-11-02 10:42:00Z": the RFC 3339 instant, easier on the eye


def fmt_duration(ms: int, signed: bool = False) -> str:
    """Two largest units: ``+12m``, ``1h30m``, ``-45s``, ``2d3h``, ``0s``.

    >>> fmt_duration(12 * 60_000, signed=True), fmt_duration(-5_430_000, signed=True), fmt_duration(0)
    ('+12m', '-1h30m', '0s')
    """
    sign = "-" if ms < 0 else "+" if signed and ms > 0 else ""
    rest, parts = abs(ms), []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    if not parts:
        parts = [f"{rest}ms" if rest else "0s"]
    return sign + "".join(parts[:2])


def relative_threshold(d: Mapping) -> bool:
    # A baseline rule's threshold bounds the relative change the engine puts in ``details``, not the value; a
    # relative comparison's value and threshold are changes against the control.
    details = d.get("details") or {}
    return "baseline_value" in details or bool((details.get("compare") or {}).get("relative"))


def evidence(d: Mapping) -> str:
    """``value (op threshold)`` in the metric's unit, with what the rule actually compared when it is not the value.

    >>> evidence({"metric": "latency_p95", "value": 1620, "op": ">", "threshold": 0.5,
    ...                "details": {"baseline_value": 1000, "change": 0.62}})
    '1,620 ms, +62% vs baseline (> +50%)'
    """
    metric, details = d.get("metric"), d.get("details") or {}
    if (metric or "").startswith("drift:") and d.get("threshold") is None:
        return drift_evidence(metric, d.get("value"), details)
    if "compare" in details:
        return comparison_evidence(d, metric, details)
    if "srm" in details:  # a comparison's sample-ratio companion: the treatment's share against the configured one
        srm = details["srm"]
        if srm.get("test") == "stable":  # no configured split: the share before and after the likeliest change
            return (f"treatment share {percent(srm['share_after'])} since {srm['changed_at'] or '—'}, "
                    f"{percent(srm['share_before'])} before (log e-value {srm['log_e']:.1f})")
        share, expected = percent(srm["treatment_share"]), percent(srm["expected_share"])
        return f"treatment share {share} of {sum(srm['counts']):,} (expected {expected})"
    text = metric_value(metric, d.get("value"), False)
    if "change" in details:
        text += f", {metric_value(metric, details['change'], True)} vs baseline"
    elif "bound" in details:  # ``confidence``: the Wilson bound on the far side of the threshold
        text += f", bound {metric_value(metric, details['bound'], False)}"
    if d.get("threshold") is None:
        return text
    line = metric_value(metric, d["threshold"], relative_threshold(d))
    if d.get("threshold_high") is not None:  # op between / outside: a band
        line = f"{line} – {metric_value(metric, d['threshold_high'], relative_threshold(d))}"
    return f"{text} ({d.get('op') or 'vs'} {line})"


def md_cell(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") or "—"


def md_row(*cells: Any) -> str:
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    return [md_row(*header), "|" + "---|" * len(header), *(md_row(*r) for r in rows)]


def count_list(counter: Mapping[str, int], order: Sequence[str] = ()) -> str:
    keys = [k for k in order if counter.get(k)] + sorted(k for k in counter if k not in order and counter[k])
    return ", ".join(f"{counter[k]:,} {k}" for k in keys) or "—"
