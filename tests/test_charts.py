"""Replay charts: one valid PNG per rule that was pending or firing (or every rule), overlays for --compare, every
PNG linked from report.md, spikes that survive downsampling, and decisions that charts never change.

One generated latency incident (6 h at 1 interaction/s) is replayed through a small rule set: a kill and a warning
that fire, a grouped rule, a baseline rule and an error rule that stay quiet; the candidate moves the kill's
threshold, drops the warning and adds a pause.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import matplotlib.image
import orjson
import pytest

from rules.engine import EngineConfig
from rules.loader import load_rules
import numpy as np

from engine_kit import rules as load_pack
from engine_kit import traffic
from rules.engine import Engine
from streams.offline import chart_render
from streams.offline.chart_render import MAX_LINES, top_groups
from streams.offline.chart_series import (
    ChartKey,
    GroupSeries,
    MinMaxSeries,
    RuleInfo,
    RuleSeries,
    SeriesCollector,
    StateSpans,
    reduce_min_max,
)
from streams.offline.charts import ChartFile, charts_section
from streams.cli import main
from streams.offline.replay import replay
from streams.offline.scenario import generate, scenario_from_args, write_jsonl

KEY = b"charts-test-key-0123456789"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE = """
version: 1
name: launch
features: ["email-reply"]
rules:
  - {id: p95-kill, tier: kill, metric: latency_p95, op: ">", threshold: 1200, window: 15m, for: 30m}
  - {id: p95-warn, tier: investigate, metric: latency_p95, op: ">", threshold: 900, window: 5m, for: 5m}
  - {id: acceptance-by-platform, tier: investigate, metric: acceptance_rate, op: "<", threshold: 0.05, window: 1h,
     every: 5m, group_by: [platform]}
  - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 5m}
  - {id: traffic-vs-hour-before, tier: investigate, metric: requests, op: "<", threshold: -0.6, window: 15m,
     baseline: 1h}
"""
CANDIDATE = (
    BASE.replace("name: launch", "name: launch-v2")
    .replace("threshold: 1200, window: 15m, for: 30m", "threshold: 1000, window: 15m, for: 10m")
    .replace('{id: p95-warn, tier: investigate, metric: latency_p95, op: ">", threshold: 900, window: 5m, for: 5m}',
             '{id: p95-pause, tier: pause, metric: latency_p95, op: ">", threshold: 1100, window: 10m}')
)  # fmt: skip
LIVE_STATES = {"pending", "firing", "inhibited", "held"}  # decision transitions of an instance pending or firing
FIRED = {"firing", "inhibited", "held"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Replays of the same events: ``active`` and ``none`` through the CLI (stdout kept), ``all`` and ``compare``
    through :func:`replay`; ``none`` starts from a folder holding a stale chart."""
    root = tmp_path_factory.mktemp("charts")
    (root / "base.yaml").write_text(BASE)
    (root / "candidate.yaml").write_text(CANDIDATE)
    scenario = scenario_from_args("latency_spike", duration_ms=6 * 3_600_000, mean_rate_per_s=1.0, seed=5)
    write_jsonl(generate(scenario), root / "events.jsonl")
    args = ["replay", "--rules", str(root / "base.yaml"), "--events", str(root / "events.jsonl"), "--no-progress"]
    stdout = {}
    (root / "none" / "charts").mkdir(parents=True)
    (root / "none" / "charts" / "stale.png").write_bytes(PNG_SIGNATURE)
    for name, extra in (("active", []), ("none", ["--charts", "none"])):  # the CLI default is active
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main([*args, "--out", str(root / name), *extra]) == 0
        stdout[name] = buf.getvalue()
    rulesets = load_rules([str(root / "base.yaml")])
    common = dict(config=EngineConfig(), user_key=KEY, progress=False)
    results = {
        "all": replay(rulesets, [str(root / "events.jsonl")], root / "all", charts="all", **common),
        "compare": replay(rulesets, [str(root / "events.jsonl")], root / "compare", charts="active",
                          compare=load_rules([str(root / "candidate.yaml")]), **common),
    }  # fmt: skip
    return root, stdout, results, rulesets


