"""Draw replay charts as PNG files with matplotlib's Agg renderer (no display, no pyplot global state).

Two pictures: :func:`draw_rule` — one rule on one feature and phase, its groups as lines, the threshold, pending
(amber) and firing (red) spans shaded, a latched pause/kill hatched until the end ("latched (until resume)"),
commands as vertical lines labelled in a band kept free of curves at the top; :func:`draw_overlay` — the same rule in
two rule sets (``--compare``): both metrics where they differ, and each set's pending / firing runs on its own lane
under the plot. Event time is on the x axis, in UTC.

PNGs carry no ``Software`` tag and nothing else that varies between runs, so the same input gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import matplotlib.dates as mdates
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from rules.events import parse_ts
from streams.offline.chart_series import RuleSeries
from streams.offline.report_format import metric_value as _fmt_value

__all__ = ["MAX_LINES", "draw_rule", "draw_overlay", "top_groups"]

MAX_LINES = 8  # groups drawn per chart; the rest are named in the legend as not drawn
PENDING, FIRING = "#f0a020", "#d62728"
THRESHOLD, THRESHOLD_B = "#7a0010", "#e07000"
COMMAND = "#222222"
_DAY_MS = 86_400_000
_EPOCH = float(mdates.date2num(datetime(1970, 1, 1, tzinfo=timezone.utc)))  # whatever rcParams["date.epoch"] is
_UTC = timezone.utc
_PNG_METADATA = {"Software": None}  # the default names the matplotlib version: bytes would differ across installs
_SIZE, _DPI = (12.0, 4.6), 100
_LABEL_STEP, _LABEL_ROWS = 0.075, 3  # command labels: row height (axes fraction), rows before they repeat
_RC = {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "path.simplify": True, "agg.path.chunksize": 10_000}


def _x(ms) -> np.ndarray | float:
    """Epoch milliseconds → matplotlib date numbers (days)."""
    return _EPOCH + np.asarray(ms, dtype=np.float64) / _DAY_MS


def _deviation(rs: RuleSeries, group: tuple[str, ...]) -> float:
    """How far a group went past the threshold (towards firing); the value range for rules without one."""
    v = np.frombuffer(rs.groups[group].values.v, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return -np.inf
    info = rs.info
    if info.threshold is None or info.op is None:
        return float(v.max() - v.min())
    if info.threshold_high is not None:  # a band: how far into it (between) or out of it (outside)
        inside = np.minimum(v - info.threshold, info.threshold_high - v)
        return float(inside.max() if info.op == "between" else (-inside).max())
    return float((v - info.threshold).max() if info.op.startswith(">") else (info.threshold - v).max())


def top_groups(rs: RuleSeries, limit: int = MAX_LINES) -> list[tuple[str, ...]]:
    """The groups worth a line: those that fired, then pending, then the largest deviation; ties by group."""
    rank = {"firing": 2, "pending": 1, None: 0}

    def key(g: tuple[str, ...]) -> tuple:
        return (-rank[rs.groups[g].states.reached()], -_deviation(rs, g), g)

    return sorted(rs.groups, key=key)[:limit]


def _group_label(rs: RuleSeries, group: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(rs.info.group_by, group)) or "all traffic"


def _new_figure(lanes: bool) -> tuple[Figure, object, object | None]:
    fig = Figure(figsize=_SIZE, dpi=_DPI)
    FigureCanvasAgg(fig)
    if not lanes:
        ax = fig.add_axes((0.085, 0.15, 0.665, 0.72))
        return fig, ax, None
    ax = fig.add_axes((0.085, 0.33, 0.665, 0.54))
    lane = fig.add_axes((0.085, 0.12, 0.665, 0.15), sharex=ax)
    return fig, ax, lane


def _time_axis(ax, window: tuple[int, int], label: bool = True) -> None:
    if window[1] > window[0]:
        ax.set_xlim(_x(window[0]), _x(window[1]))
    locator = mdates.AutoDateLocator(tz=_UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=_UTC))
    if label:
        ax.set_xlabel("event time (UTC)")


def _value_axis(ax, rs: RuleSeries) -> None:
    info = rs.info
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: _fmt_value(info.value_metric, y, info.relative)))
    ax.set_ylabel(info.compared, fontsize=8)
    ax.grid(True, color="#dddddd", linewidth=0.6)


def _lines(ax, rs: RuleSeries, groups: Sequence[tuple[str, ...]], style: str, suffix: str) -> list:
    colors = matplotlib.colormaps["tab10"].colors
    handles = []
    for i, g in enumerate(groups):
        gs = rs.groups[g]
        if gs.conditions is not None:  # a compound rule: one line per condition, its number in the label
            handles += _condition_lines(ax, rs, g, gs, i, style, suffix)
            continue
        t, v = gs.values.points()
        (line,) = ax.plot(_x(np.frombuffer(t, dtype=np.int64)), np.frombuffer(v, dtype=np.float64), style,
                          color=colors[i % len(colors)], linewidth=1.1, label=_group_label(rs, g) + suffix)  # fmt: skip
        handles.append(line)
        if gs.low is not None:
            handles += _interval(ax, gs, colors[i % len(colors)], suffix)
    return handles


def _condition_lines(ax, rs: RuleSeries, g: tuple[str, ...], gs, i: int, style: str, suffix: str) -> list:
    """A compound rule's group: each condition's value, in the group's colour, one dash pattern a condition."""
    color = matplotlib.colormaps["tab10"].colors[i % 10]
    dashes = ("-", "--", "-.", ":")
    handles = []
    for n, series in enumerate(gs.conditions):
        t, v = series.points()
        line_style = style if style != "-" else dashes[n % len(dashes)]
        (line,) = ax.plot(_x(np.frombuffer(t, dtype=np.int64)), np.frombuffer(v, dtype=np.float64), line_style,
                          color=color, linewidth=1.1, label=f"{_group_label(rs, g)} #{n + 1}{suffix}")  # fmt: skip
        handles.append(line)
    return handles


