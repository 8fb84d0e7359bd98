"""How a scenario's events are drawn (:mod:`streams.offline.scenario`): who sends them, and one block of arrival times
turned into interactions and the feedback they lead to — outcome, latency, tokens, cost, confidence and flags drawn
as arrays, incidents (:mod:`streams.offline.scenario_incidents`) bending those draws inside their windows, then one
comprehension per event type. Kept apart from the scenario's definition, validation and arrival-order merge.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from streams.offline.scenario_incidents import incident_effects

if TYPE_CHECKING:
    from streams.offline.scenario import Scenario

_OK, _ERROR, _TIMEOUT, _REFUSED = 0, 1, 2, 3
_OUTCOMES = ("ok", "error", "timeout", "refused")
_SUGGESTION = ("accepted", "edited", "rejected", "ignored")
_SLOW_MS = 1500.0  # above this users notice: fewer accepts, more thumbs down and tickets
_CONFIDENCE_BETA = (8.0, 3.0)
_CONFIDENCE_MEAN = _CONFIDENCE_BETA[0] / sum(_CONFIDENCE_BETA)


def _cdf(weights: Iterable[float]) -> np.ndarray:
    w = np.asarray(list(weights), dtype=float)
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0 + 1e-12  # searchsorted of a uniform draw must never fall off the end
    return cdf


_REVIEW_SCORE_OK = _cdf([0.15, 0.50, 0.35])  # scores 3, 4, 5: mean ~4.2, the seed's relevance bar is 4.0
_CSAT = {False: _cdf([0.02, 0.04, 0.12, 0.42, 0.40]), True: _cdf([0.15, 0.25, 0.30, 0.20, 0.10])}
_NPS = {  # index = score 0..10; happy users give NPS ~ +46, unhappy ones ~ -30
    False: _cdf([0.01, 0.01, 0.01, 0.01, 0.02, 0.03, 0.03, 0.12, 0.18, 0.28, 0.30]),
    True: _cdf([0.05, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.15, 0.15, 0.12, 0.08]),
}
_REVIEW_LABELS = ("ok", "hallucination", "confidential", "offensive", "off_brand")
_TICKET_TAGS = ("confidentiality_concern", "wrong_info", "not_working", "slow_suggestions", "suggestion_quality")


class _Population:
    """Who sends interactions: users ranked by activity (Zipf-ish) with their account's region and plan."""

    def __init__(self, s: Scenario, rng: np.random.Generator) -> None:
        rank = np.arange(s.users, dtype=float)
        self.cdf = _cdf(1.0 / (rank + 10.0) ** s.user_skew)
        # ids are a permutation of rank so the heaviest users do not simply have the smallest ids
        self.ids = [f"u-{100_000 + i}" for i in rng.permutation(s.users).tolist()]
        self.region = np.searchsorted(_cdf(w for _, w in s.regions), rng.random(s.users))
        self.plan = np.searchsorted(_cdf(w for _, w in s.plans), rng.random(s.users))


