"""Load rule files (CONTRACT §3) into trusted :mod:`rules.model` objects, or report every error at once.

Like promtool, the loader never stops at the first problem: it checks all files and all rules and raises one
:class:`RulesInvalid` carrying every :class:`RuleError`, each located with file, line, ruleset and rule id::

    rules/email.yaml:14: ruleset 'email-reply' rule 'latency-spike': unknown key 'treshold' (did you mean 'threshold'?)

A file may hold several YAML documents (``---``); each is one rule set. ``defaults:`` apply where they make
sense: ``window`` to threshold rules, ``confidence`` to rate-metric rules without ``across`` or ``baseline``,
``keep_firing_for`` to ``investigate`` rules, everything else to every rule (``resolve_threshold`` is per rule
only). A compound rule (``all:`` / ``any:``) is loaded condition by condition, each as a threshold rule of the
rule's shared keys and its own (``rules.compound_loader``). A rule set's ``version`` is the
sha256 of ``json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` in UTF-8, so
comments and formatting do not change it.

>>> [rs] = load_rules_text('''
... version: 1
... name: demo
... features: ["email-*"]
... rules:
...   - {id: errors, tier: pause, metric: error_rate, op: ">", threshold: 0.05, window: 5m}
... ''')
>>> rs.rules[0].window_ms, rs.rules[0].every_ms, rs.rules[0].line
(300000, 60000, 6)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rules.compare_loader import load_compare, needs_srm, srm_companion
from rules.compound_loader import COMBINE_KEYS, condition_items
from rules.drift_loader import DRIFT_KEYS, load_drift
from rules.durations import format_duration
from rules.exceptions import RollguardError
from rules.file_kinds import has_tests_key, is_cases_file, is_cases_name
from rules.loader_scope import RuleError, Scope
from rules.located_yaml import LocatedMap, YamlSyntaxError, describe, line_of, parse_documents
from rules.metric_names import COHORT_METRICS, METRICS, parse_metric
from rules.model import (
    BAND_OPS,
    DEFAULT_EVERY_MS,
    DEFAULT_FOR_MS,
    DEFAULT_KEEP_FIRING_FOR_MS,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_MODE,
    PHASE_NAME,
    Rule,
    RuleSet,
    summary_problems,
)
from rules.promotion_loader import load_promotion
from rules.rule_checks import band, check_cohort, check_resolve, rule_action
from rules.where_loader import load_where

__all__ = ["RuleError", "RulesInvalid", "load_rules", "load_rules_text", "CATALOG"]

# The bundled rule catalogue; package data of ``rules``, so it is found in an installed wheel too.
CATALOG = Path(__file__).resolve().parent / "catalog"

_TOP_KEYS = ("version", "name", "features", "phases", "defaults", "rules", "promotion")
_DEFAULT_KEYS = (
    "every", "window", "for", "keep_firing_for", "min_samples", "confidence", "mode", "group_by", "runbook",
    "max_starved",
)  # fmt: skip
_RULE_KEYS = (
    "id", "tier", "mode", "metric", "op", "threshold", "drift", "window", "every", "for", "keep_firing_for",
    "min_samples", "confidence", "group_by", "baseline", "trailing_baseline", "across", "summary", "runbook",
    "resolve_threshold", "compare", "where", "max_starved", "all", "any", "action",
)  # fmt: skip
_BLOCKS = ("drift", "compare", "where", "all", "any")  # keys with a structure of their own, read by their own loaders
_NOT_FOR_DRIFT = ("window", "baseline", "trailing_baseline", "across", "confidence", "resolve_threshold", "compare", "where",
                  "max_starved")  # fmt: skip
_RATE_METRICS = ", ".join(name + (":<field>:<x>" if name.startswith("share_") else ":<param>" if m.parameterised else "")
                          for name, m in METRICS.items() if m.is_rate and name not in COHORT_METRICS)  # fmt: skip

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
_FEATURE_GLOB = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,128}")


class RulesInvalid(RollguardError):
    """Rule files failed validation. ``errors`` holds every problem, in file and line order; ``str()`` lists
    them one per line. Fix them all and load again: nothing from an invalid load is used."""

    def __init__(self, errors: Sequence[RuleError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


def load_rules(paths: Sequence[str | Path], skipped: list[str] | None = None) -> tuple[RuleSet, ...]:
    """Load rule files and folders (a folder's ``*.yaml``/``*.yml`` files, sorted, not recursive).

    A folder's ``rollguard rules test`` cases files (``*.test.yaml``, or a top-level ``tests:`` key; see
    :mod:`rules.file_kinds`) are not rule files and are skipped; their paths are appended to ``skipped`` when given.
    A cases file named explicitly is an error that says to run it with ``rules test``.
    Raises :class:`RulesInvalid` with every error of every file, a missing path included; nothing else.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    errors: list[RuleError] = []
    seen_files: set[str] = set()
    seen_names: dict[str, str] = {}
    rulesets: list[RuleSet] = []
    for given in paths:
        files = _expand(str(given), errors)
        in_folder = Path(given).is_dir()
        skipped_here: list[str] = []
        for file in files:
            if in_folder and is_cases_name(file):
                skipped_here.append(file)
                continue
            try:
                resolved = str(Path(file).resolve())
                raw = Path(file).read_bytes()
            except (OSError, ValueError, RuntimeError) as exc:
                errors.append(RuleError(file, None, None, None, f"cannot read: {exc}"))
                continue
            if resolved in seen_files:  # named and also reached via its folder: load it once
                continue
            seen_files.add(resolved)
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                line = raw[: exc.start].count(b"\n") + 1
                errors.append(RuleError(file, line, None, None, f"not UTF-8 text: {exc.reason} at byte {exc.start}"))
                continue
            if in_folder and is_cases_file(file, text):
                skipped_here.append(file)
                continue
            if has_tests_key(text):  # named explicitly: say what it is rather than "unknown key 'tests'"
                errors.append(RuleError(file, None, None, None, "a `rules test` cases file (top-level tests:), "
                                        f"not a rule file: run it with `rollguard rules test {file}`"))
                continue
            rulesets.extend(_load_text(text, file, seen_names, errors))
        if in_folder and files and len(skipped_here) == len(files):
            errors.append(RuleError(str(given), None, None, None, f"folder holds no rule files, only "
                                    f"{len(files)} `rules test` cases file(s)"))
        if skipped is not None:
            skipped.extend(skipped_here)
    if errors:
        raise RulesInvalid(errors)
    return tuple(rulesets)


