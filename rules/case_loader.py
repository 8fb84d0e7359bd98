r"""Read and validate a rule unit-test cases file into :class:`rules.cases.CasesFile`, reporting every error at once.

Like :mod:`rules.loader` (whose wording it shares), loading never stops at the first problem: :func:`load_cases`
raises :class:`~rules.cases.CasesInvalid` with every located error, ``file:line: test 'name': message``, after those
of the rule files it names. Unknown keys are errors (with a did-you-mean hint), events are validated exactly as live
events are (CONTRACT section 1), series are expanded here (:mod:`rules.series`), and every expectation must name a
rule of the loaded rule sets at one of its evaluation instants.

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "r.yaml").write_text("version: 1\nname: demo\nfeatures: [f]\nrules:\n"
...     "  - {id: errors, tier: kill, metric: error_rate, op: '>', threshold: 0.5, window: 1m}\n")
>>> _ = (d / "bad.yaml").write_text("rule_files: [r.yaml]\ntests:\n  - name: t\n    feature: f\n"
...     "    series: [{type: interaction, to: 5m, evry: 1s}]\n    expect_no: [erors]\n")
>>> try:
...     load_cases(d / "bad.yaml")
... except CasesInvalid as e:
...     print("\n".join(str(x).split(": ", 1)[1] for x in e.errors))
test 't': tests[0].series[0]: unknown key 'evry' (did you mean 'every'?)
test 't': tests[0].series[0]: give exactly one of every (a duration > 0) or count
test 't': tests[0].expect_no[0].rule: no rule 'erors' in demo (did you mean 'errors'?)
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rules.cases import (
    COMMANDS, DEFAULT_START, FIRES, PROMOTION, TRANSITIONS, Case, CaseError, CasesFile, CasesInvalid, Expectation,
    format_offset,
)  # fmt: skip
from rules.durations import DurationError, format_duration, parse_duration
from rules.engine import EngineConfig
from rules.events import KNOWN_FIELDS, Control, Event, EventParser, Pseudonymizer, parse_ts
from rules.exceptions import InvalidEvent

# the loader's private wording helpers, so that rule files and cases files word their errors alike
from rules.loader import RuleError, RulesInvalid, load_rules
from rules.located_yaml import LocatedMap, YamlSyntaxError, describe, did_you_mean, line_of, parse_documents
from rules.model import RuleSet
from rules.plan import Plan
from rules.promotion import SIGNOFF_TRANSITIONS
from rules.promotion_loader import PROMOTION_RULE_ID
from rules.series import MAX_VALUES, NotationError, SeriesSpec, parse_layout

__all__ = ["load_cases"]

_FILE_KEYS = ("rule_files", "start", "feature", "phase", "allowed_lateness", "max_kills_per_hour", "tests")
_TEST_KEYS = ("name", "feature", "phase", "allowed_lateness", "max_kills_per_hour", "events", "series", "expect",
              "expect_no", "exact")  # fmt: skip
_EXPECT_KEYS = ("at", "from", "to", "rule", "transition", "ruleset", "tier", "mode", "feature", "phase", "group",
                "command", "page")  # fmt: skip
_EXPECT_NO_KEYS = ("rule", "transition", "ruleset", "tier", "mode", "feature", "phase", "group", "from", "to")
_SERIES_KEYS = ("type", "feature", "phase", "from", "to", "every", "count", "users", "pool", "segment", "fields")
_POOL = re.compile(r"[a-z0-9_-]{1,32}")
_SERIES_FIELDS = {
    "interaction": ("outcome", "latency_ms", "tokens_in", "tokens_out", "cost_usd", "confidence", "flags", "user",
                    "model_version", "prompt_version", "variant", "session_ms"),
    "feedback": ("kind", "label", "score", "interaction_id", "user", "model_version", "prompt_version", "variant"),
    "eval": ("suite", "score", "n", "passed", "model_version", "prompt_version", "variant"),
}  # fmt: skip
_CHOICES = {"transition": TRANSITIONS, "tier": ("investigate", "pause", "kill"), "mode": ("enforce", "shadow"),
            "command": tuple(COMMANDS), "page": ("trigger", "resolve", "none"), "exact": ("listed", "all"),
            "type": ("interaction", "feedback", "eval")}  # fmt: skip
_EVENT_KEYS = tuple(sorted(KNOWN_FIELDS | {"at"}))
_PARSER = EventParser(Pseudonymizer(b"rollguard-rules-test"))  # fixed key: user pseudonyms only need to be distinct


def load_cases(path: str | Path) -> CasesFile:
    """Load and validate a cases file, its rule files and its inputs; raises :class:`CasesInvalid` with every error."""
    path = Path(path)
    try:
        docs = parse_documents(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CasesInvalid([CaseError(str(path), None, None, f"cannot read: {exc}")]) from None
    except YamlSyntaxError as exc:
        raise CasesInvalid([CaseError(str(path), exc.line, None, f"invalid YAML: {exc.problem}")]) from None
    c = _Checker(str(path))
    if len(docs) != 1 or not isinstance(docs[0].value, LocatedMap):
        c.error(docs[1].line if len(docs) > 1 else None, "expected one YAML mapping with rule_files and tests")
        raise CasesInvalid(c.errors)
    cf = c.file(docs[0].value, path.parent)
    for m in docs[0].maps_with_duplicates:  # those keys() did not already report, e.g. inside a ratio or a segment
        if id(m) not in c.visited:
            for key, line, first in m.duplicates:
                c.errors.append(CaseError(c.source, line, None, f"duplicate key {key!r} (first on line {first})"))
    errors = c.rule_errors + sorted(c.errors, key=lambda e: e.line or 0)
    if errors:
        raise CasesInvalid(errors)
    return cf


def _yaml_time(value: Any) -> Any:
    """YAML reads an unquoted ``2026-11-02T00:00:00Z`` as a datetime: back to the RFC 3339 text it was (one without
    an offset stays invalid, as in an event)."""
    if isinstance(value, datetime):
        text = value.isoformat()
        return text.replace("+00:00", "Z") if value.tzinfo is not None else text
    return value


@dataclass
class _Defaults:
    """What a test inherits from the file (and a series or event from its test)."""

    feature: str | None
    phase: str | None
    lateness: int | None
    kills: int | None


class _Checker:
    """Validates one cases file, collecting every error; the typed readers return None after reporting."""

    def __init__(self, file: str) -> None:
        self.source, self.test = file, None
        self.errors: list[CaseError] = []
        self.rule_errors: list[RuleError] = []
        self.rulesets: tuple[RuleSet, ...] | None = None
        self.controls: list[tuple[Control, int | None, str]] = []  # with line and path, for check_controls
        self.visited: set[int] = set()  # mappings whose duplicate keys keys() reported

    def error(self, line: int | None, message: str) -> None:
        self.errors.append(CaseError(self.source, line, self.test, message))

    def keys(self, m: Any, allowed: tuple[str, ...], where: str, required: tuple[str, ...] = ()) -> bool:
        if not isinstance(m, LocatedMap):
            self.error(getattr(m, "line", None), f"{where}: expected a mapping, got {describe(m)}")
            return False
        self.visited.add(id(m))
        for key, line, first in m.duplicates:
            self.error(line, f"{where}: duplicate key {key!r} (first on line {first})")
        for key in m:
            if key not in allowed:
                self.error(line_of(m, key), f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}")
        for key in required:
            if key not in m:
                self.error(m.line, f"{where}: missing required key {key!r}")
        return True

    def duration(self, m: LocatedMap, key: str, where: str, default: int | None = None) -> int | None:
        value = m.get(key)
        if key not in m:
            return default
        if value == 0 and type(value) is int:
            return 0
        try:
            if not isinstance(value, str):
                raise DurationError(f"expected a duration such as '30s', '5m' or '2h', got {describe(value)}")
            return parse_duration(value)
        except DurationError as exc:
            self.error(line_of(m, key), f"{where}.{key}: {exc}")
            return None

    def choice(self, m: LocatedMap, key: str, where: str) -> str | None:
        options, value = _CHOICES[key], m.get(key)
        if key not in m or value in options:
            return value
        hint = did_you_mean(value, options) if isinstance(value, str) else ""
        self.error(line_of(m, key), f"{where}.{key}: must be one of {', '.join(options)}; got {describe(value)}{hint}")
        return None

    def whole(self, m: LocatedMap, key: str, where: str, default: int | None, lo: int = 0) -> int | None:
        value = m.get(key, default)
        if key in m and (type(value) is not int or value < lo):
            self.error(line_of(m, key), f"{where}.{key}: expected a whole number >= {lo}, got {describe(value)}")
            return None
        return value

    def name(self, m: LocatedMap, key: str, where: str, default: str | None) -> str | None:
        value = m.get(key, default)
        if key in m and not (isinstance(value, str) and value):
            self.error(line_of(m, key), f"{where}.{key}: expected a non-empty string, got {describe(value)}")
            return None
        return value

    def items(self, m: LocatedMap, key: str, where: str) -> list:
        value = m.get(key, [])
        if not isinstance(value, list):
            self.error(line_of(m, key), f"{where}.{key}: expected a list, got {describe(value)}")
            return []
        return value

    def file(self, doc: LocatedMap, base: Path) -> CasesFile:
        self.keys(doc, _FILE_KEYS, "file", ("rule_files", "tests"))
        files = doc.get("rule_files")
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            self.error(line_of(doc, "rule_files"), f"rule_files: expected a list of paths, got {describe(files)}")
        else:
            try:
                self.rulesets = load_rules([base / f for f in files])
            except RulesInvalid as exc:
                self.rule_errors = exc.errors
        try:
            start = parse_ts(_yaml_time(doc.get("start", DEFAULT_START)))
        except ValueError as exc:
            self.error(line_of(doc, "start"), f"start: {exc}")
            start = parse_ts(DEFAULT_START)
        cf = CasesFile(self.source, self.rulesets or (), start)
        defaults = _Defaults(self.name(doc, "feature", "file", None), self.name(doc, "phase", "file", None),
                             self.duration(doc, "allowed_lateness", "file", 30_000),
                             self.whole(doc, "max_kills_per_hour", "file", 5))  # fmt: skip
        tests = doc.get("tests")
        if not isinstance(tests, list) or not tests:
            self.error(line_of(doc, "tests"), f"tests: expected a non-empty list of tests, got {describe(tests)}")
            return cf
        names: dict[str, int | None] = {}
        for i, item in enumerate(tests):
            name = item.get("name") if isinstance(item, LocatedMap) else None
            self.test = name if isinstance(name, str) else None
            if self.test in names:
                self.error(line_of(tests, i), f"name already used by the test on line {names[self.test]}")
            elif self.test is not None:
                names[self.test] = line_of(tests, i)
            case = self.case(item, f"tests[{i}]", i, start, defaults)
            if case is not None:
                cf.cases.append(case)
        self.test = None
        return cf

    def case(self, t: Any, w: str, i: int, start: int, file: _Defaults) -> Case | None:
        before = len(self.errors)
        if not self.keys(t, _TEST_KEYS, w, ("name",)):
            return None
        if "name" in t and not isinstance(t["name"], str):
            self.error(line_of(t, "name"), f"{w}.name: expected a string, got {describe(t['name'])}")
        d = _Defaults(self.name(t, "feature", w, file.feature), self.name(t, "phase", w, file.phase),
                      self.duration(t, "allowed_lateness", w, file.lateness),
                      self.whole(t, "max_kills_per_hour", w, file.kills))  # fmt: skip
        if not any(k in t for k in ("events", "series")):
            self.error(t.line, f"{w}: no inputs: give events, series or both")
        if not any(k in t for k in ("expect", "expect_no", "exact")):
            self.error(t.line, f"{w}: nothing to check: give expect, expect_no or exact (a test must be able to fail)")
        self.controls = []
        inputs = self.events(t, w, i, start, d) + self.series(t, w, i, start, d)
        inputs.sort(key=lambda e: e.ts)  # stable: the engine sees event-time order, so nothing is ever late
        self.check_controls(inputs)
        checks = {}
        for key in ("expect", "expect_no"):
            items = self.items(t, key, w)
            checks[key] = [self.expectation(x, items, j, f"{w}.{key}[{j}]", start, key == "expect_no")
                           for j, x in enumerate(items)]  # fmt: skip
        exact = self.choice(t, "exact", w)
        if len(self.errors) > before or d.lateness is None or d.kills is None:
            return None
        config = EngineConfig(allowed_lateness_ms=d.lateness, max_kills_per_hour=d.kills)
        return Case(t["name"], t.line, inputs, checks["expect"], checks["expect_no"], exact, config)

    def events(self, t: LocatedMap, w: str, i: int, start: int, d: _Defaults) -> list[Event | Control]:
        out = []
        for j, e in enumerate(self.items(t, "events", w)):
            where = f"{w}.events[{j}]"
            if not self.keys(e, _EVENT_KEYS, where):
                continue
            if ("at" in e) == ("ts" in e):
                self.error(e.line, f"{where}: give exactly one of at (offset from start) or ts (event time)")
                continue
            obj = {k: _yaml_time(v) if k == "ts" else v for k, v in e.items() if k != "at"}
            if "at" in e:
                at = self.duration(e, "at", where)
                if at is None:
                    continue
                obj["ts"] = start + at
            obj.setdefault("event_id", f"t{i}-e{j}")
            if d.feature:
                obj.setdefault("feature", d.feature)
            if d.phase and (obj.get("type") != "control" or obj.get("action") == "signoff"):  # a resume without phase
                # resumes every phase; a signoff names one
                obj.setdefault("phase", d.phase)
            try:
                out.append(_PARSER.parse_obj(obj))
            except InvalidEvent as exc:
                self.error(e.line, f"{where}: {exc.detail}")
            else:
                if out[-1].type == "control":
                    self.controls.append((out[-1], e.line, where))
        return out

    def check_controls(self, inputs: list[Event | Control]) -> None:
        """A control acts when it arrives, on what was decided by then. Instants are decided as the watermark passes
        them, and the watermark waits for every event type the feature's rules read: a test that never sends one of
        them decides nothing before its end, so its resume would find nothing to resume."""
        if not self.controls or self.rulesets is None:
            return
        plan = Plan(self.rulesets)
        for ctl, line, where in self.controls:
            if ctl.action != "resume":  # a sign-off counts from its own time, whatever was decided by then
                continue
            before = {e.type for e in inputs if e.feature == ctl.feature and e.ts <= ctl.ts}
            missing = sorted(plan.profile(ctl.feature).sources - before)
            if missing:
                what = " and ".join(missing)
                message = (f"the rules of {ctl.feature!r} read {what} events too, and none comes before this control: "
                           "nothing is decided before the end of the input (the watermark waits for every event type), "
                           f"so it would act on nothing; add {what} inputs before it")  # fmt: skip
                self.error(line, f"{where}: {message}")

    def series(self, t: LocatedMap, w: str, i: int, start: int, d: _Defaults) -> list[Event]:
        out: list[Event] = []
        for j, s in enumerate(self.items(t, "series", w)):
            where = f"{w}.series[{j}]"
            before = len(self.errors)
            if not self.keys(s, _SERIES_KEYS, where, ("type", "to")):
                continue
            kind = self.choice(s, "type", where)
            lo, hi = self.duration(s, "from", where, 0), self.duration(s, "to", where)
            every, count = self.duration(s, "every", where), self.whole(s, "count", where, None, lo=1)
            users = self.whole(s, "users", where, None, lo=1)
            pool = self.name(s, "pool", where, None)
            if pool is not None and (not _POOL.fullmatch(pool) or "users" not in s):
                message = "a pool name ([a-z0-9_-]{1,32}) goes with users: the series that name it share those ids"
                self.error(line_of(s, "pool"), f"{where}.pool: {message}")
            feature, phase = self.name(s, "feature", where, d.feature), self.name(s, "phase", where, d.phase)
            if feature is None and "feature" not in s:
                self.error(s.line, f"{where}: no feature: set it on the series, the test or the file")
            if ("every" in s) == ("count" in s) or every == 0:
                self.error(s.line, f"{where}: give exactly one of every (a duration > 0) or count")
            if lo is not None and hi is not None and hi <= lo:
                self.error(line_of(s, "to"), f"{where}.to: must be after from ({format_offset(lo)})")
            layouts: dict[str, dict] = {"segment": {}, "fields": {}}
            for key in ("segment", "fields"):
                m = s.get(key)
                allowed = tuple(m or ()) if key == "segment" else _SERIES_FIELDS.get(kind, ())
                if key in s and kind is not None and self.keys(m, allowed, f"{where}.{key}"):
                    for name, raw in m.items():
                        try:
                            layouts[key][name] = parse_layout(name if key == "fields" else "segment", raw)
                        except NotationError as exc:
                            self.error(line_of(m, name), f"{where}.{key}.{name}: {exc}")
            if len(self.errors) > before:
                continue
            if kind == "feedback" and "kind" not in layouts["fields"]:
                self.error(s.line, f"{where}: feedback series need fields.kind (suggestion, thumbs, review, ...)")
                continue
            spec = SeriesSpec(kind, feature, phase or "default", start + lo, start + hi, every, count, users,
                              layouts["segment"], layouts["fields"], f"t{i}-s{j}", pool)  # fmt: skip
            if spec.n > MAX_VALUES:
                self.error(s.line, f"{where}: {spec.n:,} events is over {MAX_VALUES:,}; use a longer every")
                continue
            out += self.generate(spec, s, where, start)
        return out

    def generate(self, spec: SeriesSpec, s: LocatedMap, where: str, start: int) -> list[Event]:
        out = []
        obj: dict = {}
        try:
            for obj in spec.events():
                out.append(_PARSER.parse_obj(obj))
        except NotationError as exc:
            self.error(s.line, f"{where}: {exc}")
        except InvalidEvent as exc:  # the first bad event; the rest of the series is not checked
            self.error(s.line, f"{where}: the event at {format_offset(obj['ts'] - start)}: {exc.detail}")
        return out

    def expectation(self, x: Any, items: list, j: int, where: str, start: int, negative: bool) -> Expectation | None:
        if negative and isinstance(x, str):  # expect_no: [rule-id, ...] is short for [{rule: rule-id}, ...]
            x = LocatedMap(rule=x)
            x.line, x.key_lines, x.duplicates = line_of(items, j), {}, []
        before = len(self.errors)
        allowed = _EXPECT_NO_KEYS if negative else _EXPECT_KEYS
        if not self.keys(x, allowed, where, ("rule",) if negative else ("rule", "transition")):
            return None
        if not negative and ("at" in x) == ("from" in x or "to" in x):
            self.error(x.line, f"{where}: give at (an evaluation instant) or a span (from and/or to), not both")
        for key in ("transition", "tier", "mode", "command", "page"):
            self.choice(x, key, where)
        for key in ("ruleset", "feature", "phase", "rule"):
            self.name(x, key, where, None)
        group = x.get("group")
        if "group" in x and not (isinstance(group, dict) and all(isinstance(v, str) for v in group.values())):
            message = f"expected a mapping of segment key to value, got {describe(group)}"
            self.error(line_of(x, "group"), f"{where}.group: {message}")
        at, lo, hi = (self.duration(x, k, where) for k in ("at", "from", "to"))
        transitions = frozenset([x["transition"]] if x.get("transition") in TRANSITIONS else FIRES)
        keys = ("ruleset", "tier", "mode", "feature", "phase", "group")
        filters = tuple((k, dict(x[k]) if k == "group" else x[k]) for k in keys if k in x)
        command, page = COMMANDS.get(x.get("command")), x.get("page")
        expectation = Expectation(x.line, x.get("rule"), transitions, at, lo, hi, filters, command, page)
        if isinstance(expectation.rule, str) and isinstance(dict(filters).get("ruleset", ""), str):
            self.check_rule(expectation, x, where, start, glob=negative)
        return None if len(self.errors) > before else expectation

    def check_rule(self, exp: Expectation, x: LocatedMap, where: str, start: int, glob: bool) -> None:
        """The rule (and rule set) must exist in the loaded rule files, and ``at`` must be one of its instants."""
        if self.rulesets is None:
            return  # the rule files did not load; their errors say why
        ruleset = dict(exp.filters).get("ruleset")
        sets = [rs for rs in self.rulesets if ruleset in (None, rs.name)]
        if not sets:
            hint = did_you_mean(ruleset, [rs.name for rs in self.rulesets])
            self.error(line_of(x, "ruleset"), f"{where}.ruleset: no rule set {ruleset!r} in rule_files{hint}")
            return
        same = fnmatch.fnmatchcase if glob else str.__eq__
        rules = [r for rs in sets for r in rs.rules if same(r.id, exp.rule)]
        promos = [rs.promotion for rs in sets if rs.promotion is not None and same(PROMOTION_RULE_ID, exp.rule)]
        if promos and not rules:  # the decisions of a promotion block (rules.promotion)
            if exp.at is not None and exp.transitions <= PROMOTION - set(SIGNOFF_TRANSITIONS) and all(
                    (start + exp.at) % p.every_ms for p in promos):
                every = format_duration(promos[0].every_ms)
                message = f"{format_offset(exp.at)} is not an instant of the promotion (every {every})"
                self.error(line_of(x, "at"), f"{where}.at: {message}")
            return
        if not rules:
            hint = did_you_mean(exp.rule, sorted({r.id for rs in sets for r in rs.rules}))
            names = ", ".join(rs.name for rs in sets)
            self.error(line_of(x, "rule"), f"{where}.rule: no rule {exp.rule!r} in {names}{hint}")
        elif exp.at is not None and "resolved" not in exp.transitions:  # an operator resume resolves at any time
            if all((start + exp.at) % r.every_ms for r in rules):
                every = format_duration(rules[0].every_ms)
                message = f"{format_offset(exp.at)} is not an evaluation instant of {exp.rule} (every {every})"
                self.error(line_of(x, "at"), f"{where}.at: {message}")
