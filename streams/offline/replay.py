"""``rollguard replay``: stream JSONL events through one (or two, for ``--compare``) rule sets.

Input is read line by line and handed to the engine in batches, and outputs are written as they are produced, so
memory stays bounded by the engine state (windows), not by the input size. Each event is parsed once, whatever
the number of rule sets compared.
"""

from __future__ import annotations

import gzip
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from rules.control_auth import CONTROL_REASONS, is_control, misplaced
from rules.engine import Engine, EngineConfig, Outputs
from rules.events import Control, Event, EventParser, InvalidEvent, Pseudonymizer, dead_letter
from rules.model import RuleSet
from rules.outputs import iso
from streams.kafka.routing import misrouted
from streams.offline.chart_series import CHART_MODES, SeriesCollector
from streams.offline.charts import (
    CHARTS_DIR, ChartFile, charts_section, clear_charts, write_overlays, write_rule_charts,
)  # fmt: skip
from streams.offline.report import ComparisonInput, ReplayStats, RulesetInfo, write_report

__all__ = ["ReplayResult", "replay", "OUTPUT_FILES", "Source", "FileSource"]

OUTPUT_FILES = ("decisions.jsonl", "commands.jsonl", "pages.jsonl", "deadletter.jsonl")
BATCH = 4096
_NO_END = 1 << 62


@dataclass
class ReplayResult:
    out_dir: Path
    events_read: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    engine: Engine | None = None
    compare_engine: Engine | None = None
    counts: dict[str, int] = field(default_factory=dict)  # outputs written per file, side A
    compare_counts: dict[str, int] = field(default_factory=dict)
    outside_window: int = 0  # valid events skipped by since_ms / until_ms (not in events_read)
    charts: list[ChartFile] = field(default_factory=list)  # PNGs written (rule charts, then --compare overlays)

    @property
    def charts_dir(self) -> Path:
        return self.out_dir / CHARTS_DIR


class _Sink:
    """Writes one side's outputs as JSON lines."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.files = {n: open(folder / n, "wb", buffering=1 << 20) for n in OUTPUT_FILES}
        self.counts = dict.fromkeys(OUTPUT_FILES, 0)

    def write(self, name: str, records: list[dict]) -> None:
        if records:
            self.files[name].write(b"".join(orjson.dumps(r) + b"\n" for r in records))
            self.counts[name] += len(records)

    def outputs(self, out: Outputs) -> None:
        self.write("decisions.jsonl", out.decisions)
        self.write("commands.jsonl", out.commands)
        self.write("pages.jsonl", out.pages)
        self.write("deadletter.jsonl", out.dead_letters)  # events the engine quarantined (ts_outlier)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class _Progress:
    """A progress bar on stderr (bytes of files, messages of topics); the wall clock only paces redraws, never
    touches decisions."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.last = enabled, 0.0
        self.start = time.monotonic()

    def update(self, progress: Callable[[], tuple[int, int]], events: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.25:
            return
        self.last = now
        done, total = progress()
        if total <= 0:
            return
        frac = min(done / total, 1.0)
        rate = events / max(now - self.start, 1e-9)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\rreplay [{bar:<30}] {frac:6.1%}  {events:,} events  {rate:,.0f}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class Source(Protocol):
    """Where a replay reads from: ``(origin, payload)`` pairs in replay order. ``origin`` is what a dead letter
    carries as ``source`` (``{"file", "line"}``, ``{"topic", "partition", "offset"}``); ``payload`` is one message
    (a JSON object or a batch array). ``labels`` name the input in the report; ``progress()`` is (done, total) in
    any unit, total 0 when unknown."""

    labels: tuple[str, ...]

    def __iter__(self) -> Iterator[tuple[dict[str, Any], bytes]]: ...

    def progress(self) -> tuple[int, int]: ...


def _open(path: str) -> tuple[BinaryIO, BinaryIO | None]:
    """(line source, raw file for progress) of an events path; ``-`` is stdin."""
    if path == "-":
        return sys.stdin.buffer, None
    raw = open(path, "rb")
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), raw  # type: ignore[return-value]
    return raw, raw


