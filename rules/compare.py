"""Evaluating a ``compare`` rule: treatment minus control over the rule's window, judged by an interval.

A comparison's arms live in the rule's store: by arms, the store's last key is the arm dimension (``@model_version``,
``@prompt_version``, ``@variant`` or a segment key), so each arm of a group is one series; across phases, the control
is the same group's series in the control phase. Over the window ``[t - window, t)`` each arm gives the sufficient
statistics of the metric (``rules.sequential.Arm``), and ``rules.sequential.compare`` an interval for
*treatment - control* (``relative``: over the control):

* rates: the mean of 0/1 values (successes, trials);
* means (``latency_mean``, ``cost_per_request``, ``tokens_out_mean``, ``confidence_mean``, ``review_score_mean``,
  ``csat_mean``): count, sum and sum of squares (the store keeps the squares once a rule compares a mean);
* ``nps``: the mean of +100 / 0 / -100 per answer;
* ``tickets_per_1k_users``: 1,000 times the mean number of tickets per distinct user, each user's count taken as
  Poisson (variance = mean): an approximation, as the users are the sketch's estimate;
* latency quantiles: through a rate (``docs/sequential.md``). The *line* is the control's quantile moved by the
  threshold (``+ threshold`` ms, or ``* (1 + threshold)`` when ``relative``); the share of treatment values beyond it
  is tested against the share the quantile leaves there (5 % above a p95). The treatment's quantile is beyond the
  line exactly when that share is, so the rule fires when the share's interval lies wholly above the expected share.
  The control's quantile is read from its sketch and treated as known (the control is normally the larger arm).

The verdict is ``True`` when the interval lies wholly on the firing side of the threshold (``Interval.beyond``),
``False`` otherwise, ``None`` (insufficient) while an arm has fewer than ``min_samples`` values, or while the
sample-ratio test (``split``) rejects the observed split: a comparison whose arms are not split as configured is
not to be trusted, and its companion rule ``<id>.srm`` (made by the loader) pages instead.

The treatment, when not named, is every arm value other than the control's; events without a value for the
dimension (an empty segment value or a missing version) belong to no arm. With the sequential method (default) the
interval holds at every look of a comparison that accrues from its start, so the rule's window should span the
comparison (a 7-day upgrade: ``window: 7d``); once data leaves the window it is a sliding approximation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rules.aggregate import COST_SCALE, LATENCY_SCALE, SCORE_SCALE, UNIT_SCALE, Bucket
from rules.evaluation import Evaluation, WindowCache
from rules.metrics import rate_counts
from rules.outputs import iso
from rules.sequential import Arm, Interval, compare, srm_log_e, stability_log_e
from rules.sketches.ddsketch import DDSketch
from rules.windows import SeriesBuckets, SeriesKey, StoreSpec

__all__ = ["evaluate_compare", "arm_stats", "COMPARABLE_MEANS", "COMPARABLE_QUANTILES", "comparable"]

# mean metric -> (counter prefix, scale of its integers)
COMPARABLE_MEANS = {
    "latency_mean": ("lat", LATENCY_SCALE), "cost_per_request": ("cost", COST_SCALE), "tokens_out_mean": ("tok", 1),
    "session_length_mean": ("ses", LATENCY_SCALE),
    "confidence_mean": ("conf", UNIT_SCALE), "review_score_mean": ("rs", SCORE_SCALE),
    "csat_mean": ("csat", SCORE_SCALE),
}  # fmt: skip
COMPARABLE_QUANTILES = {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}
_OTHERS = frozenset({"nps", "tickets_per_1k_users"})
_RATES = frozenset({"error_rate", "timeout_rate", "refusal_rate", "flag_rate", "acceptance_rate", "edit_rate",
                    "rejection_rate", "thumbs_down_rate", "review_rate", "hallucination_rate", "share_ge",
                    "share_lt"})  # fmt: skip


def comparable(base: str) -> bool:
    """Whether a metric is a per-event mean (a rate, a mean, nps or a latency quantile) that arms can be compared on;
    counts and per-user ratios (``requests``, ``active_users``, ``tickets_per_1k_users``…) are not."""
    return base in _RATES or base in COMPARABLE_MEANS or base in COMPARABLE_QUANTILES or base in _OTHERS


def arm_stats(base: str, param: str | None, b: Bucket) -> Arm:
    """The sufficient statistics of one arm's window for a rate, mean or nps metric.

    >>> arm_stats("acceptance_rate", None, Bucket({"sug": 10, "sug:accepted": 3, "sug:edited": 1}, None, None))
    Arm(n=10, s=4.0, ss=4.0)
    >>> arm_stats("latency_mean", None, Bucket({"lat.n": 2, "lat.s": 3000, "lat.q": 5_000_000}, None, None))
    Arm(n=2, s=3.0, ss=5.0)
    """
    c = b.c
    if base in COMPARABLE_MEANS:
        prefix, scale = COMPARABLE_MEANS[base]
        return Arm(c.get(prefix + ".n", 0), c.get(prefix + ".s", 0) / scale, c.get(prefix + ".q", 0) / (scale * scale))
    if base == "nps":
        p, d = c.get("nps.p", 0), c.get("nps.d", 0)
        return Arm(c.get("nps.n", 0), 100.0 * (p - d), 10_000.0 * (p + d))
    if base == "tickets_per_1k_users":
        users, k = (b.users.cardinality() if b.users is not None else 0), c.get("tk:" + param if param else "tk", 0)
        # per-user counts as Poisson: sum of squares = k + k^2 / users gives the sample variance k / (users - 1)
        return Arm(users, 1000.0 * k, 1e6 * (k + k * k / users)) if users else Arm()
    k, n = rate_counts(base, param, b)
    return Arm.rate(k, n)


def _known(p: float) -> Arm:
    """A control arm of constant value ``p`` (no variance): a share tested against a known expected share."""
    return Arm(2, 2 * p, 2 * p * p)


def _arm_keys(rule, series: Mapping[SeriesKey, SeriesBuckets], phase: str,
              group: tuple[str, ...]) -> tuple[SeriesKey | None, dict[str, SeriesKey]]:  # fmt: skip
    """(the control's series key, the treatment arms' series keys by arm value), of those present."""
    c = rule.compare
    if c.by is None:  # another phase of the feature is the control
        ctl, trt = (c.phase, group), (phase, group)
        return (ctl if ctl in series else None), ({phase: trt} if trt in series else {})
    n = len(group)
    control = None
    treatment: dict[str, SeriesKey] = {}
    for key in sorted(k for k in series if k[0] == phase and k[1][:n] == group):
        arm = key[1][n]
        if arm == c.control:
            control = key
        elif arm and (c.treatment is None or arm == c.treatment):
            treatment[arm] = key
    return control, treatment


def _arms(rule, spec: StoreSpec, series: Mapping[SeriesKey, SeriesBuckets], ckey: SeriesKey | None,
          tkeys: dict[str, SeriesKey], t: int,
          cache: WindowCache) -> tuple[Bucket | None, dict[str, Bucket]]:  # fmt: skip
    """(the control's window, the treatment arms' windows by arm value), from their series keys (``_arm_keys``)."""
    w = rule.window_ms
    control = cache.get(spec, ckey, series[ckey], t, w) if ckey is not None else None
    return control, {arm: cache.get(spec, key, series[key], t, w) for arm, key in tkeys.items()}


def _samples(base: str, param: str | None, b: Bucket) -> int:
    """An arm's samples of the metric in one bucket (what the split tests count)."""
    return b.c.get("lat.n", 0) if base in COMPARABLE_QUANTILES else arm_stats(base, param, b).n