def _interval(ax, gs, color, suffix: str) -> list:
    """A compare rule's interval for the difference: a band between its bounds (thin lines where the bounds were
    reduced to different instants)."""
    tl, lo = gs.low.points()
    th, hi = gs.high.points()
    tl, lo = np.frombuffer(tl, dtype=np.int64), np.frombuffer(lo, dtype=np.float64)
    th, hi = np.frombuffer(th, dtype=np.int64), np.frombuffer(hi, dtype=np.float64)
    if not np.isfinite(lo).any():
        return []
    if len(tl) == len(th) and (tl == th).all():
        band = ax.fill_between(_x(tl), lo, hi, color=color, alpha=0.18, linewidth=0, step="post",
                               label="interval" + suffix)  # fmt: skip
        return [band]
    ax.plot(_x(tl), lo, ":", color=color, linewidth=0.8)
    (line,) = ax.plot(_x(th), hi, ":", color=color, linewidth=0.8, label="interval bounds" + suffix)
    return [line]


def _threshold(ax, rs: RuleSeries, color: str, style: str, suffix: str) -> list:
    info = rs.info
    if info.conditions:  # a compound rule: each condition's line, numbered as its value's line
        return [ax.axhline(line, color=color, linestyle=style, linewidth=1.0 + 0.3 * (n == 0),
                           label=f"#{n + 1} {op} {_fmt_value(metric, line, False)}{suffix}")
                for n, (metric, op, line) in enumerate(info.conditions)]  # fmt: skip
    if info.threshold is None:
        return []
    text = f"threshold {info.op} {_fmt_value(info.metric, info.threshold, info.relative)}{suffix}"
    if info.threshold_high is not None:  # a band: both lines, one label
        text = (f"{info.op} {_fmt_value(info.metric, info.threshold, info.relative)} – "
                f"{_fmt_value(info.metric, info.threshold_high, info.relative)}{suffix}")  # fmt: skip
        ax.axhline(info.threshold_high, color=color, linestyle=style, linewidth=1.3)
    lines = [ax.axhline(info.threshold, color=color, linestyle=style, linewidth=1.3, label=text)]
    if info.resolve_threshold is not None:  # hysteresis: a firing instance holds until the value is back over this
        text = f"resolves at {_fmt_value(info.metric, info.resolve_threshold, info.relative)}{suffix}"
        lines.append(ax.axhline(info.resolve_threshold, color=color, linestyle=":", linewidth=1.0, label=text))
    return lines


