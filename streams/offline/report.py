"""The replay report: ``report.md``, written from what a replay decided.

A rule author opens it to learn in a minute what the rules would have done to a launch: the verdict per feature
and phase first (final tier, commands issued), then each ruleset's timeline of firings and the rules that never
fired, and with ``--compare`` what changes if the candidate rules ship (:func:`diff_outputs`).

Input is the replay outputs exactly as published (docs/contract.md §4: decision, command and page dicts) plus a
:class:`ReplayStats` the replay fills. The report is deterministic (same input, same bytes: no wall clock, every
order a total order) and bounded: tables are capped, decisions are read once from an iterable and only what a
table shows is kept, except that a comparison keeps the notable transitions the diff needs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rules.model import TIER_ORDER, worst
from rules.outputs import ACTION_TIER, SEVERITY, STARVATION_TRANSITIONS
from streams.offline.report_promotion import Promotions, is_promotion
from streams.offline.comparison import (
    _COMMAND_FIELDS,
    _DECISION_FIELDS,
    NOTABLE,
    Change,
    Diff,
    ReportInputError,
    Timestamp,
    _group_key,
    _ms,
    _page_fields,
    _require,
    diff_outputs,
)
from streams.offline.report_format import count_list, evidence, fmt_duration, fmt_ts, md_table, readable_summary
from streams.offline.report_format import relative_threshold
from streams.offline.report_format import metric_value as _fmt_value
from streams.offline.report_format import number as _num

__all__ = [
    "ReplayStats",
    "RulesetInfo",
    "ComparisonInput",
    "Change",
    "Diff",
    "ReportInputError",
    "diff_outputs",
    "write_report",
]

TIERS = tuple(TIER_ORDER)  # ok < investigate < pause < kill
SEVERITY_TIER = {severity: tier for tier, severity in SEVERITY.items()}
FIRED = ("firing", "inhibited", "held")
DEFAULT_CAP = 50


@dataclass(frozen=True)
class RulesetInfo:
    """One loaded ruleset: its name, ``version`` (sha256 hex of the canonical file) and rule ids."""

    name: str
    version: str
    rule_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplayStats:
    """What the replay read, for the report header. ``invalid_by_reason`` counts dead-lettered events."""

    rule_paths: Sequence[str] = ()
    event_paths: Sequence[str] = ()
    events_read: int = 0
    events_valid: int = 0
    invalid_by_reason: Mapping[str, int] = field(default_factory=dict)
    late: int = 0
    duplicates: int = 0
    first_event_ts: Timestamp | None = None
    last_event_ts: Timestamp | None = None
    rulesets: Sequence[RulesetInfo] = ()
    # Feature/phase pairs seen in events, so that a launch nothing fired on still shows as "ok" in the verdict.
    feature_phases: Sequence[tuple[str, str]] = ()
    allowed_lateness: str | None = None
    # events whose time was implausible for their stream (rules.clock): dead-lettered as ts_outlier, by direction
    outliers: Mapping[str, int] = field(default_factory=dict)
    max_clock_skew: int | None = None  # ms; None: producer clocks trusted


@dataclass(frozen=True)
class ComparisonInput:
    """The candidate side of ``--compare``: B's stats and outputs over the same events; A is the main input."""

    label_a: str
    label_b: str
    stats_b: ReplayStats
    decisions_b: Iterable[dict]
    commands_b: Iterable[dict]
    pages_b: Iterable[dict]


# --------------------------------------------------------------------------------------------- formatting


def _fmt_group(group: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in _group_key(group)) or "—"


# ------------------------------------------------------------------------------------ one pass over a side