def _split_stability(rule, base: str, param: str | None, series: Mapping[SeriesKey, SeriesBuckets],
                     ckey: SeriesKey | None, tkeys: dict[str, SeriesKey], t: int) -> dict | None:  # fmt: skip
    """The stable-split evidence of a comparison of arms without ``split`` (``rules.sequential.stability_log_e``
    over the window's buckets in time order), or None before the treatment's first sample in the window. The bucket
    holding that first sample is left out: an experiment that starts mid-bucket would look like a change."""
    if not tkeys:
        return None
    lo = t - rule.window_ms
    arms = [series[k].buckets for k in tkeys.values()]
    control = series[ckey].buckets if ckey is not None else {}
    starts = sorted({s for b in (control, *arms) for s in b if lo <= s < t})
    seq: list[tuple[int, int, int]] = []  # (bucket start, treatment samples, control samples)
    started = False
    for s in starts:
        nt = sum(_samples(base, param, b[s]) for b in arms if s in b)
        if not started:
            started = nt > 0  # the experiment's first bucket in the window: left out
            continue
        nc = _samples(base, param, control[s]) if s in control else 0
        if nt or nc:
            seq.append((s, nt, nc))
    if not started:
        return None
    st = stability_log_e([x[1] for x in seq], [x[2] for x in seq])
    nt, nc = sum(x[1] for x in seq), sum(x[2] for x in seq)
    return {"test": "stable", "arms": [rule.compare.control, *sorted(tkeys)], "counts": [nc, nt],
            "treatment_share": nt / (nt + nc) if nt + nc else None, "log_e": st.log_e,
            "changed_at": iso(seq[st.change][0]) if st.change is not None else None,
            "share_before": st.share_before, "share_after": st.share_after,
            "rejected": st.log_e >= -math.log(rule.compare.alpha)}  # fmt: skip


