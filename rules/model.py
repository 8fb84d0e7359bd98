"""The validated, trusted form of a rule file: frozen pydantic models the engine reads without re-checking.

``rules.loader`` is what builds these from YAML and enforces every rule of CONTRACT §3 with located errors;
the models themselves only pin types and the one structural invariant the engine branches on (a rule is
either a metric rule or a drift rule). Durations are whole milliseconds (``*_ms``).

Tiers are ordered ``ok < investigate < pause < kill``; :func:`worst` picks the most severe.

>>> worst("investigate", "kill", "pause")
'kill'
>>> worst()
'ok'
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import operator
import re
import string
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

__all__ = [
    "Tier",
    "Mode",
    "Op",
    "BAND_OPS",
    "Signal",
    "TIER_ORDER",
    "worst",
    "DEFAULT_EVERY_MS",
    "DEFAULT_FOR_MS",
    "DEFAULT_KEEP_FIRING_FOR_MS",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_MODE",
    "SUMMARY_FIELDS",
    "summary_problems",
    "FrozenParams",
    "DriftSpec",
    "CompareSpec",
    "Matcher",
    "ARM_FIELDS",
    "SEGMENT_KEY",
    "PHASE_NAME",
    "arm_key",
    "Rule",
    "Promotion",
    "ROLE_NAME",
    "RuleSet",
]

Tier = Literal["investigate", "pause", "kill"]
Mode = Literal["enforce", "shadow"]
Op = Literal[">", ">=", "<", "<=", "between", "outside"]
BAND_OPS = ("between", "outside")  # ops on a band [threshold, threshold_high]
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
Signal = Literal["acceptance", "error", "latency_ms", "cost_usd", "confidence", "thumbs_down", "tokens_in", "tokens_out"]

TIER_ORDER: dict[str, int] = {"ok": 0, "investigate": 1, "pause": 2, "kill": 3}

# Built-in defaults (CONTRACT §3), used when neither the rule nor the file's ``defaults`` set a value.
DEFAULT_EVERY_MS = 60_000
DEFAULT_FOR_MS = 0
DEFAULT_KEEP_FIRING_FOR_MS = 0
DEFAULT_MIN_SAMPLES = 30
DEFAULT_MODE: Mode = "enforce"

# The fields a ``summary`` template may use, with the type of value the engine formats it with. The loader
# test-formats every template with these samples, so a template that loads always renders.
# ``group`` is the group's segment values (empty when the rule does not group), ``window`` the evaluated
# window as a duration string (``5m``). ``value`` may be None at run time (no data); the engine then falls
# back to a plain sentence.
SUMMARY_FIELDS: Mapping[str, Any] = MappingProxyType(
    {
        "value": 0.25,
        "threshold": 0.1,
        "threshold_high": 0.2,  # op between / outside: the band's upper line (None otherwise)
        "samples": 120,
        "metric": "error_rate",
        "op": ">",
        "feature": "email-reply",
        "phase": "closed_beta",
        "group": {"platform": "ios"},
        "window": "5m",
        "tier": "kill",
        "rule_id": "error-spike",
        "ruleset": "email-reply-closed-beta",
    }
)
# Drift rules compare no threshold with no operator, so a summary that mentions them could only say "None".
_NOT_FOR_DRIFT = ("threshold", "op")


def worst(*tiers: str) -> str:
    """The most severe of ``tiers`` (``"ok"`` when there are none).

    >>> worst("ok", "investigate")
    'investigate'
    """
    for tier in tiers:
        if tier not in TIER_ORDER:
            raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIER_ORDER)}")
    return max(tiers, key=TIER_ORDER.__getitem__, default="ok")


def summary_problems(template: str, *, drift: bool = False) -> list[str]:
    """Why ``template`` cannot be rendered with :data:`SUMMARY_FIELDS` (empty list: it can).

    Only plain field names are allowed: attribute and index access (``{value.real}``, ``{group[0]}``) would
    let a rule file reach into engine objects, and positional fields have nothing to fill them.

    >>> summary_problems("P95 {value:.0f} ms > {threshold} ms")
    []
    >>> for problem in summary_problems("{valeu} {value:q}"):
    ...     print(problem)
    unknown field {valeu} (did you mean {value}?)
    bad format spec 'q' for {value}: Unknown format code 'q' for object of type 'float'
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [f"not a valid format string: {exc} (write '{{{{' and '}}}}' for literal braces)"]
    problems = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            problems.append(f"positional field {{{field}}} is not allowed; use a name such as {{value}}")
            continue
        if field not in SUMMARY_FIELDS:
            if any(c in field for c in ".["):
                problems.append(f"field {{{field}}}: attribute and index access are not allowed; use plain names")
                continue
            close = difflib.get_close_matches(field, list(SUMMARY_FIELDS), n=1)
            hint = f" (did you mean {{{close[0]}}}?)" if close else f" (fields: {', '.join(SUMMARY_FIELDS)})"
            problems.append(f"unknown field {{{field}}}{hint}")
            continue
        if drift and field in _NOT_FOR_DRIFT:
            problems.append(f"field {{{field}}} is not available in drift rules (they have no {field})")
            continue
        if spec and "{" in spec:
            problems.append(f"field {{{field}}}: nested fields in a format spec are not allowed")
            continue
        sample = SUMMARY_FIELDS[field]
        if conversion is not None:
            convert = {"r": repr, "s": str, "a": ascii}.get(conversion)
            if convert is None:
                problems.append(f"field {{{field}}}: unknown conversion '!{conversion}' (use !r, !s or !a)")
                continue
            sample = convert(sample)
        try:
            format(sample, spec or "")
        except (ValueError, TypeError) as exc:
            problems.append(f"bad format spec {spec!r} for {{{field}}}: {exc}")
    return problems