class _Digest:
    """Everything the report shows about one side, accumulated in a single pass over its outputs."""

    def __init__(self, stats: ReplayStats, cap: int, keep_notable: bool) -> None:
        self.cap = cap
        self.versions = {r.name: r.version for r in stats.rulesets}
        self.transitions: dict[str, Counter] = defaultdict(Counter)
        self.timeline: dict[str, list[tuple[tuple, Mapping]]] = defaultdict(list)
        self.fired: dict[str, set[str]] = defaultdict(set)
        self.last: dict[tuple, tuple[int, Mapping]] = {}
        self.latched: dict[tuple, str] = {}
        self.firings: dict[tuple, Counter] = defaultdict(Counter)
        self.shadow: dict[tuple, str] = {}
        self.held: Counter = Counter()
        self.pages: dict[tuple, Counter] = defaultdict(Counter)
        self.feature_phases = {tuple(fp) for fp in stats.feature_phases}
        self.notable: list[Mapping] | None = [] if keep_notable else None
        self.commands: list[Mapping] = []
        self.page_records: list[Mapping] = []
        self.starved: dict[str, list[Mapping]] = defaultdict(list)
        self.promotions = Promotions()  # verdicts and sign-offs of promotion blocks (rules.promotion)

    def add_decision(self, d: Mapping, where: str) -> None:
        _require(d, _DECISION_FIELDS, where)
        ts, rs, tier, transition = _ms(d["ts"], where), d["ruleset"], d["tier"], d["transition"]
        fp = (d["feature"], d["phase"])
        self.feature_phases.add(fp)
        self.versions.setdefault(rs, d.get("ruleset_version") or "")
        self.transitions[rs][transition] += 1
        if is_promotion(d):
            self.promotions.add(d)
            return
        if transition in STARVATION_TRANSITIONS:  # about the rule's data, not its condition (rules.starvation)
            if transition == "starved":
                self.starved[rs].append(d)
            return
        lifecycle = (rs, d["rule_id"], *fp, _group_key(d.get("group")))
        if lifecycle not in self.last or self.last[lifecycle][0] <= ts:
            self.last[lifecycle] = (ts, d)
        if transition not in NOTABLE:
            return
        if self.notable is not None:
            self.notable.append(d)
        rows = self.timeline[rs]
        rows.append(((ts, d["rule_id"], *fp, lifecycle[-1], NOTABLE.index(transition), str(d.get("decision_id"))), d))
        if len(rows) > 2 * self.cap:  # amortised top-N: never hold more than twice the table
            rows.sort(key=lambda r: r[0])
            del rows[self.cap:]
        if transition not in FIRED:
            return
        self.fired[rs].add(d["rule_id"])
        if d["mode"] == "shadow":
            self.shadow[fp] = worst(self.shadow.get(fp, "ok"), tier)
        elif transition == "held":
            self.held[fp] += 1
        elif transition == "firing":
            self.firings[fp][tier] += 1
            if tier in ("pause", "kill"):
                self.latched[fp] = worst(self.latched.get(fp, "ok"), tier)

    def add_command(self, c: Mapping, where: str) -> None:
        _require(c, _COMMAND_FIELDS, where)
        _ms(c["ts"], where)
        fp = (c["feature"], c["phase"])
        self.feature_phases.add(fp)
        self.latched[fp] = worst(self.latched.get(fp, "ok"), ACTION_TIER.get(c["action"], "ok"))
        self.commands.append(c)

    def add_page(self, p: Mapping, where: str) -> None:
        pl = _page_fields(p, where)
        _ms(pl["timestamp"], where)
        fp = (pl["component"], pl["group"])
        self.feature_phases.add(fp)
        if p["event_action"] == "trigger":
            self.pages[fp][pl["severity"]] += 1
        self.page_records.append(p)

    def finish(self) -> "_Digest":
        self.commands.sort(key=lambda c: (_ms(c["ts"], "command"), c["feature"], c["phase"], c["rule_id"],
                                          str(c.get("command_id"))))
        # Pause and kill latch (no resume happens in a replay); investigate counts only if still firing at the end.
        self.final = dict.fromkeys(self.feature_phases, "ok") | self.latched
        for key, (_, d) in self.last.items():
            if d["tier"] == "investigate" and d["mode"] != "shadow" and d["transition"] == "firing":
                self.final[key[2:4]] = worst(self.final[key[2:4]], "investigate")
        return self

    def rulesets(self, stats: ReplayStats) -> list[str]:
        named = [r.name for r in stats.rulesets]
        return named + sorted(set(self.transitions) - set(named))

    def timeline_rows(self, ruleset: str) -> list[Mapping]:
        return [d for _, d in sorted(self.timeline[ruleset], key=lambda r: r[0])[: self.cap]]