def srm_check(rule, control_n: int, treatment_n: dict[str, int]) -> dict | None:
    """The sample-ratio evidence of a comparison with ``split`` (None without one, or before the treatment's first
    sample in the window: no experiment runs yet), from the arms' sample counts: the counts per arm (control first,
    then the split's arms in name order), the expected shares, and whether the split is rejected."""
    split = rule.compare.split
    if not split:
        return None
    names = sorted(split)
    counts = [control_n] + [treatment_n.get(a, 0) for a in names]
    if not any(counts[1:]):
        return None
    expected = [1 - math.fsum(split[a] for a in names)] + [split[a] for a in names]
    log_e = srm_log_e(counts, expected)
    total = sum(counts)
    observed = math.fsum(counts[1:]) / total if total else None
    return {"test": "split", "arms": [rule.compare.control, *names], "counts": counts, "expected": expected,
            "treatment_share": observed, "expected_share": math.fsum(expected[1:]), "log_e": log_e,
            "rejected": log_e >= -math.log(rule.compare.alpha)}  # fmt: skip


def evaluate_compare(rule, base: str, param: str | None, spec: StoreSpec, series: Mapping[SeriesKey, SeriesBuckets],
                     phase: str, group: tuple[str, ...], t: int, cache: WindowCache) -> Evaluation:  # fmt: skip
    """Evaluate a ``compare`` rule (or its ``.srm`` companion, ``rule.srm_of`` set) for ``(phase, group)`` at ``t``."""
    c = rule.compare
    ev = Evaluation(None, None, 0, t - rule.window_ms, t)
    if c.phase is not None and phase == c.phase:
        return ev  # the control phase is not compared with itself
    ckey, tkeys = _arm_keys(rule, series, phase, group)
    control, treatment = _arms(rule, spec, series, ckey, tkeys, t, cache)
    quantile = base in COMPARABLE_QUANTILES
    if quantile:  # a quantile's samples are the calls with a latency; its test reads the sketches (_quantile)
        carm, tarms = None, {}
        control_n = control.c.get("lat.n", 0) if control is not None else 0
        treatment_n = {a: b.c.get("lat.n", 0) for a, b in treatment.items()}
    else:  # each arm's statistics once: the split check counts them, the interval pools them
        carm = arm_stats(base, param, control) if control is not None else Arm()
        tarms = {a: arm_stats(base, param, b) for a, b in treatment.items()}
        control_n, treatment_n = carm.n, {a: x.n for a, x in tarms.items()}
    if c.split is None and c.by is not None and c.check_split:
        srm = _split_stability(rule, base, param, series, ckey, tkeys, t)
    else:
        srm = srm_check(rule, control_n, treatment_n)
    if rule.srm_of is not None:
        return _srm_evaluation(rule, srm, ev)
    if control is None or not treatment:
        return ev
    if quantile:
        iv, tv, cv, nt, nc, extra = _quantile(rule, COMPARABLE_QUANTILES[base], control, treatment)
    else:
        tarm = sum(tarms.values(), Arm())
        iv = compare(tarm, carm, alpha=c.alpha, method=c.test, tau=rule.threshold, relative=c.relative)
        tv, cv, nt, nc, extra = _mean(tarm), _mean(carm), tarm.n, carm.n, {}
    ev.samples = min(nt, nc)
    value = extra.pop("delta") if quantile else iv.delta
    ev.value = None if value is None or math.isnan(value) else value
    evidence = {"control": c.control if c.by is not None else c.phase, "control_value": cv, "control_samples": nc,
                "treatment": sorted(treatment), "treatment_value": tv, "treatment_samples": nt,
                **_interval(iv), **extra}  # fmt: skip
    ev.details["compare"] = evidence
    if srm is not None:
        ev.details["srm"] = _srm_details(srm)
    if nt < rule.min_samples or nc < rule.min_samples or ev.value is None or math.isnan(iv.lo):
        # starved (rules.starvation) when both arms have data in the window but too little of the metric
        ev.live = any(control.c.values()) and any(any(b.c.values()) for b in treatment.values())
        return ev
    if srm is not None and srm["rejected"]:
        return ev  # withheld: the split is not as configured (the companion .srm rule pages)
    if quantile:
        ev.verdict = iv.lo > 0  # the share beyond the line is above the expected share: the quantile is beyond it
    else:
        ev.verdict = iv.beyond(rule.op, rule.threshold)
    return ev