def _lognormal(median: float, sigma: float, z: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(median * np.exp(sigma * z), low, high)


class _Emitter:
    """Turns a block of arrival times into events: vectorised draws first, then one comprehension per event type.

    Every block consumes the same random numbers whatever the incidents do (incidents only transform draws), so
    the stream outside an incident window is byte-identical to the clean scenario's.
    """

    def __init__(self, s: Scenario, pop: _Population, arm_rng: np.random.Generator) -> None:
        self.s, self.pop, self.arm_rng = s, pop, arm_rng
        self.treated: np.ndarray | None = None  # per interaction of the current block: served by the treatment
        self.prefix = f"{s.feature}-{s.phase}-{s.seed}-"
        self.counter = 0  # interaction candidates so far: ids stay aligned when traffic_drop thins some out
        self.plat_cdf = _cdf(p.weight for p in s.platforms)
        self.plat_latency = np.array([p.latency_factor for p in s.platforms])
        self.plat_accept = np.array([p.acceptance for p in s.platforms])
        self.names = {"platform": [p.name for p in s.platforms], "region": [r for r, _ in s.regions],
                      "plan": [p for p, _ in s.plans]}
        self.flag_names = [name for name, _ in s.flag_probs]
        self.flag_probs = np.array([p for _, p in s.flag_probs])
        self.pii_col = self.flag_names.index("pii_leak") if "pii_leak" in self.flag_names else None
        self.segments = [{"platform": p, "region": r, "plan": q} for p in self.names["platform"]
                         for r in self.names["region"] for q in self.names["plan"]]

    def block(self, ts: np.ndarray, rng: np.random.Generator) -> tuple[list[dict[str, Any]], np.ndarray]:
        s, n, nflags = self.s, len(ts), len(self.flag_names)
        # uniforms: 0 platform, 1 user, 2 outcome, 3 traffic thinning, 4 hallucination, 5-6 suggestion shown/label,
        # 7-8 thumbs given/down, 9-11 review taken/label/score, 12 ticket, 13-15 survey taken/kind/score,
        # 16-21 arrival jitter per event type, 22 unhappy after a rejection, 23.. one per flag.
        # normals: 0 latency, 1 tokens_in, 2 tokens_out, 3-7 delays of suggestion, thumbs, review, ticket, survey.
        u = rng.random((n, 23 + nflags))
        z = rng.standard_normal((n, 8))
        confidence = rng.beta(*_CONFIDENCE_BETA, n)
        first, self.counter = self.counter, self.counter + n
        if n == 0:
            return [], np.zeros(0, dtype=np.int64)
        treated = self.arm_rng.random(n) < s.treatment_share if s.treatment_share > 0 else None
        plat = np.searchsorted(self.plat_cdf, u[:, 0])
        user = np.searchsorted(self.pop.cdf, u[:, 1])
        dims = {"platform": plat, "region": self.pop.region[user], "plan": self.pop.plan[user]}

        def matches(segment: dict[str, str]) -> np.ndarray:
            mask = np.ones(n, dtype=bool)
            for key, value in segment.items():
                mask &= dims[key] == self.names[key].index(value)
            return mask

        pii_base = float(self.flag_probs[self.pii_col]) if self.pii_col is not None else 0.0
        fx = incident_effects(s.incidents, ts, matches, pii_prob=pii_base,
                              hallucination_prob=s.hallucination_prob, error_prob=s.error_prob)
        keep = u[:, 3] < fx.keep_prob

        # outcome and latency: a call slower than the client timeout is a timeout whatever else happened
        latency = s.latency_median_ms * self.plat_latency[plat] * np.exp(s.latency_sigma * z[:, 0]) * fx.latency_mult
        if treated is not None and s.treatment_latency_mult != 1.0:
            latency = latency * np.where(treated, s.treatment_latency_mult, 1.0)
        err = u[:, 2] < fx.error_prob
        timeout = ~err & ((u[:, 2] < fx.error_prob + s.timeout_prob) | (latency >= s.timeout_ms))
        refused = ~err & ~timeout & (u[:, 2] < fx.error_prob + s.timeout_prob + s.refusal_prob)
        ok = ~(err | timeout | refused)
        outcome = np.select([err, timeout, refused], [_ERROR, _TIMEOUT, _REFUSED], _OK)
        latency = np.round(np.where(err, latency * 0.4, np.where(timeout, float(s.timeout_ms), latency)), 1)
        tokens_in = np.rint(s.tokens_in_median * np.exp(0.5 * z[:, 1])).astype(np.int64) + 1
        tokens_out = s.tokens_out_median * np.exp(0.35 * z[:, 2]) * fx.tokens_out_mult
        tokens_out = np.rint(np.where(ok, tokens_out, np.where(refused, 0.1 * tokens_out, 0.0))).astype(np.int64)
        cost = np.where(err, 0, tokens_in) * s.usd_per_1k_tokens_in + tokens_out * s.usd_per_1k_tokens_out
        cost = np.round(cost / 1000.0, 7)
        confidence = np.round(np.clip(confidence * fx.confidence_mult, 0.0, 1.0), 4)
        flagged = u[:, 23:] < self.flag_probs
        if self.pii_col is not None:
            flagged[:, self.pii_col] = u[:, 23 + self.pii_col] < fx.pii_prob
        flagged &= ok[:, None]
        pii = flagged[:, self.pii_col] if self.pii_col is not None else np.zeros(n, dtype=bool)
        hallucinated = ok & (u[:, 4] < fx.hallucination_prob)

        # suggestion outcome: confident outputs are accepted more, hallucinated and slow ones less
        slow = ok & (latency > _SLOW_MS)
        p_accept = self.plat_accept[plat] * fx.accept_mult * (confidence / _CONFIDENCE_MEAN)
        p_accept = np.clip(p_accept * np.where(hallucinated, 0.3, 1.0) * np.where(slow, 0.7, 1.0), 0.0, 0.95)
        if treated is not None and s.treatment_accept_delta:
            p_accept = np.clip(p_accept + np.where(treated, s.treatment_accept_delta, 0.0), 0.0, 0.95)
        us = u[:, 6]
        label = np.select([us < p_accept * (1 - s.edit_share), us < p_accept, us < p_accept + (1 - p_accept) * 0.35],
                          [0, 1, 2], 3)
        rejected = label == 2
        shown = ok & keep
        sug = shown & (u[:, 5] < s.suggestion_feedback_prob)
        sug_delay = _lognormal(s.suggestion_delay_ms, 0.8, z[:, 3], 500, 600_000)

        thumbs = shown & (u[:, 7] < s.thumbs_prob)
        p_down = np.select([hallucinated, rejected, label <= 1], [0.6, 0.22, 0.04], 0.09) + np.where(slow, 0.1, 0.0)
        thumbs_down = u[:, 8] < p_down
        thumbs_delay = sug_delay + _lognormal(s.thumbs_delay_ms, 0.8, z[:, 4], 5_000, 3_600_000)

        review = shown & (u[:, 9] < s.review_prob)
        flag_col = {name: flagged[:, j] for j, name in enumerate(self.flag_names)}
        no_flag = np.zeros(n, dtype=bool)
        review_label = np.select(
            [hallucinated, pii | flag_col.get("confidential", no_flag), flag_col.get("toxicity", no_flag) | (
                u[:, 10] < 0.001), u[:, 10] < 0.031],
            [1, 2, 3, 4], 0)
        review_score = np.select(
            [review_label == 0, review_label == 1, review_label == 4],
            [3 + np.searchsorted(_REVIEW_SCORE_OK, u[:, 11]), 1 + (u[:, 11] < 0.5), 2 + (u[:, 11] < 0.5)], 1)
        review_delay = _lognormal(s.review_delay_ms, 0.5, z[:, 5], s.review_delay_ms / 4, s.review_delay_ms * 4)

        failed = err | timeout
        ticket_mult = 1 + 14 * failed + 3 * slow + 2 * (ok & rejected) + 39 * hallucinated + 299 * pii
        ticket = keep & (u[:, 12] < s.ticket_prob * ticket_mult)
        ticket_tag = np.select([pii, hallucinated, failed, slow], [0, 1, 2, 3], 4)
        ticket_delay = _lognormal(s.ticket_delay_ms, 0.7, z[:, 6], s.ticket_delay_ms / 10, s.ticket_delay_ms * 10)

        survey = shown & (u[:, 13] < s.survey_prob)
        unhappy = hallucinated | slow | (rejected & (u[:, 22] < s.unhappy_after_rejection_prob))
        nps = u[:, 14] >= 0.5
        survey_score = np.where(
            nps, np.where(unhappy, np.searchsorted(_NPS[True], u[:, 15]), np.searchsorted(_NPS[False], u[:, 15])),
            1 + np.where(unhappy, np.searchsorted(_CSAT[True], u[:, 15]), np.searchsorted(_CSAT[False], u[:, 15])))
        survey_delay = sug_delay + _lognormal(s.survey_delay_ms, 0.5, z[:, 7], 1_000, 3_600_000)

        # transport delay: mostly a few hundred ms, never beyond the bound
        jitter = np.minimum(-400.0 * np.log1p(-u[:, 16:22]), s.max_arrival_jitter_ms).astype(np.int64)

        iids = [f"{self.prefix}{k:09d}" for k in range(first, first + n)]
        self.treated = treated
        idx = np.nonzero(keep)[0]
        events = self._interactions(idx, ts, dims, user, iids, outcome, latency, tokens_in, tokens_out, cost,
                                    confidence, flagged)
        arrivals = [ts[idx] + jitter[idx, 0]]
        feedback = (
            ("suggestion", "s", sug, sug_delay, label, _SUGGESTION, None),
            ("thumbs", "t", thumbs, thumbs_delay, thumbs_down, ("up", "down"), None),
            ("review", "r", review, review_delay, review_label, _REVIEW_LABELS, review_score),
            ("ticket", "k", ticket, ticket_delay, ticket_tag, _TICKET_TAGS, None),
            ("survey", "v", survey, survey_delay, nps, ("csat", "nps"), survey_score),
        )
        for col, (kind, suffix, mask, delay, codes, names, scores) in enumerate(feedback, start=1):
            at = ts + delay.astype(np.int64)
            idx = np.nonzero(mask & (at < s.end))[0]
            labels = [names[c] for c in codes[idx].tolist()]
            events += self._feedback(kind, suffix, idx, at, dims, user, iids, labels, scores)
            arrivals.append(at[idx] + jitter[idx, col])
        return events, np.concatenate(arrivals)

    def _segment(self, dims: dict[str, np.ndarray], idx: np.ndarray) -> list[dict[str, str]]:
        # copies of prebuilt dicts: much cheaper than building each, and no two events share a mutable dict
        code = (dims["platform"][idx] * len(self.names["region"]) + dims["region"][idx]) * len(self.names["plan"])
        segments = self.segments
        return [segments[c].copy() for c in (code + dims["plan"][idx]).tolist()]

    def _interactions(self, idx, ts, dims, user, iids, outcome, latency, tokens_in, tokens_out, cost, confidence,
                      flagged) -> list[dict[str, Any]]:
        s, ids = self.s, self.pop.ids
        mv, pv, feature, phase = s.model_version, s.prompt_version, s.feature, s.phase
        events = [
            {"type": "interaction", "event_id": iids[i], "ts": t, "feature": feature, "phase": phase, "segment": seg,
             "user": ids[us], "model_version": mv, "prompt_version": pv, "outcome": _OUTCOMES[oc], "latency_ms": lat,
             "tokens_in": tin, "tokens_out": tout, "cost_usd": c, "confidence": conf}
            for i, t, seg, us, oc, lat, tin, tout, c, conf in zip(
                idx.tolist(), ts[idx].tolist(), self._segment(dims, idx), user[idx].tolist(), outcome[idx].tolist(),
                latency[idx].tolist(), tokens_in[idx].tolist(), tokens_out[idx].tolist(), cost[idx].tolist(),
                confidence[idx].tolist())
        ]
        self._arm(events, idx)
        # only answered calls carry a confidence and guardrail flags (flagged rows are answered ones)
        for k in np.nonzero(outcome[idx] != _OK)[0].tolist():
            del events[k]["confidence"]
        for k in np.nonzero(flagged[idx].any(axis=1))[0].tolist():
            events[k]["flags"] = [self.flag_names[j] for j in np.nonzero(flagged[idx[k]])[0].tolist()]
        return events

    def _feedback(self, kind, suffix, idx, at, dims, user, iids, labels, scores) -> list[dict[str, Any]]:
        s, ids = self.s, self.pop.ids
        mv, pv, feature, phase = s.model_version, s.prompt_version, s.feature, s.phase
        events = [
            {"type": "feedback", "event_id": f"{iids[i]}.{suffix}", "ts": t, "feature": feature, "phase": phase,
             "segment": seg, "user": ids[us], "model_version": mv, "prompt_version": pv, "kind": kind,
             "label": label, "interaction_id": iids[i]}
            for i, t, seg, us, label in zip(idx.tolist(), at[idx].tolist(), self._segment(dims, idx),
                                            user[idx].tolist(), labels)
        ]
        if scores is not None:
            for event, score in zip(events, scores[idx].tolist()):
                event["score"] = score
        self._arm(events, idx)
        return events

    def _arm(self, events: list[dict[str, Any]], idx: np.ndarray) -> None:
        """Each event's arm: the treatment's model version and variant, or the control variant (feedback follows its
        interaction)."""
        if self.treated is not None:
            s = self.s
            for event, treated in zip(events, self.treated[idx].tolist()):
                if treated:
                    event["model_version"], event["variant"] = s.treatment_model_version, s.treatment_variant
                else:
                    event["variant"] = s.control_variant