class FileSource:
    """The non-blank lines of JSONL files in order, origin ``{"file", "line"}``; progress is bytes consumed over
    all files (``-`` is stdin, of unknown size)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self.labels = tuple(self.paths)
        self.total = sum(os.path.getsize(p) for p in self.paths if p != "-")
        self._done_before = 0
        self._raw: BinaryIO | None = None

    def progress(self) -> tuple[int, int]:
        return self._done_before + (self._raw.tell() if self._raw is not None else 0), self.total

    def __iter__(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        for path in self.paths:
            src, self._raw = _open(path)
            try:
                for n, line in enumerate(src, 1):
                    if line.strip():
                        yield {"file": path, "line": n}, line
            finally:
                if self._raw is not None:
                    self._done_before += self._raw.tell()
                    src.close()
                    self._raw = None


def replay(
    rulesets: tuple[RuleSet, ...],
    event_paths: list[str] | None,
    out_dir: str | Path,
    *,
    config: EngineConfig,
    user_key: bytes,
    compare: tuple[RuleSet, ...] | None = None,
    rule_paths: tuple[list[str], list[str] | None] = ([], None),
    progress: bool | None = None,
    allowed_lateness: str = "30s",
    source: Source | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    charts: str = "none",
    operator_keys: dict[str, bytes] | None = None,
) -> ReplayResult:
    """Replay ``event_paths`` (JSONL files) or ``source`` (e.g. :class:`streams.offline.kafka_source.KafkaSource`) into
    ``out_dir``. Events whose event time is outside [``since_ms``, ``until_ms``) (default: the source's own
    ``since_ms`` / ``until_ms`` attributes, if any) are skipped and counted in ``ReplayResult.outside_window``;
    invalid input is dead-lettered whatever its time. ``charts`` (``active``, ``all`` or ``none``, see
    :mod:`streams.offline.charts`) adds PNGs under ``out_dir/charts/`` and a Charts section to the report; the series
    are collected by an engine observer, which decides nothing. ``operator_keys`` (``ROLLGUARD_OPERATOR_KEYS``):
    controls must be signed by one of them, as live (:mod:`rules.control_auth`); None accepts every control
    unchecked."""
    if (source is None) == (event_paths is None):
        raise ValueError("replay needs exactly one of event_paths and source")
    if charts not in CHART_MODES:
        raise ValueError(f"unknown charts mode {charts!r}; choose one of {', '.join(CHART_MODES)}")
    src: Source = FileSource(event_paths) if source is None else source  # type: ignore[arg-type]
    since_ms, until_ms = _bound(since_ms, src, "since_ms"), _bound(until_ms, src, "until_ms")
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise ValueError(f"empty time window: since {since_ms} >= until {until_ms}")
    lo = -1 if since_ms is None else since_ms  # event times are >= 0 (parse_ts)
    hi = _NO_END if until_ms is None else until_ms
    out = Path(out_dir)
    parser = EventParser(Pseudonymizer(user_key), operator_keys)
    control_topic = getattr(src, "control_topic", None)  # --from-kafka: controls only from the control topic
    streams_of = getattr(src, "input_streams", None) or {}  # --from-kafka: each stream's events from its topic only
    sides = (rulesets,) + ((compare,) if compare is not None else ())
    collectors = [SeriesCollector() for _ in sides] if charts != "none" else []
    engines = [Engine(rs, config, observer=collectors[i] if collectors else None) for i, rs in enumerate(sides)]
    sinks = [_Sink(out)] + ([_Sink(out / "compare")] if compare is not None else [])
    bar = _Progress(sys.stderr.isatty() if progress is None else progress)
    result = ReplayResult(out, engine=engines[0], compare_engine=engines[1] if compare is not None else None)
    batch: list = []
    origins: list[dict] = []  # where each item of ``batch`` came from (a row has no attribute for it)
    dead: list[dict] = []

    def emit(i: int, outputs: Outputs) -> None:
        sinks[i].outputs(outputs)
        if i == 0:  # controls the engine refused (rules.control_auth: replayed, stale) count as invalid input
            for d in outputs.dead_letters:
                if d["reason"] in CONTROL_REASONS:
                    result.invalid[d["reason"]] = result.invalid.get(d["reason"], 0) + 1
        if collectors:  # what each firing became (inhibited, held): the charts' list says so
            collectors[i].note_decisions(outputs.decisions)

    def flush() -> None:
        for i, (eng, sink) in enumerate(zip(engines, sinks)):
            emit(i, eng.step(batch, origins))
            sink.write("deadletter.jsonl", dead)
        batch.clear()
        origins.clear()
        dead.clear()

    plain = control_topic is None and not streams_of  # a file: no topic decides what an item may be
    try:
        for origin, payload in src:
            items = parser.parse_rows(payload)  # the hot path: every item valid (rules.events rows)
            if items is not None and plain:  # the same as the loop below does with valid items, fewer steps
                n = len(batch)
                for item in items:
                    if lo <= item.ts < hi:
                        if type(item) is Control:
                            item.origin = origin
                        batch.append(item)
                        origins.append(origin)
                    else:
                        result.outside_window += 1
                result.events_read += len(batch) - n
            else:
                off_topic = control_topic is not None and origin.get("topic") != control_topic
                if items is None:
                    items = parser.parse_items(payload)  # item by item, invalid ones named
                stream = streams_of.get(origin.get("topic"))
                for item in items:
                    if off_topic and is_control(item):
                        item = misplaced(item)
                    elif stream is not None and not isinstance(item, InvalidEvent) and item.type != stream:
                        item = misrouted(item, stream, origin["topic"]) or item
                    if isinstance(item, InvalidEvent):
                        result.events_read += 1
                        result.invalid[item.reason] = result.invalid.get(item.reason, 0) + 1
                        dead.append(dead_letter(item, origin, len(payload), parser.pseudo))
                    elif lo <= item.ts < hi:
                        result.events_read += 1
                        if type(item) is Event or type(item) is Control:
                            item.origin = origin  # a refused control names its line (a row's origin is in origins)
                        batch.append(item)
                        origins.append(origin)
                    else:
                        result.outside_window += 1
            if len(batch) >= BATCH:
                flush()
                bar.update(src.progress, result.events_read)
        flush()
        for i, eng in enumerate(engines):
            emit(i, eng.finish())
    finally:
        bar.close()
        for sink in sinks:
            sink.close()
    result.counts = sinks[0].counts
    if compare is not None:
        result.compare_counts = sinks[1].counts
    labels = src.labels + ((f"event time [{_when(since_ms)}, {_when(until_ms)})",) if lo >= 0 or hi < _NO_END else ())
    _report(result, engines, sinks, labels, rule_paths, allowed_lateness, (charts, collectors))
    return result


def _bound(given: int | None, src: object, name: str) -> int | None:
    own = getattr(src, name, None)
    if given is not None and own is not None and given != own:
        raise ValueError(f"{name} {given} differs from the source's {own}")
    return own if given is None else given


def _when(ms: int | None) -> str:
    return "…" if ms is None else iso(ms)


def _stats(eng: Engine, result: ReplayResult, event_paths, rule_paths, lateness: str) -> ReplayStats:
    st = eng.stats
    return ReplayStats(
        rule_paths=tuple(rule_paths or ()),
        event_paths=tuple(event_paths),
        events_read=result.events_read,
        events_valid=sum(st.events.values()) + st.late + st.duplicates + sum(st.outliers.values()),
        outliers=dict(st.outliers),
        max_clock_skew=None if eng.config.max_clock_skew_ms is None else eng.config.max_clock_skew_ms,
        invalid_by_reason=dict(sorted(result.invalid.items())),
        late=st.late,
        duplicates=st.duplicates,
        first_event_ts=st.min_ts,
        last_event_ts=st.max_ts,
        rulesets=tuple(RulesetInfo(r.name, r.version, tuple(x.id for x in r.rules)) for r in eng.plan.rulesets),
        feature_phases=tuple(sorted((f, p) for f, fs in eng.features.items() for p in fs.phases)),
        allowed_lateness=lateness,
    )


def _read(folder: Path, name: str) -> Iterator[dict]:
    with open(folder / name, "rb") as f:
        for line in f:
            yield orjson.loads(line)


def _report(result, engines, sinks, event_paths, rule_paths, lateness, charts) -> None:
    a, b = sinks[0].folder, (sinks[1].folder if len(sinks) > 1 else None)
    cmp = None
    if b is not None:
        cmp = ComparisonInput(
            label_a=", ".join(rule_paths[0]) or "A",
            label_b=", ".join(rule_paths[1] or []) or "B",
            stats_b=_stats(engines[1], result, event_paths, rule_paths[1], lateness),
            decisions_b=list(_read(b, "decisions.jsonl")),
            commands_b=list(_read(b, "commands.jsonl")),
            pages_b=list(_read(b, "pages.jsonl")),
        )
    commands = list(_read(a, "commands.jsonl"))
    mode, collectors = charts
    clear_charts(a)  # the folder must hold exactly what this report links
    appendix: list[str] = []
    if collectors:
        drawn = write_rule_charts(a, collectors[0], mode, commands)
        overlays = None if cmp is None else write_overlays(a, collectors[0], collectors[1], (commands, cmp.commands_b))
        appendix = charts_section(mode, drawn, overlays, (cmp.label_a, cmp.label_b) if cmp else ("A", "B"))
        result.charts = drawn + (overlays or [])
    write_report(
        a / "report.md",
        _stats(engines[0], result, event_paths, rule_paths[0], lateness),
        _read(a, "decisions.jsonl"),
        commands,
        list(_read(a, "pages.jsonl")),
        compare=cmp,
        appendix=appendix,
    )