def _mean(a: Arm) -> float | None:
    return a.mean if a.n else None


def _interval(iv: Interval) -> dict:
    finite = not math.isnan(iv.lo)
    return {"lo": iv.lo if finite else None, "hi": iv.hi if finite else None, "method": iv.method,
            "alpha": iv.alpha, "relative": iv.relative, "tau": iv.tau}  # fmt: skip


def _quantile(rule, q: float, control: Bucket, treatment: dict[str, Bucket]):
    """The interval of the excess share beyond the line, the arms' quantiles and sizes, and the evidence."""
    c = rule.compare
    sketches = [b.lat for b in treatment.values() if b.lat is not None]
    nt = sum(s.count for s in sketches)
    nc = control.lat.count if control.lat is not None else 0
    qc = control.lat.quantile(q) if nc else None
    qt = _merged_quantile(sketches, q) if nt else None
    delta = None
    if qc is not None and qt is not None:
        delta = (qt - qc) / qc if c.relative else qt - qc
        if c.relative and qc == 0:
            delta = None
    above = rule.op in (">", ">=")
    expected = 1 - q if above else q
    if qc is None or not nt:
        iv = compare(Arm(), _known(expected), alpha=c.alpha, method=c.test, tau=expected)
        return iv, qt, qc, nt, nc, {"delta": delta}
    line = qc * (1 + rule.threshold) if c.relative else qc + rule.threshold
    k = sum(s.count_beyond(line, above) for s in sketches)
    iv = compare(Arm.rate(k, nt), _known(expected), alpha=c.alpha, method=c.test, tau=expected)
    share = {"line": line, "share_beyond": k / nt, "expected_share": expected}
    return iv, qt, qc, nt, nc, {"delta": delta, "quantile_test": share}


def _merged_quantile(sketches, q: float) -> float | None:
    if len(sketches) == 1:
        return sketches[0].quantile(q)
    return DDSketch.merged(*sketches).quantile(q)


def _srm_details(srm: dict) -> dict:
    return {k: v for k, v in srm.items() if k != "rejected"}


def _srm_evaluation(rule, srm: dict | None, ev: Evaluation) -> Evaluation:
    """The companion rule's evaluation: true while the sequential SRM test rejects the configured split (or, without
    one, a stable split). Its value is the treatment arms' observed share of the samples (with ``split``) or the
    test's log e-value (stable split: the threshold is ``log(1/alpha)``); insufficient until each arm has
    ``min_samples``."""
    if srm is None:
        return ev
    ev.value = srm["treatment_share"] if srm["test"] == "split" else srm["log_e"]
    ev.samples = sum(srm["counts"])
    ev.details["srm"] = _srm_details(srm)
    if min(srm["counts"]) < rule.min_samples and not srm["rejected"]:
        return ev
    ev.verdict = srm["rejected"]
    return ev