_FROZEN = ConfigDict(frozen=True, extra="forbid")


class FrozenParams(Mapping[str, Any]):
    """Detector parameters as a read-only, hashable, picklable mapping (a ``MappingProxyType`` cannot be
    pickled or deep-copied, and the engine may do both with rules).

    >>> p = FrozenParams({"delta": 0.002})
    >>> p["delta"], dict(p), p == {"delta": 0.002}, hash(p) == hash(FrozenParams(p))
    (0.002, {'delta': 0.002}, True, True)
    """

    def __init__(self, items: Mapping[str, Any] = MappingProxyType({})) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._items == dict(other)

    def __hash__(self) -> int:
        # Values are YAML scalars or lists of them; canonical JSON makes lists hashable and order irrelevant.
        return hash(json.dumps(self._items, sort_keys=True, default=repr))

    def __repr__(self) -> str:
        return f"FrozenParams({self._items!r})"


class DriftSpec(BaseModel):
    """A river drift detector watching one per-event signal; ``params`` go to the detector's constructor."""

    model_config = _FROZEN

    detector: str
    signal: Signal
    params: Mapping[str, Any] = Field(default_factory=dict)

    @field_validator("params", mode="after")
    @classmethod
    def _read_only(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        # A frozen model whose dict could still be mutated in place would not be frozen.
        return FrozenParams(params)

    @field_serializer("params")
    def _plain_dict(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return dict(params)


# The names a rule may give a segment key (group_by, across, compare.by, where) and a phase. A segment key never
# starts with "@", which is what keeps the arm fields' store keys (arm_key) apart from it.
SEGMENT_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
PHASE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")

# Event fields a comparison can split arms by (besides segment keys). In a store's keys they are spelled
# ``@<field>`` so they can never collide with a segment key (segment keys cannot start with "@").
ARM_FIELDS = ("model_version", "prompt_version", "variant")


def arm_key(by: str) -> str:
    """The store key of the arm dimension ``by``: ``@model_version`` for an event field, the segment key itself.

    >>> arm_key("model_version"), arm_key("platform")
    ('@model_version', 'platform')
    """
    return "@" + by if by in ARM_FIELDS else by


class Matcher(BaseModel):
    """One ``where`` matcher: the event's value of ``key`` (a segment key or an arm field; missing: "") is (or, with
    ``negate``, is not) one of ``values``. ``=`` / ``in`` / ``!=`` / ``not in`` of Prometheus label matchers.

    >>> m = Matcher(key="region", values=("eu",), negate=False)
    >>> m.store_key, m.describe()
    ('region', 'region = eu')
    """

    model_config = _FROZEN

    key: str
    values: tuple[str, ...]
    negate: bool = False

    @property
    def store_key(self) -> str:
        return arm_key(self.key)

    def admits(self, seg: Mapping[str, str]) -> bool:
        """Whether an event whose segment, with its arm fields under their store keys, is ``seg`` matches."""
        return (seg.get(self.store_key, "") in self.values) != self.negate

    def describe(self) -> str:
        if len(self.values) == 1:
            return f"{self.key} {'!=' if self.negate else '='} {self.values[0]}"
        return f"{self.key} {'not in' if self.negate else 'in'} ({', '.join(self.values)})"


class CompareSpec(BaseModel):
    """``compare:`` — the rule's value is *treatment - control* (``relative``: over the control) instead of the
    metric itself. Either arms of one dimension ``by`` (an event field of :data:`ARM_FIELDS` or a segment key),
    ``control`` being one value and the treatment ``treatment`` (or every other value); or the same window of
    another ``phase`` of the feature as the control. ``split``: the expected share of traffic per arm value (the
    control has the rest), checked by a sequential sample-ratio-mismatch test; without it a comparison of arms tests
    that the split stays stable (``check_split``; ``split: unchecked`` turns that off)."""

    model_config = _FROZEN

    by: str | None = None
    control: str | None = None
    treatment: str | None = None
    phase: str | None = None
    relative: bool = False
    test: Literal["sequential", "fixed"] = "sequential"
    alpha: float = 0.05
    split: Mapping[str, float] | None = None
    check_split: bool = True

    @field_validator("split", mode="after")
    @classmethod
    def _read_only(cls, split: Mapping[str, float] | None) -> Mapping[str, float] | None:
        return None if split is None else FrozenParams(split)

    @field_serializer("split")
    def _plain_dict(self, split: Mapping[str, float] | None) -> dict[str, float] | None:
        return None if split is None else dict(split)

    @model_validator(mode="after")
    def _one_kind(self) -> CompareSpec:
        if (self.by is None) == (self.phase is None):
            raise ValueError("a comparison needs either by (arms) or phase (another phase as the control)")
        if self.by is not None and self.control is None:
            raise ValueError("a comparison by arms needs control")
        return self

    @property
    def key(self) -> str | None:
        """The store key of the arm dimension (None for a cross-phase comparison)."""
        return None if self.by is None else arm_key(self.by)


class Rule(BaseModel):
    """One rule: either a threshold on a metric (``metric``/``op``/``threshold``/``window_ms``) or a drift
    detector (``drift``). ``line`` is where the rule starts in its file, for messages."""

    model_config = _FROZEN

    id: str
    tier: Tier
    mode: Mode = DEFAULT_MODE
    metric: str | None = None
    op: Op | None = None
    threshold: float | None = None
    # the band's upper line of ``op: between`` (fires inside [threshold, threshold_high]) or ``outside`` (outside it)
    threshold_high: float | None = None
    drift: DriftSpec | None = None
    window_ms: int | None = None
    every_ms: int = DEFAULT_EVERY_MS
    for_ms: int = DEFAULT_FOR_MS
    keep_firing_for_ms: int = DEFAULT_KEEP_FIRING_FOR_MS
    min_samples: int = DEFAULT_MIN_SAMPLES
    confidence: float | None = None
    group_by: tuple[str, ...] = ()
    baseline_ms: int | None = None
    # the earlier value is the average window over the ``baseline_ms`` before this one (``trailing_baseline``), not
    # the same window ``baseline_ms`` earlier
    baseline_trailing: bool = False
    across: str | None = None
    summary: str | None = None
    runbook: str | None = None
    # hysteresis: a firing instance resolves only once the compared value crosses this line, not the threshold
    resolve_threshold: float | None = None
    compare: CompareSpec | None = None
    where: tuple[Matcher, ...] = ()  # only events these admit count (threshold rules)
    # set on the sample-ratio companion ``<id>.srm`` the loader adds after a comparison with ``split``: the parent's id
    srm_of: str | None = None
    # how long the rule may stay insufficient while its window holds data before it pages (rules.starvation); None:
    # the tier's default, 0: never
    max_starved_ms: int | None = None
    # the command a pause or kill sends instead of its tier's (rules.outputs.RULE_ACTIONS): shadow_only, revert_model
    action: str | None = None
    # a compound rule (``all:`` / ``any:``): its conditions, each a threshold rule with this rule's window, clocks
    # and groups (ids ``<id>#1``, ``<id>#2``…), combined into one verdict with one lifecycle; no metric of its own
    combine: Literal["all", "any"] | None = None
    conditions: tuple[Rule, ...] = ()
    line: int = 0

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        if self.combine is not None or self.conditions:
            if self.combine is None or len(self.conditions) < 2 or self.drift is not None or self.window_ms is None:
                raise ValueError("a compound rule combines (all / any) two or more conditions over its window")
            if any(part is not None for part in (self.metric, self.op, self.threshold)):
                raise ValueError("a compound rule has no metric, op or threshold of its own: its conditions do")
            return self
        metric_parts = (self.metric, self.op, self.threshold, self.window_ms)
        if self.drift is None and any(part is None for part in metric_parts):
            raise ValueError("a metric rule needs metric, op, threshold and window_ms (or give drift instead)")
        if self.drift is not None and any(part is not None for part in metric_parts):
            raise ValueError("a drift rule takes no metric, op, threshold or window_ms")
        if (self.op in BAND_OPS) != (self.threshold_high is not None):
            raise ValueError("op between/outside takes a band: threshold and threshold_high, and only they do")
        if self.threshold_high is not None and not self.threshold < self.threshold_high:
            raise ValueError("a band's threshold must be below its threshold_high")
        return self

    def holds(self, x: float, line: float | None = None) -> bool:
        """Whether the compared value ``x`` is on the firing side: of ``line`` (default the threshold; hysteresis
        passes ``resolve_threshold``) for the comparison ops, inside / outside the band for ``between`` /
        ``outside`` (bounds included in the band)."""
        if self.op == "between":
            return self.threshold <= x <= self.threshold_high
        if self.op == "outside":
            return x < self.threshold or x > self.threshold_high
        return _OPS[self.op](x, self.threshold if line is None else line)


# A sign-off role (``pm``, ``legal``, ``dpa``…): what a ``promotion`` block requires and ``rollguard signoff`` records.
ROLE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class Promotion(BaseModel):
    """``promotion:`` — when a rule set's phase may go on to ``to`` (``rules.promotion``). Evaluated every ``every_ms``
    (a multiple of each gate's ``every``): ``ready`` once every gate rule's condition has been false for every group it
    evaluates for ``hold_for_ms``, the phase has run ``min_time_ms`` with, over that trailing time,
    ``min_interactions`` interactions from ``min_users`` distinct users, and every role of ``signoffs`` has signed off;
    ``blocked`` while a gate fails, a sign-off is missing or the phase is paused or killed; ``inconclusive`` otherwise.
    With ``auto`` the ``ready`` verdict issues a ``promote_rollout`` command."""

    model_config = _FROZEN

    to: str
    gates: tuple[str, ...]
    every_ms: int
    hold_for_ms: int = 0
    min_time_ms: int = 0
    min_interactions: int = 0
    min_users: int = 0
    signoffs: tuple[str, ...] = ()
    auto: bool = False
    line: int = 0

    @model_validator(mode="after")
    def _exposure_window(self) -> Promotion:
        if (self.min_interactions or self.min_users) and not self.min_time_ms:
            raise ValueError("min_exposure interactions and users are counted over its time: give time too")
        return self


class RuleSet(BaseModel):
    """One rule file (one YAML document): the rules that apply to some features and phases.

    ``version`` is the sha256 of the document's canonical JSON, so it changes with content, not formatting.

    >>> rs = RuleSet(name="x", version="0" * 64, features=("email-*",), phases=None, rules=(), source="x.yaml")
    >>> rs.applies_to("email-reply", "ga"), rs.applies_to("search", "ga")
    (True, False)
    """

    model_config = _FROZEN

    name: str
    version: str
    features: tuple[str, ...]
    phases: tuple[str, ...] | None = None
    rules: tuple[Rule, ...]
    source: str
    promotion: Promotion | None = None

    @model_validator(mode="after")
    def _gates_exist(self) -> RuleSet:
        if self.promotion is not None:
            if self.phases is None or len(self.phases) != 1:
                raise ValueError("a rule set with a promotion names exactly one phase")
            missing = set(self.promotion.gates) - {r.id for r in self.rules if r.drift is None}
            if missing:
                raise ValueError(f"promotion gates {sorted(missing)} are not threshold rules of the rule set")
        return self

    def applies_to(self, feature: str, phase: str) -> bool:
        """True if ``feature`` matches one of the feature globs (case-sensitive) and ``phase`` is listed
        (or the set lists no phases)."""
        if self.phases is not None and phase not in self.phases:
            return False
        return self.matches_feature(feature)

    def matches_feature(self, feature: str) -> bool:
        """True if ``feature`` matches one of the feature globs (case-sensitive), whatever the phase."""
        return any(fnmatch.fnmatchcase(feature, pattern) for pattern in self.features)
