"""The replay's charts: which to draw, under which file names, and the report section that links them.

``rollguard replay --charts active`` (the default) draws one PNG per (rule set, rule, feature, phase) that was
pending or firing at least once, ``all`` one per evaluated rule, ``none`` nothing; with ``--compare`` one overlay
per (rule, feature, phase) that fired in either rule set, matched by rule id like the comparison tables. Files go
to ``OUT/charts/`` and ``OUT/charts/compare/``, named after what they show (sanitised, with a short hash of the
unsanitised names so two names never collide), and :func:`charts_section` lists them for ``report.md`` by tier.
The series come from :class:`streams.offline.chart_series.SeriesCollector`; drawing is
:mod:`streams.offline.chart_render`.

>>> file_name("email-reply-2", "latency p95/high", "email-reply", "closed_beta")
'email-reply-2__latency-p95-high__email-reply__closed_beta-c41cf812.png'
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streams.offline.chart_series import CHART_MODES, ChartKey, RuleSeries, SeriesCollector
from streams.offline.report_format import plural

__all__ = ["CHARTS_DIR", "ChartFile", "file_name", "clear_charts", "write_rule_charts", "write_overlays",
           "overlay_keys", "charts_section"]  # fmt: skip

CHARTS_DIR = "charts"
COMPARE_DIR = "compare"
SIDES = ("base", "candidate")  # the overlay lanes: --rules, then --compare
_TIERS = ("kill", "pause", "investigate")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ChartFile:
    """One PNG written: ``path`` relative to the report's folder (POSIX), what it shows and what the rule reached
    (``firing``, ``inhibited``, ``held``, ``pending``, ``quiet``: :meth:`RuleSeries.outcome`; for an overlay, per
    side)."""

    path: str
    tier: str
    rule_id: str
    feature: str
    phase: str
    ruleset: str
    reached: str


def file_name(*parts: str) -> str:
    """A file name made of ``parts``: safe characters only, each part at most 48 of them, plus 8 hex digits of a
    hash of the parts as given, so names that sanitise alike stay apart."""
    safe = [(_UNSAFE.sub("-", p).strip("-.") or "x")[:48] for p in parts]
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:8]
    return "__".join(safe) + f"-{digest}.png"


def clear_charts(out_dir: Path) -> None:
    """Remove the PNGs an earlier replay left in ``OUT/charts/`` (and ``compare/``), so the folder holds exactly
    what the new report links; other files are left alone."""
    for folder in (out_dir / CHARTS_DIR / COMPARE_DIR, out_dir / CHARTS_DIR):
        if folder.is_dir():
            for png in folder.glob("*.png"):
                png.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()


def _commands_of(commands: Sequence[Mapping], feature: str, phase: str) -> list[Mapping]:
    return [c for c in commands if c["feature"] == feature and c["phase"] == phase]


def write_rule_charts(out_dir: Path, collector: SeriesCollector, mode: str,
                      commands: Sequence[Mapping]) -> list[ChartFile]:  # fmt: skip
    """Draw the charts ``mode`` selects into ``OUT/charts/``; ``commands`` (the replay's) become markers on the
    charts of their feature and phase."""
    keys = collector.selected(mode)
    if not keys:
        return []
    from streams.offline.chart_render import draw_rule  # matplotlib: imported only when something is drawn (~0.8 s)

    written = []
    for key in keys:
        rs = collector.rules[key]
        name = file_name(key.ruleset, key.rule_id, key.feature, key.phase)
        draw_rule(out_dir / CHARTS_DIR / name, rs, key, _commands_of(commands, key.feature, key.phase),
                  _window(collector))
        written.append(ChartFile(f"{CHARTS_DIR}/{name}", rs.info.tier, key.rule_id, key.feature, key.phase,
                                 key.ruleset, rs.outcome()))  # fmt: skip
    return written


def _window(*collectors: SeriesCollector) -> tuple[int, int]:
    """The event-time range of the x axis: from the first evaluation instant to the last, over ``collectors``."""
    firsts = [c.first for c in collectors if c.first is not None]
    lasts = [c.last for c in collectors if c.last is not None]
    return (min(firsts), max(lasts)) if firsts else (0, 0)


def _by_rule(collector: SeriesCollector) -> dict[tuple[str, str, str], list[tuple[ChartKey, RuleSeries]]]:
    out: dict[tuple[str, str, str], list] = defaultdict(list)
    for key in sorted(collector.rules):
        out[(key.rule_id, key.feature, key.phase)].append((key, collector.rules[key]))
    return out


def _pick(found: list[tuple[ChartKey, RuleSeries]] | None) -> tuple[ChartKey, RuleSeries] | None:
    """The side's series for a rule id: the first rule set (by name) where it fired, else the first one."""
    if not found:
        return None
    return next((f for f in found if f[1].reached() == "firing"), found[0])


def overlay_keys(base: SeriesCollector, candidate: SeriesCollector) -> list[tuple[str, str, str]]:
    """(rule id, feature, phase) that fired in either rule set, in order."""
    fired = set()
    for side in (base, candidate):
        fired |= {(k.rule_id, k.feature, k.phase) for k, rs in side.rules.items() if rs.reached() == "firing"}
    return sorted(fired)


def write_overlays(out_dir: Path, base: SeriesCollector, candidate: SeriesCollector,
                   commands: tuple[Sequence[Mapping], Sequence[Mapping]]) -> list[ChartFile]:  # fmt: skip
    """One overlay per rule that fired in either rule set into ``OUT/charts/compare/``."""
    keys = overlay_keys(base, candidate)
    if not keys:
        return []
    from streams.offline.chart_render import draw_overlay

    sides = (_by_rule(base), _by_rule(candidate))
    written = []
    for key in keys:
        a, b = (_pick(side.get(key)) for side in sides)
        rule_id, feature, phase = key
        name = file_name(rule_id, feature, phase)
        draw_overlay(out_dir / CHARTS_DIR / COMPARE_DIR / name, key, a and a[1], b and b[1], SIDES,
                     tuple(_commands_of(c, feature, phase) for c in commands), _window(base, candidate))  # fmt: skip
        reached = ", ".join(f"{label} {x[1].outcome()}" if x else f"{label} absent"
                            for label, x in zip(SIDES, (a, b)))  # fmt: skip
        tier = (a or b)[1].info.tier
        ruleset = " / ".join(dict.fromkeys(x[0].ruleset for x in (a, b) if x))
        written.append(ChartFile(f"{CHARTS_DIR}/{COMPARE_DIR}/{name}", tier, rule_id, feature, phase, ruleset,
                                 reached))  # fmt: skip
    return written


def _links(charts: Sequence[ChartFile], heading: str) -> list[str]:
    lines = []
    for tier in _TIERS + tuple(sorted({c.tier for c in charts} - set(_TIERS))):
        shown = sorted((c for c in charts if c.tier == tier), key=lambda c: (c.feature, c.phase, c.rule_id, c.path))
        if shown:
            lines += ["", f"{heading} {tier}", ""]
            lines += [f"- [{c.rule_id}]({c.path}) · {c.feature} / {c.phase} · {c.ruleset} · {c.reached}"
                      for c in shown]
    return lines


def charts_section(mode: str, charts: Sequence[ChartFile], overlays: Sequence[ChartFile] | None = None,
                   labels: tuple[str, str] = ("A", "B")) -> list[str]:  # fmt: skip
    """The report's "Charts" section (markdown lines) linking every PNG written, grouped by tier; nothing for
    ``--charts none``. ``overlays`` (``--compare``) get their own subsection; ``labels`` name the two rule sets."""
    if mode not in CHART_MODES:
        raise ValueError(f"unknown charts mode {mode!r}; choose one of {', '.join(CHART_MODES)}")
    if mode == "none":
        return []
    which = ("every evaluated rule" if mode == "all" else "every rule that was pending or firing at least once "
             "(`--charts all` draws every evaluated rule)")  # fmt: skip
    lines = ["", "## Charts", ""]
    if charts:
        lines.append(f"{plural(len(charts), 'PNG')} in `{CHARTS_DIR}/`, one per rule set, rule, feature and phase for "
                     f"{which}: the value each rule compared with its threshold per group over event time (UTC), "
                     "pending shaded amber, firing red, a pause or kill latched until an operator resume hatched, "
                     "commands as vertical lines labelled at the top. The list says what each rule's firings became: "
                     "`firing`, `inhibited` (under a kill: recorded, no page) or `held` (by the kill breaker)."
                     )  # fmt: skip
    else:
        lines.append("No charts: no rule was pending or firing (`--charts all` draws every evaluated rule)."
                     if mode == "active" else "No charts: no rule was evaluated.")
    lines += _links(charts, "###")
    if overlays is not None:
        lines += ["", f"### Overlays: {SIDES[0]} = {labels[0]}, {SIDES[1]} = {labels[1]}", ""]
        lines.append(f"{plural(len(overlays), 'PNG')} in `{CHARTS_DIR}/{COMPARE_DIR}/`, one per rule, feature and "
                     "phase that fired in either rule set: the metric of both (dashed: the candidate's, where it differs), "
                     "both thresholds, and each set's pending / firing runs on its own lane."
                     if overlays else "No rule fired in either rule set: no overlays.")  # fmt: skip
        lines += _links(overlays, "####")
    return lines