def load_rules_text(text: str, source: str = "<string>") -> tuple[RuleSet, ...]:
    """Load the rule sets in YAML ``text`` (one per document); ``source`` names it in errors and ``RuleSet.source``."""
    errors: list[RuleError] = []
    rulesets = _load_text(text, source, {}, errors)
    if errors:
        raise RulesInvalid(errors)
    return tuple(rulesets)


def _expand(given: str, errors: list[RuleError]) -> list[str]:
    """The rule files a path names: itself, or a folder's ``*.yaml``/``*.yml`` files."""
    path = Path(given)
    try:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                errors.append(RuleError(given, None, None, None, "folder holds no *.yaml or *.yml files"))
            return [str(p) for p in found]
        if path.exists():
            return [given]
        errors.append(RuleError(given, None, None, None, "no such file or folder"))
    except (OSError, ValueError) as exc:
        errors.append(RuleError(given, None, None, None, f"cannot read: {exc}"))
    return []


def _load_text(text: str, source: str, seen_names: dict[str, str], errors: list[RuleError]) -> list[RuleSet]:
    checker = _Checker(source, seen_names)
    rulesets = []
    try:
        documents = parse_documents(text)
    except YamlSyntaxError as exc:
        documents = []
        checker.errors.append(RuleError(source, exc.line, None, None, f"invalid YAML: {exc.problem}"))
    else:
        if not documents:
            message = "empty file: expected a rule set (version: 1, name, features, rules)"
            checker.errors.append(RuleError(source, None, None, None, message))
    for document in documents:
        ruleset = checker.document(document.value, document.line)
        if ruleset is not None:
            rulesets.append(ruleset)
        name = document.value.get("name") if isinstance(document.value, dict) else None
        checker.report_unvisited_duplicates(document.maps_with_duplicates, name if isinstance(name, str) else None)
    # By line, so a report reads top to bottom; the sort is stable, so problems on one line keep check order.
    errors.extend(sorted(checker.errors, key=lambda error: error.line or 0))
    return rulesets