def _shade(ax, spans: Sequence[tuple[int, int, str]]) -> None:
    for start, end, state in spans:
        ax.axvspan(_x(start), _x(end), color=FIRING if state == "firing" else PENDING,
                   alpha=0.22 if state == "firing" else 0.25, linewidth=0, zorder=0)  # fmt: skip


def _commands(axes: Sequence, commands: Sequence[Mapping], window: tuple[int, int], style: str = "-",
              suffix: str = "", row: int = 0) -> list:
    """Commands as vertical lines on every axis of ``axes``, labelled once at the top of the first, in the headroom
    :func:`_headroom` keeps free of data: horizontal, on an opaque white box, starting at the line and running
    away from the nearer edge. ``row`` stacks the labels of a second set of commands (``--compare``) below."""
    handles = []
    span = max(window[1] - window[0], 1)
    for n, c in enumerate(commands):
        ms = parse_ts(c["ts"])
        x = _x(ms)
        for i, ax in enumerate(axes):
            ax.axvline(x, color=COMMAND, linestyle=style, linewidth=1.2, zorder=3)
            if i == 0:
                right = (ms - window[0]) / span > 0.6  # near the right edge the label runs leftwards
                y = 0.985 - _LABEL_STEP * (row + n % _LABEL_ROWS)
                ax.text(x, y, f" {c['action'].upper()} ({c['rule_id']}){suffix} ", transform=ax.get_xaxis_transform(),
                        va="top", ha="right" if right else "left", fontsize=7, color=COMMAND, zorder=5, clip_on=True,
                        bbox={"facecolor": "white", "alpha": 1.0, "edgecolor": COMMAND, "linewidth": 0.5,
                              "pad": 1.5})  # fmt: skip
                if not handles:
                    handles.append(Line2D([], [], color=COMMAND, linestyle=style, label=f"command{suffix}"))
    return handles


def _headroom(ax, label_rows: int) -> None:
    """Raise the top of the value axis so that ``label_rows`` rows of command labels sit above every curve."""
    if label_rows:
        lo, hi = ax.get_ylim()
        room = label_rows * _LABEL_STEP + 0.03  # the share of the axes height the labels need
        ax.set_ylim(lo, hi + (hi - lo) * room / (1 - room))


def _latched(ax, rs: RuleSeries, window: tuple[int, int]) -> list:
    """Hatch the stretch where an enforced pause/kill stayed latched (firing until an operator resume, whatever
    the metric did) and say so in the legend; nothing for other rules."""
    since = rs.latched_since()
    if since is None:
        return []
    end = max(window[1], since) + rs.info.every_ms
    ax.axvspan(_x(since), _x(end), facecolor="none", edgecolor=FIRING, hatch="///", linewidth=0, alpha=0.6,
               zorder=1)  # fmt: skip
    return [Patch(facecolor=FIRING, alpha=0.35, edgecolor=FIRING, hatch="///", linewidth=0,
                  label="latched (until resume)")]  # fmt: skip


def _legend(ax, handles: list, hidden: int, total: int) -> None:
    if hidden:
        handles.append(Patch(color="none", label=f"+{hidden} more groups not drawn\n(top {total - hidden} of {total} "
                                                 "by state, deviation)"))  # fmt: skip
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)


def _title(ax, rule_id: str, rs: RuleSeries, feature: str, phase: str, ruleset: str) -> None:
    info = rs.info
    shadow = " (shadow)" if info.mode == "shadow" else ""
    ax.set_title(f"{rule_id} · {info.tier}{shadow} · {feature} / {phase}\nrule set {ruleset} · {info.metric}",
                 loc="left", y=1.0)  # fmt: skip  (an explicit y skips matplotlib's costly title placement)


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, metadata=_PNG_METADATA)


def draw_rule(path: Path, rs: RuleSeries, key, commands: Sequence[Mapping], window: tuple[int, int]) -> None:
    """One rule on one feature / phase (``key`` a :class:`~streams.offline.chart_series.ChartKey`) as a PNG at ``path``;
    ``window`` is the event-time range on the x axis (ms), the same for every chart of a replay."""
    with matplotlib.rc_context(_RC):
        fig, ax, _ = _new_figure(lanes=False)
        groups = top_groups(rs)
        _shade(ax, rs.spans())
        handles = _lines(ax, rs, groups, "-", "")
        handles += _threshold(ax, rs, THRESHOLD, "--", "")
        handles += [Patch(color=PENDING, alpha=0.4, label="pending"), Patch(color=FIRING, alpha=0.35, label="firing")]
        handles += _latched(ax, rs, window)
        handles += _commands([ax], commands, window)
        _headroom(ax, min(len(commands), _LABEL_ROWS))
        _value_axis(ax, rs)
        _time_axis(ax, window)
        _title(ax, key.rule_id, rs, key.feature, key.phase, key.ruleset)
        _legend(ax, handles, len(rs.groups) - len(groups), len(rs.groups))
        _save(fig, path)


