"""The specification of input events (CONTRACT §1): pydantic models, and the located error messages they give.

:mod:`rules.events` validates with the typed decoder of :mod:`rules.decode` first and asks these models whenever it
refuses something: the models decide what is valid and word what is wrong ("feature: String should match
pattern ..."), and a hypothesis test (tests/test_events.py) keeps the two in agreement.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError, field_validator

from rules.timestamps import parse_ts

__all__ = ["InteractionIn", "FeedbackIn", "EvalIn", "ControlIn", "ANY", "located", "feedback_problem",
           "eval_problem", "control_problem", "is_name"]

_NAME = r"^[A-Za-z0-9._-]{1,128}$"
_LABEL = r"^[a-z0-9_]{1,64}$"
_ROLE = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # rules.model.ROLE_NAME
_SUGGESTION = frozenset({"accepted", "edited", "rejected", "ignored"})
_THUMBS = frozenset({"up", "down"})
_SURVEY = frozenset({"csat", "nps"})
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def is_name(s: object) -> bool:
    return type(s) is str and 0 < len(s) <= 128 and _NAME_CHARS.issuperset(s)


Name = Annotated[StrictStr, Field(pattern=_NAME)]
Label = Annotated[StrictStr, Field(pattern=_LABEL)]
Short = Annotated[StrictStr, Field(max_length=128)]
SegKey = Annotated[StrictStr, Field(min_length=1, max_length=64)]
NonNeg = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]  # rules.decode.AMOUNT_MAX: scaled, still finite


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    ts: Any
    feature: Name
    phase: Name = "default"
    segment: Annotated[dict[SegKey, Short], Field(max_length=16)] = {}
    user: Short | None = None
    model_version: Short | None = None
    prompt_version: Short | None = None
    variant: Short | None = None  # the experiment arm the event belongs to (extension: `compare: {by: variant}`)

    @field_validator("ts", mode="plain")
    @classmethod
    def _ts(cls, v: Any) -> int:
        return parse_ts(v)


class InteractionIn(_Base):
    type: Literal["interaction"]
    outcome: Literal["ok", "error", "timeout", "refused"] = "ok"
    latency_ms: NonNeg | None = None
    tokens_in: Annotated[StrictInt, Field(ge=0)] | None = None
    tokens_out: Annotated[StrictInt, Field(ge=0)] | None = None
    cost_usd: NonNeg | None = None
    confidence: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    flags: Annotated[list[Label], Field(max_length=64)] = []
    # extension: the length of the user's session this interaction ends (composer open to send), in ms
    session_ms: NonNeg | None = None


class FeedbackIn(_Base):
    type: Literal["feedback"]
    kind: Literal["suggestion", "thumbs", "review", "ticket", "survey"]
    label: Label | None = None
    score: Annotated[float, Field(allow_inf_nan=False)] | None = None
    interaction_id: Short | None = None

    def model_post_init(self, _ctx: Any) -> None:
        problem = feedback_problem(self.kind, self.label, self.score)
        if problem:
            raise ValueError(problem)


class EvalIn(_Base):
    """An evaluation run (extension of CONTRACT §1): ``n`` items of eval suite ``suite`` scored offline (relevance,
    model quality…) against the feature's model or prompt version, their mean ``score`` and the number that
    ``passed``. It rides the feedback stream (its watermark and lateness), like an expert review."""

    type: Literal["eval"]
    suite: Label
    score: Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)] | None = None  # rules.decode.EVAL_SCORE_MAX
    n: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)] = 1
    passed: Annotated[StrictInt, Field(ge=0, le=1_000_000_000)] | None = None

    def model_post_init(self, _ctx: Any) -> None:
        problem = eval_problem(self.score, self.passed, self.n)
        if problem:
            raise ValueError(problem)


def eval_problem(score: float | None, passed: int | None, n: int) -> str | None:
    """Cross-field rules of an eval event; None when fine."""
    if score is None and passed is None:
        return "an eval run needs a score, a passed count, or both"
    if passed is not None and passed > n:
        return f"passed ({passed}) cannot exceed n ({n}), the items evaluated"
    return None


class ControlIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    type: Literal["control"]
    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    ts: Any
    action: Literal["resume", "signoff"]
    feature: Name
    phase: Name | None = None
    reason: Annotated[StrictStr, Field(min_length=1, max_length=500)]
    operator: Short | None = None
    role: Annotated[StrictStr, Field(pattern=_ROLE)] | None = None  # signoff: the role signing (pm, legal, …)
    revoke: bool = False  # signoff: withdraw the role's sign-off instead

    _ts = field_validator("ts", mode="plain")(_Base._ts.__func__)

    def model_post_init(self, _ctx: Any) -> None:
        problem = control_problem(self.action, self.phase, self.role, self.revoke)
        if problem:
            raise ValueError(problem)


def control_problem(action: str, phase: str | None, role: str | None, revoke: bool) -> str | None:
    """Cross-field rules of a control input; None when fine. A sign-off names its phase and role; a resume has
    neither a role nor ``revoke``."""
    if action == "signoff":
        if phase is None:
            return "a signoff names the phase it signs off"
        if role is None:
            return "a signoff names its role (pm, engineering, legal, ...)"
    elif role is not None or revoke:
        return "role and revoke belong to a signoff control, not a resume"
    return None


def feedback_problem(kind: str, label: str | None, score: float | None) -> str | None:
    """Cross-field rules of CONTRACT §1 feedback; None when fine."""
    if kind == "suggestion" and label not in _SUGGESTION:
        return "suggestion feedback needs label accepted, edited, rejected or ignored"
    if kind == "thumbs" and label not in _THUMBS:
        return "thumbs feedback needs label up or down"
    if kind == "review":
        if label is None:
            return "review feedback needs a label (ok, hallucination, offensive, confidential, ...)"
        if score is not None and not 1 <= score <= 5:
            return "review score must be within 1..5"
    if kind == "survey":
        if label not in _SURVEY:
            return "survey feedback needs label csat or nps"
        if score is None:
            return "survey feedback needs a score"
        if label == "csat" and not 1 <= score <= 5:
            return "csat score must be within 1..5"
        if label == "nps" and not 0 <= score <= 10:
            return "nps score must be within 0..10"
    return None


ANY = TypeAdapter(Annotated[Union[InteractionIn, FeedbackIn, EvalIn, ControlIn], Field(discriminator="type")])


def located(err: ValidationError) -> str:
    """The validation errors as ``field: problem``, never echoing the input: pydantic quotes a bad ``type`` in its
    message and puts dict keys (a segment's) in the location, and either may be free text. Keys that are not
    identifiers become ``<key>``, as :func:`redact` drops them."""
    parts = []
    for e in err.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(
            p if isinstance(p, str) and (is_name(p) or p == "[key]") else str(p) if isinstance(p, int) else "<key>"
            for p in e["loc"][1:] if p not in ("function-plain", "constrained-str")
        )  # fmt: skip
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            msg = f"type: does not match any of the expected tags: {e['ctx']['expected_tags']}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