def pngs(folder: Path) -> list[Path]:
    return sorted((folder / "charts").rglob("*.png"))


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def keys_with(folder: Path, transitions: set[str]) -> set[tuple]:
    """(ruleset, rule, feature, phase) with a decision of one of ``transitions``, from the replay's own output."""
    return {(d["ruleset"], d["rule_id"], d["feature"], d["phase"]) for d in records(folder / "decisions.jsonl")
            if d["transition"] in transitions}  # fmt: skip


def links(report: Path) -> list[str]:
    return re.findall(r"\]\((charts/[^)]+\.png)\)", report.read_text())


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, (path, image.shape)


def test_active_draws_one_valid_png_per_rule_that_was_pending_or_firing(runs):
    root, stdout, _, _ = runs
    files = pngs(root / "active")
    expected = keys_with(root / "active", LIVE_STATES)
    assert len(expected) >= 2  # the incident makes the kill and the warning fire: the count is not vacuous
    assert len(files) == len(expected)
    for f in files:
        assert_valid_png(f)
    named = {f.name.split("__")[1] for f in files}  # file names are ruleset__rule__feature__phase-hash.png
    assert named == {rule for _, rule, _, _ in expected}
    assert f"charts: {root / 'active' / 'charts'}/ ({len(files)} PNGs, linked" in stdout["active"]


def test_all_draws_every_evaluated_rule(runs):
    root, _, results, rulesets = runs
    files = pngs(root / "all")
    expected = {(rs.name, r.id) for rs in rulesets for r in rs.rules}  # one feature and phase in the events
    assert len(files) == len(expected) == len(results["all"].charts)
    assert {(c.ruleset, c.rule_id) for c in results["all"].charts} == expected
    for f in files:
        assert_valid_png(f)
    assert {c.reached for c in results["all"].charts} >= {"firing", "quiet"}


def test_same_input_gives_byte_identical_pngs(runs):
    root, *_ = runs
    active = {f.name: f.read_bytes() for f in pngs(root / "active")}
    again = {f.name: f.read_bytes() for f in pngs(root / "all") if f.name in active}  # another replay, same charts
    assert again.keys() == active.keys() and again == active


def test_none_writes_no_png_removes_stale_ones_and_decides_the_same(runs):
    root, stdout, _, _ = runs
    assert pngs(root / "none") == [] and not (root / "none" / "charts").exists()
    assert "charts:" not in stdout["none"]
    for name in ("decisions.jsonl", "commands.jsonl", "pages.jsonl"):
        assert (root / "none" / name).read_bytes() == (root / "active" / name).read_bytes(), name
    plain, charted = (root / "none" / "report.md").read_text(), (root / "active" / "report.md").read_text()
    assert "## Charts" not in plain
    assert charted.startswith(plain) and charted[len(plain):].startswith("\n## Charts\n")  # the only difference


@pytest.mark.parametrize("run", ["active", "all", "compare"])
def test_report_links_every_png_and_every_link_resolves(runs, run):
    root, *_ = runs
    linked = links(root / run / "report.md")
    assert len(linked) == len(set(linked))
    assert sorted(root / run / link for link in linked) == pngs(root / run)
    text = (root / run / "report.md").read_text()
    section = text[text.index("## Charts"):]
    assert section.index("### kill") < section.index("### investigate")  # grouped by tier, worst first


def test_compare_draws_one_overlay_per_rule_that_fired_in_either_set(runs):
    root, _, results, _ = runs
    fired = {key[1:] for side in (root / "compare", root / "compare" / "compare") for key in keys_with(side, FIRED)}
    overlays = sorted((root / "compare" / "charts" / "compare").glob("*.png"))
    assert {"p95-pause", "p95-warn", "p95-kill"} <= {rule for rule, _, _ in fired}  # gained, lost and moved
    assert len(overlays) == len(fired)
    assert {(c.rule_id, c.feature, c.phase) for c in results["compare"].charts if "/compare/" in c.path} == fired
    for f in overlays:
        assert_valid_png(f)
    assert "base absent, candidate firing" in (root / "compare" / "report.md").read_text()  # p95-pause