def _same_values(a: RuleSeries, b: RuleSeries) -> bool:
    if a.groups.keys() != b.groups.keys():
        return False
    for g, ga in a.groups.items():
        gb = b.groups[g]
        if ga.values.t != gb.values.t or ga.values.v.tobytes() != gb.values.v.tobytes():  # NaN-safe
            return False
    return True


def _lane(lane, y: float, spans: Sequence[tuple[int, int, str]]) -> None:
    bars = [(_x(s), _x(e) - _x(s)) for s, e, _ in spans]
    colors = [FIRING if st == "firing" else PENDING for _, _, st in spans]
    if bars:
        lane.broken_barh(bars, (y - 0.35, 0.7), facecolors=colors, linewidth=0)


def draw_overlay(path: Path, key: tuple[str, str, str], base: RuleSeries | None, candidate: RuleSeries | None,
                 labels: tuple[str, str], commands: tuple[Sequence[Mapping], Sequence[Mapping]],
                 window: tuple[int, int]) -> None:  # fmt: skip
    """The rule ``key`` = (rule id, feature, phase) in the base and the candidate rule set as one PNG: the base
    metric (and the candidate's, dashed, where its values differ), both thresholds, and each set's pending and
    firing runs on its own lane (``labels``: the lane names, base first)."""
    rule_id, feature, phase = key
    with matplotlib.rc_context(_RC):
        fig, ax, lane = _new_figure(lanes=True)
        main = base if base is not None else candidate
        handles: list = []
        groups = top_groups(main)
        handles += _lines(ax, main, groups, "-", f" ({labels[0] if base is not None else labels[1]})")
        if base is not None and candidate is not None and not _same_values(base, candidate):
            shown = [g for g in groups if g in candidate.groups] or top_groups(candidate)
            handles += _lines(ax, candidate, shown, "--", f" ({labels[1]})")
        if base is not None:
            handles += _threshold(ax, base, THRESHOLD, "--", f" ({labels[0]})")
        if candidate is not None and (base is None or (base.info.op, base.info.threshold) !=
                                      (candidate.info.op, candidate.info.threshold)):  # fmt: skip
            handles += _threshold(ax, candidate, THRESHOLD_B, ":", f" ({labels[1]})")
        for y, side in ((1.0, base), (0.0, candidate)):
            if side is not None:
                _lane(lane, y, side.spans())
            else:
                lane.text(0.5, y, "rule not in this rule set", transform=lane.get_yaxis_transform(), ha="center",
                          va="center", fontsize=7, color="#777777")  # fmt: skip
        handles += [Patch(color=PENDING, label="pending"), Patch(color=FIRING, label="firing")]
        handles += _commands([ax, lane], commands[0], window, "-", f" ({labels[0]})")
        handles += _commands([ax, lane], commands[1], window, "--", f" ({labels[1]})",
                             row=min(len(commands[0]), _LABEL_ROWS))
        _headroom(ax, sum(min(len(c), _LABEL_ROWS) for c in commands))
        lane.set_ylim(-0.6, 1.6)
        lane.set_yticks([1.0, 0.0], list(labels))
        lane.grid(True, axis="x", color="#dddddd", linewidth=0.6)
        ax.tick_params(labelbottom=False)
        _value_axis(ax, main)
        _time_axis(lane, window)
        tiers = " → ".join(dict.fromkeys(s.info.tier for s in (base, candidate) if s is not None))
        ax.set_title(f"{rule_id} · {tiers} · {feature} / {phase}\n{labels[0]} vs {labels[1]} · {main.info.metric}",
                     loc="left", y=1.0)  # fmt: skip  (an explicit y skips matplotlib's costly title placement)
        _legend(ax, handles, len(main.groups) - len(groups), len(main.groups))
        _save(fig, path)
