import pytest

from rules.exceptions import RollguardError
from rules.metric_names import METRICS, MetricNameError, is_rate_metric, parse_metric

# Every metric name of CONTRACT §2, with how it splits.
CONTRACT_METRICS = {
    "requests": ("requests", None),
    "error_rate": ("error_rate", None),
    "timeout_rate": ("timeout_rate", None),
    "refusal_rate": ("refusal_rate", None),
    "latency_p50": ("latency_p50", None),
    "latency_p95": ("latency_p95", None),
    "latency_p99": ("latency_p99", None),
    "latency_mean": ("latency_mean", None),
    "cost_per_request": ("cost_per_request", None),
    "cost_total": ("cost_total", None),
    "tokens_out_mean": ("tokens_out_mean", None),
    "confidence_mean": ("confidence_mean", None),
    "flag_count:pii_leak": ("flag_count", "pii_leak"),
    "flag_rate:prompt_injection": ("flag_rate", "prompt_injection"),
    "active_users": ("active_users", None),
    "acceptance_rate": ("acceptance_rate", None),
    "edit_rate": ("edit_rate", None),
    "rejection_rate": ("rejection_rate", None),
    "thumbs_down_rate": ("thumbs_down_rate", None),
    "review_rate:offensive": ("review_rate", "offensive"),
    "hallucination_rate": ("hallucination_rate", None),
    "review_score_mean": ("review_score_mean", None),
    "tickets": ("tickets", None),
    "tickets:billing": ("tickets", "billing"),
    "tickets_per_1k_users": ("tickets_per_1k_users", None),
    "csat_mean": ("csat_mean", None),
    "nps": ("nps", None),
    "flag_rate:" + "x" * 64: ("flag_rate", "x" * 64),
}


@pytest.mark.parametrize(("name", "split"), CONTRACT_METRICS.items(), ids=[n[:24] for n in CONTRACT_METRICS])
def test_every_contract_metric_parses(name, split):
    assert parse_metric(name) == split


def test_the_rate_metrics_are_exactly_those_a_confidence_bound_applies_to():
    rates = {name for name, info in METRICS.items() if info.is_rate}
    assert rates == {
        "error_rate", "timeout_rate", "refusal_rate", "flag_rate", "acceptance_rate", "edit_rate", "rejection_rate",
        "thumbs_down_rate", "review_rate", "hallucination_rate", "share_ge", "share_lt", "eval_pass_rate",
        # fractions too, but estimated from sketches past 1,024 users: the loader refuses a confidence bound on them
        # (tests/test_cohort.py)
        "retention", "returning_share",
    }  # fmt: skip
    assert is_rate_metric("review_rate:hallucination") and not is_rate_metric("flag_count:pii_leak")
    assert is_rate_metric("share_ge:review_score:4") and is_rate_metric("share_lt:confidence:0.7")


@pytest.mark.parametrize("name", ["share_ge:score:4", "share_ge:review_score", "share_lt:confidence:x",
                                  "share_lt:confidence:-1", "share_ge"])  # fmt: skip
def test_a_share_metric_names_a_known_field_and_a_number(name):
    with pytest.raises(MetricNameError, match="share_|needs a parameter"):
        parse_metric(name)


def test_a_share_counts_the_values_on_its_side_of_the_line_among_those_carrying_the_field():
    from rules.aggregate import Bucket, group_counters, group_shares, share_key
    from rules.metrics import metric_value, rate_counts

    shares = (("sh:review_score:4:ge", "review_score", True, 4.0),)
    mk = lambda **kw: type("E", (), {"type": "feedback", "label": "ok", "score": None, **kw})()  # noqa: E731
    evs = [mk(kind="review", score=s) for s in (5.0, 4.0, 3.5, 2.0)]
    evs += [mk(kind="review"), mk(kind="thumbs", label="up")]
    c = group_counters(evs)
    c.update(group_shares(evs, shares))
    b = Bucket(c, None, None)
    assert share_key("share_ge", "review_score:4") == "sh:review_score:4:ge"
    assert rate_counts("share_ge", "review_score:4", b) == (2, 4)  # the review without a score is not counted
    assert metric_value("share_ge", "review_score:4", b) == (0.5, 4)


REJECTED = {
    "unknown_with_hint": ("latency_p59", "unknown metric 'latency_p59' (did you mean"),
    "unknown_without_hint": ("zzz", "unknown metric 'zzz' (see CONTRACT §2"),
    "missing_param": ("review_rate", "needs a parameter, e.g. 'review_rate:pii_leak'"),
    "param_not_taken": ("nps:x", "takes no parameter; remove ':x'"),
    "param_upper_case": ("flag_rate:PII", "must match [a-z0-9_]{1,64}"),
    "param_empty": ("flag_rate:", "parameter '' must match"),
    "param_too_long": ("flag_rate:" + "x" * 65, "must match"),
    "param_with_colon": ("tickets:a:b", "parameter 'a:b' must match"),
    "not_a_string": (5, "metric must be a string"),
}


@pytest.mark.parametrize(("name", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_bad_metric_names_are_rejected_with_a_hint(name, message):
    with pytest.raises(MetricNameError) as caught:
        parse_metric(name)
    assert message in str(caught.value)
    assert isinstance(caught.value, RollguardError)