def test_unknown_charts_mode_is_refused(runs, tmp_path):
    root, _, _, rulesets = runs
    with pytest.raises(ValueError, match="charts mode"):
        replay(rulesets, [str(root / "events.jsonl")], tmp_path, config=EngineConfig(), user_key=KEY, charts="some")
    assert main(["replay", "--rules", str(root / "base.yaml"), "--events", str(root / "events.jsonl"),
                 "--out", str(tmp_path), "--charts", "some"]) == 2  # fmt: skip


# --------------------------------------------------------------------------------------- bounded series

SPIKES = [  # name, points, cap, spike index
    ("under the cap: kept as is", 500, 2000, 123),
    ("a week of minutes", 7 * 1440, 2000, 5000),
    ("a spike at the very start", 50_000, 500, 0),
    ("a spike at the very end", 50_000, 500, 49_999),
    ("a tiny cap", 10_000, 8, 777),
]


@pytest.mark.parametrize("name, n, cap, spike", SPIKES, ids=[s[0] for s in SPIKES])
def test_downsampling_keeps_the_spike_and_the_dip(name, n, cap, spike):
    series = MinMaxSeries(cap)
    values = [math.sin(i / 40) for i in range(n)]
    values[spike], values[(spike + n // 2) % n] = 99.0, -99.0
    for i, v in enumerate(values):
        series.add(60_000 * i, v)
    t, v = series.points()
    assert len(t) <= cap
    assert max(v) == 99.0 and t[list(v).index(99.0)] == 60_000 * spike
    assert min(v) == -99.0
    assert list(t) == sorted(t)
    if n <= cap:
        assert list(v) == values


def test_a_bin_with_no_value_keeps_one_gap_marker():
    t, v = reduce_min_max([0, 5, 10, 15, 20], [1.0, math.nan, math.nan, math.nan, 3.0], 10)
    assert list(t) == [0, 10, 20] and math.isnan(v[1])


SPANS = [  # name, states at t = 0, 1, 2, ..., expected spans with step 1
    ("pending then firing then back", "ippffi", [(1, 3, "pending"), (3, 5, "firing")]),
    ("still firing at the end", "iff", [(1, 3, "firing")]),
    ("insufficient is at rest", "pnfn", [(0, 1, "pending"), (2, 3, "firing")]),
    ("never active", "iinii", []),
]
CODES = {"i": "inactive", "p": "pending", "f": "firing", "n": "insufficient"}


@pytest.mark.parametrize("name, states, expected", SPANS, ids=[s[0] for s in SPANS])
def test_states_are_kept_as_spans(name, states, expected):
    spans = StateSpans()
    for t, code in enumerate(states):
        spans.add(t, CODES[code])
    assert spans.spans(step=1) == expected


def test_a_flapping_rule_keeps_a_bounded_number_of_spans():
    spans = StateSpans(cap=10)
    for t in range(1000):
        spans.add(t * 2, "firing" if t % 2 else "inactive")
    out = spans.spans(step=2)
    assert len(out) <= 10
    assert out[0][0] == 2 and out[-1][1] == 2000 and {s for _, _, s in out} == {"firing"}


def test_lines_are_capped_and_groups_that_fired_come_first():
    info = RuleInfo("kill", "enforce", "latency_p95", ">", 1000.0, 60_000, ("region",), "value")
    rs = RuleSeries(info)
    for i in range(MAX_LINES + 4):
        g = rs.groups[(f"r{i:02}",)] = GroupSeries(MinMaxSeries())
        g.values.add(0, 900.0 + 10 * i)  # r11 deviates most, r00 least
        g.states.add(0, "inactive")
    rs.groups[("r00",)].states.add(60_000, "firing")
    shown = top_groups(rs)
    assert len(shown) == MAX_LINES
    assert shown[0] == ("r00",) and shown[1:3] == [("r11",), ("r10",)]


# ------------------------------------------------------------------------------- what a chart says a rule did

# A kill that latches at minute 3, and an investigate rule that fires at minute 6 under it: inhibited.
LATCH_PACK = """
version: 1
name: t
features: ["f"]
rules:
  - {id: kill-errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
  - {id: watch-errors, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10,
     for: 3m}
"""


@pytest.fixture(scope="module")
def latched():
    """The series of the latch pack over errors from minute 2 to 8, then good traffic: the kill stays latched."""
    collector = SeriesCollector()
    eng = Engine(load_pack(LATCH_PACK), EngineConfig(allowed_lateness_ms=0), observer=collector)
    commands = []
    for out in (eng.step(traffic("..xxxxxx....")), eng.finish()):
        collector.note_decisions(out.decisions)
        commands += out.commands
    return collector, commands


def test_an_inhibited_rule_is_listed_as_inhibited_not_firing(latched):
    collector, _ = latched
    kill, watch = (collector.rules[ChartKey("t", r, "f", "p")] for r in ("kill-errors", "watch-errors"))
    assert watch.reached() == "firing"  # its lifecycle fired...
    assert watch.outcome() == "inhibited"  # ...but the policy recorded it under the kill: no page
    assert kill.outcome() == "firing"
    line = charts_section("active", [ChartFile("charts/w.png", "investigate", "watch-errors", "f", "p", "t",
                                               watch.outcome())])  # fmt: skip
    assert line[-1].endswith("· t · inhibited")


def _draw(monkeypatch, rs: RuleSeries, commands, window):
    """Draw ``rs`` and return the figure instead of saving it."""
    figures = []
    monkeypatch.setattr(chart_render, "_save", lambda fig, path: figures.append(fig))
    chart_render.draw_rule(Path("unused.png"), rs, ChartKey("t", "r", "f", "p"), commands, window)
    return figures[0]


def test_a_latched_kill_is_hatched_and_the_legend_says_latched_until_resume(latched, monkeypatch):
    collector, commands = latched
    window = (collector.first, collector.last)
    for rule, is_latched in (("kill-errors", True), ("watch-errors", False)):
        rs = collector.rules[ChartKey("t", rule, "f", "p")]
        assert (rs.latched_since() is not None) == is_latched
        fig = _draw(monkeypatch, rs, commands, window)
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert ("latched (until resume)" in labels) == is_latched, (rule, labels)


def test_a_shadow_kill_never_latches(latched):
    collector, _ = latched
    kill = collector.rules[ChartKey("t", "kill-errors", "f", "p")]
    shadow = RuleSeries(RuleInfo("kill", "shadow", "error_rate", ">", 0.5, 60_000, (), "value"), kill.groups,
                        kill.outcomes)  # fmt: skip
    assert shadow.latched_since() is None


def test_command_labels_sit_clear_of_every_curve(monkeypatch):
    """The worst case: the curve peaks exactly where the rollback happens, at the top of its range."""
    info = RuleInfo("kill", "enforce", "error_rate", ">", 0.05, 60_000, ("platform",), "value")
    rs = RuleSeries(info)
    t0 = 1_793_577_600_000
    for g, scale in (("desktop", 1.0), ("mobile", 0.8)):
        series = rs.groups[(g,)] = GroupSeries(MinMaxSeries())
        for i in range(120):
            series.values.add(t0 + i * 60_000, scale * (0.3 if i == 60 else 0.01 + 0.001 * (i % 7)))
            series.states.add(t0 + i * 60_000, "firing" if i >= 58 else "inactive")
    commands = [{"ts": "2026-11-02T01:00:00Z", "action": "rollback", "rule_id": "r"},
                {"ts": "2026-11-02T01:50:00Z", "action": "pause_rollout", "rule_id": "q"}]  # fmt: skip
    fig = _draw(monkeypatch, rs, commands, (t0, t0 + 119 * 60_000))
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text().strip().startswith(("ROLLBACK", "PAUSE_ROLLOUT"))]
    assert len(labels) == 2
    points = np.concatenate([ax.transData.transform(line.get_xydata()) for line in ax.get_lines()
                             if len(line.get_xdata()) > 2])  # the curves, not the threshold and command lines
    for label in labels:
        box = label.get_window_extent(renderer)
        inside = [p for p in points if box.x0 <= p[0] <= box.x1 and box.y0 <= p[1] <= box.y1]
        assert not inside, (label.get_text(), inside[:3])
        assert label.get_bbox_patch().get_facecolor()[3] == 1.0  # an opaque box


def test_chart_counts_are_pluralised():
    one = ChartFile("charts/a.png", "kill", "r", "f", "p", "t", "firing")
    assert charts_section("active", [one])[3].startswith("1 PNG in `charts/`, one per rule set")
    assert charts_section("active", [one, one])[3].startswith("2 PNGs in `charts/`")