def _digest(stats, decisions, commands, pages, cap, keep_notable, side) -> _Digest:
    digest = _Digest(stats, cap, keep_notable)
    for i, d in enumerate(decisions):
        digest.add_decision(d, f"decisions[{i}] of {side}")
    for i, c in enumerate(commands):
        digest.add_command(c, f"commands[{i}] of {side}")
    for i, p in enumerate(pages):
        digest.add_page(p, f"pages[{i}] of {side}")
    return digest.finish()


# ----------------------------------------------------------------------------------------------- rendering


def _render_header(stats: ReplayStats, sides: Sequence[tuple[str, ReplayStats]]) -> list[str]:
    invalid = sum(stats.invalid_by_reason.values())
    reasons = sorted(stats.invalid_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    by_reason = f" ({', '.join(f'{n:,} {r}' for r, n in reasons if n)})" if invalid else ""
    lines = ["# rollguard replay report", ""]
    for label, side in sides:
        rules = ", ".join(f"`{p}`" for p in side.rule_paths) or "—"
        lines.append(f"- **Rules{f' ({label})' if label else ''}**: {rules}")
    lines += [
        f"- **Events**: {', '.join(f'`{p}`' for p in stats.event_paths) or '—'}",
        f"- **Read**: {stats.events_read:,} events · {stats.events_valid:,} valid · {invalid:,} invalid, dead-lettered"
        f"{by_reason} · {stats.late:,} late · {stats.duplicates:,} duplicates",
    ]
    n_out = sum(stats.outliers.values())
    if n_out:
        parts = ", ".join(f"{n:,} {d}" for d, n in sorted(stats.outliers.items()) if n)
        skew = f" more than {fmt_duration(stats.max_clock_skew)} from" if stats.max_clock_skew is not None else " off"
        lines.append(f"- **Clock outliers**: {n_out:,} events ({parts}) with times{skew} their stream, quarantined as "
                     "`ts_outlier` in `deadletter.jsonl`: they moved no watermark and decided nothing")
    if stats.first_event_ts is not None and stats.last_event_ts is not None:
        first, last = _ms(stats.first_event_ts, "first_event_ts"), _ms(stats.last_event_ts, "last_event_ts")
        lateness = f" · allowed lateness {stats.allowed_lateness}" if stats.allowed_lateness else ""
        lines.append(f"- **Event time**: {fmt_ts(first)} → {fmt_ts(last)} ({fmt_duration(last - first)}){lateness}")
    else:
        lines.append("- **Event time**: no valid events")
    rows = [([label] if label else []) + [r.name, f"`{r.version[:12]}`", len(r.rule_ids)]
            for label, side in sides for r in side.rulesets]
    if rows:
        lines += ["", *md_table((["side"] if sides[0][0] else []) + ["ruleset", "version", "rules"], rows)]
    return lines


def _starved_group(d: Mapping) -> str:
    group = _fmt_group(d.get("group"))
    return "" if group == "—" else f" [{group}]"


def _place(r: Mapping) -> str:
    return f"{r['feature']} / {r['phase']}"


def _tier_mode(d: Mapping) -> str:
    return d["tier"] + (" (shadow)" if d["mode"] == "shadow" else "")


def _fmt_tier(tier: str) -> str:
    return f"**{tier.upper()}**" if tier in ("pause", "kill") else tier


def _render_commands(digest: _Digest, title: str, cap: int) -> list[str]:
    lines = ["", f"### {title}", ""]
    if not digest.commands:
        return lines + ["No commands issued."]
    rows = [(fmt_ts(_ms(c["ts"], "command")), _place(c), c["action"],
             f"{c.get('ruleset', '—')} / {c['rule_id']}", readable_summary(c.get("reason") or "—"))
            for c in digest.commands[:cap]]
    lines += md_table(("time", "feature / phase", "action", "rule", "reason"), rows)
    if len(digest.commands) > cap:
        lines.append(f"\n… {len(digest.commands) - cap:,} more, see commands.jsonl")
    return lines


def _render_verdict(a: _Digest, b: _Digest | None, labels: tuple[str, str], cap: int) -> list[str]:
    lines = ["", "## Verdict", ""]
    # Worst first, so that a capped table still shows every kill and pause.
    fps = sorted(set(a.final) | set(b.final if b else ()),
                 key=lambda fp: (-max(TIERS.index(d.final.get(fp, "ok")) for d in (a, b) if d), fp))
    if not fps:
        return lines + ["No feature produced a decision, command or page."]
    more, fps = len(fps) - len(fps[:cap]), fps[:cap]
    if b is None:
        header = ("feature", "phase", "final", "enforce firings", "pages", "shadow would reach", "kills held")
        rows = [(f, p, _fmt_tier(a.final[(f, p)]), count_list(a.firings[(f, p)], TIERS),
                 count_list(a.pages[(f, p)], tuple(SEVERITY_TIER)), a.shadow.get((f, p), "—"), a.held[(f, p)] or "—")
                for f, p in fps]
    else:
        header = ("feature", "phase", f"final ({labels[0]})", f"final ({labels[1]})",
                  f"pages ({labels[0]})", f"pages ({labels[1]})")
        rows = [(f, p, _fmt_tier(a.final.get((f, p), "ok")), _fmt_tier(b.final.get((f, p), "ok")),
                 count_list(a.pages[(f, p)], tuple(SEVERITY_TIER)), count_list(b.pages[(f, p)], tuple(SEVERITY_TIER)))
                for f, p in fps]
    lines += ["Final: the tier in force at the end of the replay (pause and kill latch; investigate counts while "
              "still firing). Shadow rules never change it.", "", *md_table(header, rows)]
    if more:
        lines.append(f"\n… {more:,} more feature/phase pairs, all at or below the last tier shown")
    lines += _render_commands(a, f"Commands ({labels[0]})" if b else "Commands", cap)
    if b is not None:
        lines += _render_commands(b, f"Commands ({labels[1]})", cap)
    return lines


def _render_timelines(digest: _Digest, stats: ReplayStats, label: str, cap: int) -> list[str]:
    lines = ["", f"## Timeline{f' ({label})' if label else ''}"]
    rule_ids = {r.name: r.rule_ids for r in stats.rulesets}
    if not digest.rulesets(stats):
        return lines + ["", "No rulesets loaded and no decisions."]
    for rs in digest.rulesets(stats):
        counts = digest.transitions[rs]
        shown = sum(counts[t] for t in NOTABLE)
        summary = " · ".join(f"{counts[t]:,} {t}" for t in NOTABLE) if shown else "No firings"
        lines += ["", f"### {rs} · `{digest.versions.get(rs, '')[:12] or '—'}`", "",
                  f"{summary}; not shown: {counts['pending']:,} pending, {counts['cleared']:,} cleared."]
        quiet = [r for r in rule_ids.get(rs, ()) if r not in digest.fired[rs]]
        if quiet:
            lines.append(f"Quiet rules: {', '.join(quiet)}.")
        starved = digest.starved.get(rs)
        if starved:
            shown_starved = [f"{d['rule_id']} ({_place(d)}{_starved_group(d)} since "
                             f"{fmt_ts(_ms(d['starved_since'], 'decision'))})" for d in starved[:cap]]
            more = f" and {len(starved) - cap:,} more" if len(starved) > cap else ""
            lines.append(f"Starved rules (too little data to decide for longer than `max_starved`): "
                         f"{', '.join(shown_starved)}{more}.")
        if not shown:
            continue
        rows = []
        for d in digest.timeline_rows(rs):
            samples = d.get("samples")
            rows.append((fmt_ts(_ms(d["ts"], "decision")), d["rule_id"], _tier_mode(d), _place(d),
                         _fmt_group(d.get("group")), d["transition"], evidence(d),
                         "—" if samples is None else _num(samples)))
        lines += ["", *md_table(("time", "rule", "tier", "feature / phase", "group", "transition",
                                "value (vs threshold)", "samples"), rows)]
        if shown > cap:
            lines.append(f"\n… {shown - cap:,} more, see decisions.jsonl")
    return lines


def _bottom_line(diff: Diff, label_b: str, label_a: str, when) -> str:
    """One sentence: kills and pauses gained, lost or moved, then trigger pages gained or lost per tier."""
    parts = []
    for status, verb in (("gained", "adds"), ("lost", "removes"), ("moved", "moves")):
        for action, tier in ACTION_TIER.items():
            hits = [c for c in diff.select("commands", status) if c.key[3] == action]
            if not hits:
                continue
            where = [f"{c.key[0]}/{c.key[1]} " + (f"at {when(c.ts_a if c.b is None else c.ts_b)}"
                     if c.delta_ms is None else fmt_duration(abs(c.delta_ms)) +
                     (" later" if c.delta_ms > 0 else " earlier")) for c in hits[:3]]
            more = ", …" if len(hits) > 3 else ""
            parts.append(f"{verb} {len(hits)} {tier}{'s' if len(hits) > 1 else ''} ({', '.join(where)}{more})")
    for status, verb in (("gained", "adds"), ("lost", "removes")):
        pages = Counter(SEVERITY_TIER.get(c.key[5], c.key[5]) for c in diff.select("pages", status)
                        if c.key[4] == "trigger")
        parts += [f"{verb} {pages[t]} {t} page{'s' if pages[t] != 1 else ''}" for t in reversed(TIERS) if pages[t]]
    if parts:
        return f"{label_b} {', '.join(parts)}."
    firings = [c for c in diff.select("decisions") if c.status != "same"]
    if firings:
        return f"{label_b} issues the same commands and pages as {label_a}; {len(firings)} firing(s) differ."
    return f"{label_b} decides exactly like {label_a} over these events."


def _change_rows(changes: Sequence[Change], kind: str, cap: int) -> tuple[list[tuple], int]:
    rows = []
    shown = [c for c in changes if c.kind == kind and c.status != "same"]
    for c in shown[:cap]:
        r = c.record
        times = tuple("—" if t is None else fmt_ts(t) for t in (c.ts_a, c.ts_b)) + \
            ("—" if c.delta_ms is None else fmt_duration(c.delta_ms, signed=True),)
        if kind == "commands":
            reason = readable_summary(r.get("reason") or "—")
            rows.append((c.status, _place(r), r["action"], r["rule_id"], *times, reason))
        elif kind == "pages":
            pl = r["payload"]
            rows.append((c.status, f"{pl['component']} / {pl['group']}", pl["class"], r["event_action"],
                         pl["severity"], *times))
        else:
            fmt = {"threshold": lambda v: _fmt_value(r.get("metric"), v, relative_threshold(r))}
            differences = "; ".join(f"{f} {fmt.get(f, str)(x)} → {fmt.get(f, str)(y)}" for f, x, y in c.differences)
            rows.append((c.status, _place(r), r["rule_id"], _tier_mode(r), _fmt_group(r.get("group")),
                         r["transition"], *times, differences or "—"))
    return rows, len(shown) - len(rows)


_CHANGE_HEADERS = {
    "commands": ("change", "feature / phase", "action", "rule", "time A", "time B", "Δt", "reason"),
    "pages": ("change", "feature / phase", "rule", "event", "severity", "time A", "time B", "Δt"),
    "decisions": ("change", "feature / phase", "rule", "tier", "group", "transition", "time A", "time B", "Δt",
                  "differences"),
}


def _render_comparison(diff: Diff, stats_a: ReplayStats, cmp: ComparisonInput, cap: int) -> list[str]:
    first, last = stats_a.first_event_ts, stats_a.last_event_ts
    one_day = first is not None and last is not None and \
        fmt_ts(_ms(first, "first_event_ts"))[:10] == fmt_ts(_ms(last, "last_event_ts"))[:10]

    def when(ms: int) -> str:
        return fmt_ts(ms)[11:16] if one_day else fmt_ts(ms)

    lines = ["", f"## What changes if you ship {cmp.label_b}", "",
             f"**Bottom line:** {_bottom_line(diff, cmp.label_b, cmp.label_a, when)}", "",
             f"A = {cmp.label_a}, B = {cmp.label_b}; Δt = B − A (negative: B acts earlier). Outputs match by "
             "feature, phase, rule id, group and transition or action, whatever ruleset holds the rule."]
    rules_a = {r for rs in stats_a.rulesets for r in rs.rule_ids}
    rules_b = {r for rs in cmp.stats_b.rulesets for r in rs.rule_ids}
    for label, only in ((cmp.label_a, rules_a - rules_b), (cmp.label_b, rules_b - rules_a)):
        if only:
            lines.append(f"Rules only in {label}: {', '.join(sorted(only))}.")
    for kind, title in (("commands", "Commands"), ("pages", "Pages"), ("decisions", "Firings")):
        counts = Counter(c.status for c in diff.select(kind))
        summary = (count_list(counts, ("gained", "lost", "moved", "changed", "same")) if counts
                   else "None on either side")
        lines += ["", f"### {title}", "", f"{summary}."]
        rows, more = _change_rows(diff.changes, kind, cap)
        if rows:
            lines += ["", *md_table(_CHANGE_HEADERS[kind], rows)]
        if more:
            lines.append(f"\n… {more:,} more, see {kind}.jsonl of both runs")
    return lines


def write_report(path, stats: ReplayStats, decisions: Iterable[dict], commands: Iterable[dict],
                 pages: Iterable[dict], compare: ComparisonInput | None = None, *, max_rows: int = DEFAULT_CAP,
                 appendix: Sequence[str] = ()) -> None:
    """Write ``report.md`` to ``path``: header, verdict, comparison (with ``compare``), timelines, then
    ``appendix`` (markdown lines: the Charts section, rendered by ``streams.offline.charts.charts_section``).

    Every iterable is read once. ``max_rows`` caps each table; the rest is counted and pointed to.
    """
    a = _digest(stats, decisions, commands, pages, max_rows, compare is not None, "A")
    sections = [_render_header(stats, [("", stats)] if compare is None else
                               [(compare.label_a, stats), (compare.label_b, compare.stats_b)])]
    if compare is None:
        sections += [_render_verdict(a, None, ("", ""), max_rows), a.promotions.render(max_rows),
                     _render_timelines(a, stats, "", max_rows)]
    else:
        b = _digest(compare.stats_b, compare.decisions_b, compare.commands_b, compare.pages_b, max_rows, True, "B")
        diff = diff_outputs({"decisions": a.notable, "commands": a.commands, "pages": a.page_records},
                            {"decisions": b.notable, "commands": b.commands, "pages": b.page_records})
        labels = (compare.label_a, compare.label_b)
        sections += [_render_verdict(a, b, labels, max_rows), _render_comparison(diff, stats, compare, max_rows),
                     a.promotions.render(max_rows, compare.label_a), b.promotions.render(max_rows, compare.label_b),
                     _render_timelines(a, stats, compare.label_a, max_rows),
                     _render_timelines(b, compare.stats_b, compare.label_b, max_rows)]
    sections.append(list(appendix))
    text = "\n".join(line for section in sections for line in section) + "\n"
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