class _Checker:
    """Validates the documents of one file; ``seen_names`` (ruleset name -> where) spans the whole load."""

    def __init__(self, source: str, seen_names: dict[str, str]) -> None:
        self.source, self.seen_names = source, seen_names
        self.errors: list[RuleError] = []
        self.visited: set[int] = set()

    def report_unvisited_duplicates(self, maps: list[LocatedMap], ruleset: str | None) -> None:
        """Duplicate keys in mappings no check looked at (say, under an unknown key) are errors too."""
        for m in maps:
            if id(m) not in self.visited:
                for key, line, first in m.duplicates:
                    Scope(self, ruleset).error(line, f"duplicate key {key!r} (first on line {first})")

    def document(self, doc: Any, line: int) -> RuleSet | None:
        before = len(self.errors)
        if not isinstance(doc, LocatedMap):
            message = f"a rule set must be a mapping with version, name, features and rules; got {describe(doc)}"
            Scope(self).error(line, message)
            return None
        name = doc.get("name") if isinstance(doc.get("name"), str) else None
        scope = Scope(self, name)
        scope.keys(doc, _TOP_KEYS, "")
        for key in ("version", "name", "features", "rules"):
            if key not in doc:
                scope.error(doc.line, f"missing required key {key!r}")
        if "version" in doc and not (type(doc["version"]) is int and doc["version"] == 1):
            scope.error(line_of(doc, "version"), f"version: must be 1, got {describe(doc['version'])}")
        if "name" in doc and scope.string(doc, "name", "name", _NAME) is not None:
            if name in self.seen_names:
                scope.error(line_of(doc, "name"), f"ruleset name {name!r} is already used at {self.seen_names[name]}")
            else:
                self.seen_names[name] = f"{self.source}:{line_of(doc, 'name')}"
        features = phases = None
        if "features" in doc:
            features = scope.names(doc, "features", "features", _FEATURE_GLOB, '["email-reply"] or ["*"]')
        if doc.get("phases") is not None:
            phases = scope.names(doc, "phases", "phases", PHASE_NAME, '["closed_beta"]')
        defaults = self._defaults(scope, doc)
        rules = self._rules(name, doc, defaults)
        promotion = load_promotion(scope, doc, phases, rules) if doc.get("promotion") is not None else None
        if len(self.errors) > before or name is None or features is None:
            return None
        try:
            canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:  # unreachable for a valid document; kept so loading never crashes
            scope.error(line, f"cannot compute the rule set version: {exc}")
            return None
        version = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return RuleSet(name=name, version=version, features=features, phases=phases, rules=rules, source=self.source,
                       promotion=promotion)  # fmt: skip

    def _defaults(self, scope: Scope, doc: LocatedMap) -> dict[str, Any]:
        """The parsed defaults; a key that is present but invalid maps to None (already reported)."""
        d = doc.get("defaults")
        if d is None:
            return {}
        if not isinstance(d, LocatedMap):
            message = f"expected a mapping such as {{every: 1m}}, got {describe(d)}"
            scope.error(line_of(doc, "defaults"), f"defaults: {message}")
            return {}
        not_here = {k: "cannot be set in defaults; set it on each rule" for k in _RULE_KEYS if k not in _DEFAULT_KEYS}
        scope.keys(d, _DEFAULT_KEYS, "defaults: ", not_here)
        values = {key: scope.field(d, key, f"defaults.{key}") for key in _DEFAULT_KEYS if key in d}
        every = values["every"] if "every" in d else DEFAULT_EVERY_MS
        # A rule inheriting both a duration and every from here is checked once, here, not once per rule.
        for key in ("window", "for", "keep_firing_for"):
            if every and values.get(key) and values[key] % every:
                message = f"{format_duration(values[key])} is not a multiple of every ({format_duration(every)})"
                scope.error(line_of(d, key), f"defaults.{key}: {message}")
        return values

    def _rules(self, name: str | None, doc: LocatedMap, defaults: dict[str, Any]) -> tuple[Rule, ...]:
        items = doc.get("rules")
        if "rules" not in doc:
            return ()
        if not isinstance(items, list) or not items:
            message = f"rules: expected a non-empty list of rules, got {describe(items)}"
            Scope(self, name).error(line_of(doc, "rules"), message)
            return ()
        first_lines: dict[str, int] = {}
        rules = []
        for index, item in enumerate(items):
            if not isinstance(item, LocatedMap):
                message = f"rules[{index}]: expected a rule (a mapping with id, tier, ...), got {describe(item)}"
                Scope(self, name).error(line_of(items, index), message)
                continue
            rule = self._rule(name, item, defaults, first_lines)
            if rule is not None:
                rules.append(rule)
                if needs_srm(rule):
                    rules.append(srm_companion(rule))
        return tuple(rules)

    def _rule(
        self, name: str | None, item: LocatedMap, defaults: dict[str, Any], first_lines: dict[str, int]
    ) -> Rule | None:
        rule_id = item.get("id") if isinstance(item.get("id"), str) else None
        scope = Scope(self, name, rule_id)
        before = len(self.errors)
        scope.keys(item, _RULE_KEYS, "", {k: "belongs under drift:" for k in DRIFT_KEYS})
        for key in ("id", "tier"):
            if key not in item:
                scope.error(item.line, f"missing required key {key!r}")
        v = {key: scope.field(item, key, key) for key in _RULE_KEYS if key in item and key not in _BLOCKS}
        if v.get("id") is not None:
            if rule_id in first_lines:
                message = f"duplicate rule id {rule_id!r} (first on line {first_lines[rule_id]})"
                scope.error(line_of(item, "id"), message)
            else:
                first_lines[rule_id] = item.line
        if any(k in item for k in COMBINE_KEYS):
            return self._compound(name, item, defaults, scope, v, before)

        metric_keys = [key for key in ("metric", "op", "threshold") if key in item]
        is_drift = "drift" in item
        drift = load_drift(scope, item) if is_drift else None
        if is_drift and metric_keys:
            scope.error(item.line, "a rule has either metric, op and threshold or drift, not both")
        elif not is_drift and not metric_keys:
            scope.error(item.line, "a rule needs metric, op and threshold (a threshold rule) or drift (a drift rule)")
        for key in ("metric", "op", "threshold") if metric_keys and not is_drift else ():
            if key not in item:
                scope.error(item.line, f"missing required key {key!r} (threshold rules need metric, op and threshold)")
        for key in _NOT_FOR_DRIFT if is_drift and not metric_keys else ():
            if key in item:
                scope.error(line_of(item, key), f"{key}: drift rules take no {key}; it applies to threshold rules only")
        threshold_rule = bool(metric_keys) and not is_drift

        def pick(key: str, builtin: Any) -> tuple[Any, str]:
            if key in item:
                return v[key], "rule"
            return (defaults[key], "defaults") if key in defaults else (builtin, "built-in")

        every, every_from = pick("every", DEFAULT_EVERY_MS)
        for_ms, for_from = pick("for", DEFAULT_FOR_MS)
        window, window_from = pick("window", None) if threshold_rule else (None, "")
        if window_from == "built-in":
            scope.error(item.line, "missing window: threshold rules need one (set window on the rule or in defaults)")
        keep_ms, keep_from = DEFAULT_KEEP_FIRING_FOR_MS, "built-in"
        if "keep_firing_for" in item:
            keep_ms, keep_from = v["keep_firing_for"], "rule"
            if keep_ms and v.get("tier") in ("pause", "kill"):
                message = f"only tier investigate resolves; {v['tier']} latches until an operator resumes"
                scope.error(line_of(item, "keep_firing_for"), f"keep_firing_for: {message}")
        elif v.get("tier") == "investigate" and "keep_firing_for" in defaults:
            keep_ms, keep_from = defaults["keep_firing_for"], "defaults"
        # baseline: the same window that long earlier; trailing_baseline: the average window over that long before
        baseline_key = "trailing_baseline" if "trailing_baseline" in item else "baseline"
        baseline = v.get(baseline_key) if threshold_rule else None
        if "baseline" in item and "trailing_baseline" in item:
            message = "give one of baseline (the same window that long earlier) and trailing_baseline (its average)"
            scope.error(line_of(item, "trailing_baseline"), f"trailing_baseline: {message}")
        durations = [("window", window, window_from), ("for", for_ms, for_from)]
        durations += [("keep_firing_for", keep_ms, keep_from), (baseline_key, baseline, "rule")]
        for key, value, source in durations:
            # Pairs that both come from defaults were checked there already.
            if every and value and "rule" in (source, every_from) and value % every:
                suffix = ", from defaults" if every_from == "defaults" else ""
                message = f"{format_duration(value)} is not a multiple of every ({format_duration(every)}{suffix})"
                scope.error(line_of(item, key if source == "rule" else "every"), f"{key}: {message}")

        metric = v.get("metric") if threshold_rule else None
        base = parse_metric(metric)[0] if metric is not None else None
        is_rate = base is not None and METRICS[base].is_rate
        cohort = base in COHORT_METRICS
        group_by, _ = pick("group_by", ())
        across = v.get("across") if threshold_rule else None
        if across is not None and group_by and across in group_by:
            message = f"{across!r} is also in group_by; a spread across it needs all its values in one group"
            scope.error(line_of(item, "across"), f"across: {message}")
        confidence = None
        if threshold_rule and v.get("confidence") is not None:
            confidence = v["confidence"]
            if metric is not None and not is_rate:
                message = f"applies only to rate metrics ({_RATE_METRICS}); {metric} is not one"
                scope.error(line_of(item, "confidence"), f"confidence: {message}")
            for key in ("across", "baseline", "trailing_baseline"):
                if key in item:
                    scope.error(line_of(item, "confidence"), f"confidence: cannot be combined with {key}")
        elif (threshold_rule and is_rate and not cohort and not any(k in item for k in ("across", baseline_key, "compare"))
              and v.get("op") not in BAND_OPS):  # fmt: skip
            confidence = defaults.get("confidence")
        if baseline is not None and "across" in item:
            message = "a spread across segment values has no baseline; give one or the other"
            scope.error(line_of(item, baseline_key), f"{baseline_key}: {message}")
        if baseline_key == "trailing_baseline" and metric is not None and parse_metric(metric)[0] == "active_users":
            message = ("distinct users do not add up over days, so their average window over a longer span is not "
                       "defined; compare with the same window earlier (baseline) instead")
            scope.error(line_of(item, "trailing_baseline"), f"trailing_baseline: {message}")
        if cohort:
            check_cohort(scope, item, metric, every)
        threshold, threshold_high = band(scope, item, v)
        where = load_where(scope, item) if threshold_rule and "where" in item else ()
        compare = None
        if threshold_rule and "compare" in item:
            base = parse_metric(metric)[0] if metric is not None else None
            compare = load_compare(scope, item, base, group_by or ())
        plain_rate = is_rate and "compare" not in item and baseline_key not in item  # a fraction, not a change
        for line in (threshold, threshold_high) if plain_rate else ():
            if line is not None and not 0 <= line <= 1:
                guess = f" (did you mean {line / 100:g}?)" if 1 < line <= 100 else ""
                message = f"{metric} is a fraction in [0, 1], so {line:g} can never be crossed{guess}"
                scope.error(line_of(item, "threshold"), f"threshold: {message}")
        resolve = v.get("resolve_threshold") if threshold_rule else None
        if resolve is not None and v.get("op") not in BAND_OPS:
            check_resolve(scope, item, v, resolve, threshold, is_rate and baseline_key not in item)
        if v.get("summary") is not None:
            for problem in summary_problems(v["summary"], drift=is_drift and not metric_keys):
                scope.error(line_of(item, "summary"), f"summary: {problem}")

        # An invalid default (None, reported at defaults) fails every rule set it is in; build nothing from it.
        if len(self.errors) > before or None in defaults.values():
            return None
        return Rule(
            id=rule_id, tier=v["tier"], mode=pick("mode", DEFAULT_MODE)[0], metric=metric, op=v.get("op"),
            threshold=threshold, threshold_high=threshold_high, drift=drift, window_ms=window, every_ms=every, for_ms=for_ms,
            keep_firing_for_ms=keep_ms, min_samples=pick("min_samples", DEFAULT_MIN_SAMPLES)[0],
            confidence=confidence, group_by=group_by, baseline_ms=baseline,
            baseline_trailing=baseline is not None and baseline_key == "trailing_baseline", across=across, summary=v.get("summary"),
            runbook=pick("runbook", None)[0], resolve_threshold=resolve, compare=compare, where=where or (),
            max_starved_ms=pick("max_starved", None)[0] if threshold_rule else None, action=rule_action(scope, item, v),
            line=item.line,
        )  # fmt: skip

    def _compound(self, name: str | None, item: LocatedMap, defaults: dict[str, Any], scope: Scope, v: dict,
                  before: int) -> Rule | None:  # fmt: skip
        """A compound rule (``all:`` / ``any:``): each condition loaded as a threshold rule of the rule's shared keys
        and its own (``rules.compound_loader``), renamed ``<id>#<n>``."""
        parsed = condition_items(scope, item)
        conditions = []
        for i, ci in enumerate(parsed[1] if parsed is not None else ()):
            rule = self._rule(name, ci, defaults, {}) if ci is not None else None
            if rule is not None:
                conditions.append(rule.model_copy(update={"id": f"{rule.id}#{i + 1}"}))
        if v.get("summary") is not None:
            for problem in summary_problems(v["summary"], drift=True):
                scope.error(line_of(item, "summary"), f"summary: {problem}")
        # a shared key's problem is found once per condition: report it once
        self.errors[before:] = list(dict.fromkeys(self.errors[before:]))
        if len(self.errors) > before or None in defaults.values() or parsed is None:
            return None
        first = conditions[0]
        min_samples = v["min_samples"] if "min_samples" in item else defaults.get("min_samples", DEFAULT_MIN_SAMPLES)
        return Rule(
            id=v["id"], tier=v["tier"], mode=first.mode, window_ms=first.window_ms, every_ms=first.every_ms,
            for_ms=first.for_ms, keep_firing_for_ms=first.keep_firing_for_ms, min_samples=min_samples,
            group_by=first.group_by, summary=v.get("summary"), runbook=first.runbook,
            max_starved_ms=first.max_starved_ms, combine=parsed[0], conditions=tuple(conditions), action=first.action,
            line=item.line,
        )  # fmt: skip
