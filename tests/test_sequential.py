"""rules.sequential: always-valid intervals for treatment - control, the per-look interval, and the SRM test.

The coverage checks are seeded simulations (deterministic): an always-valid interval looked at after every batch
must exclude the true difference in at most ~alpha of the runs, where the per-look interval looked at as often
does so in far more; the SRM e-value must reject a correct split in at most alpha of the runs (exactly, by Ville's
inequality) and find a wrong one.
"""

from __future__ import annotations

import math
import random

import pytest

from rules.sequential import Arm, Interval, Stability, compare, srm_log_e, srm_rejects, stability_log_e


def test_arm_statistics():
    a = Arm.of([1, 2, 3, 4])
    assert (a.n, a.s, a.ss) == (4, 10.0, 30.0)
    assert a.mean == 2.5 and a.var == pytest.approx(5 / 3)
    assert Arm.rate(3, 10) == Arm.of([1] * 3 + [0] * 7)
    assert Arm.of([1, 2]) + Arm.of([3, 4]) == a
    assert math.isnan(Arm().mean) and Arm.of([5]).var == 0.0


def test_fixed_interval_is_the_normal_interval():
    t, c = Arm.of([1, 2, 3, 4, 5]), Arm.of([2, 4, 6, 8])
    iv = compare(t, c, alpha=0.05, method="fixed")
    se = math.sqrt(t.var / t.n + c.var / c.n)
    assert iv.delta == pytest.approx(3 - 5)
    assert (iv.lo, iv.hi) == pytest.approx((-2 - 1.959964 * se, -2 + 1.959964 * se))
    assert iv.tau is None and iv.method == "fixed"


def test_sequential_interval_is_the_mixture_boundary():
    t, c = Arm.rate(130, 1000), Arm.rate(1600, 10000)
    iv = compare(t, c, alpha=0.05, tau=0.02)
    v = t.var / t.n + c.var / c.n
    half = math.sqrt(v * (v + 0.0004) / 0.0004 * (math.log((v + 0.0004) / v) + 2 * math.log(20)))
    assert (iv.lo, iv.hi) == pytest.approx((iv.delta - half, iv.delta + half))
    assert iv.delta == pytest.approx(0.13 - 0.16) and iv.tau == 0.02
    # it is wider than the per-look interval (it pays for every look) and narrows as data accrues
    fixed = compare(t, c, method="fixed")
    assert iv.hi - iv.lo > fixed.hi - fixed.lo
    more = compare(Arm.rate(1300, 10000), Arm.rate(16000, 100000), tau=0.02)
    assert more.hi - more.lo < iv.hi - iv.lo


def test_tau_defaults_to_a_share_of_the_control_spread():
    iv = compare(Arm.rate(10, 100), Arm.rate(100, 1000))
    assert iv.tau == pytest.approx(0.05 * math.sqrt(Arm.rate(100, 1000).var))


def test_relative_difference_uses_the_delta_method():
    t, c = Arm.of([11, 13, 12, 14]), Arm.of([10, 9, 11, 10, 10])
    iv = compare(t, c, method="fixed", relative=True)
    assert iv.delta == pytest.approx((12.5 - 10) / 10)
    v = (t.var / t.n) / 100 + 12.5**2 * (c.var / c.n) / 10**4
    assert iv.hi - iv.delta == pytest.approx(1.959964 * math.sqrt(v))
    assert math.isnan(compare(t, Arm.of([0, 0, 0]), relative=True).delta)


def test_degenerate_arms():
    assert math.isnan(compare(Arm.of([1]), Arm.of([1, 2])).lo)
    iv = compare(Arm.of([3, 3, 3]), Arm.of([1, 1]))
    assert (iv.delta, iv.lo, iv.hi) == (2, 2, 2)
    with pytest.raises(ValueError):
        compare(Arm.of([1, 2]), Arm.of([1, 2]), alpha=1.5)
    with pytest.raises(ValueError):
        compare(Arm.of([1, 2]), Arm.of([1, 2]), method="bayes")


@pytest.mark.parametrize("op,threshold,lo,hi,fires", [
    ("<", -0.02, -0.05, -0.03, True), ("<", -0.02, -0.05, -0.01, False), ("<=", -0.02, -0.05, -0.02, True),
    (">", 0.1, 0.11, 0.3, True), (">", 0.1, 0.1, 0.3, False), (">=", 0.1, 0.1, 0.3, True),
])  # fmt: skip
def test_beyond_means_the_whole_interval_is_past_the_threshold(op, threshold, lo, hi, fires):
    assert Interval((lo + hi) / 2, lo, hi, "sequential", False, 0.05, 0.01).beyond(op, threshold) is fires


def test_beyond_refuses_a_two_sided_op():
    with pytest.raises(ValueError):
        Interval(0, -1, 1, "fixed", False, 0.05, None).beyond("==", 0)


def _looks_until_excluded(rnd: random.Random, method: str, looks: int, batch: int) -> bool:
    """A/A with Gaussian values: does the interval ever exclude the true difference 0?"""
    t, c = Arm(), Arm()
    for _ in range(looks):
        t = t + Arm.of([rnd.gauss(0, 1) for _ in range(batch)])
        c = c + Arm.of([rnd.gauss(0, 1) for _ in range(3 * batch)])
        iv = compare(t, c, method=method, tau=0.2)
        if iv.lo > 0 or iv.hi < 0:
            return True
    return False


def test_the_sequential_interval_keeps_its_level_when_looked_at_every_batch():
    rnd = random.Random(11)
    runs = 300
    seq = sum(_looks_until_excluded(rnd, "sequential", 150, 10) for _ in range(runs)) / runs
    fixed = sum(_looks_until_excluded(rnd, "fixed", 150, 10) for _ in range(runs)) / runs
    assert seq <= 0.06, seq  # alpha 0.05 (+ simulation error)
    assert fixed >= 0.2, fixed  # the per-look interval, looked at 150 times, fails far more often


def test_srm_e_value_rejects_a_wrong_split_and_keeps_its_level_on_a_right_one():
    assert srm_log_e([0, 0], [0.1, 0.9]) == 0.0
    assert not srm_rejects([10, 90], [0.1, 0.9])
    assert srm_rejects([41, 959], [0.1, 0.9])  # 4.1 % instead of 10 %
    rnd = random.Random(5)
    false = 0
    runs = 400
    for _ in range(runs):
        counts = [0, 0]
        for _ in range(40):  # 40 looks, 50 events apart
            for _ in range(50):
                counts[rnd.random() >= 0.1] += 1
            if srm_rejects(counts, [0.1, 0.9]):
                false += 1
                break
    assert false / runs <= 0.05, false / runs


def test_srm_arguments_are_checked():
    with pytest.raises(ValueError):
        srm_log_e([1, 2, 3], [0.5, 0.5])
    with pytest.raises(ValueError):
        srm_log_e([1, 2], [0.5, 0.6])
    with pytest.raises(ValueError):
        srm_log_e([1, 2], [0.0, 1.0])


# --- the stable-split test -----------------------------------------------------------------------------------------


def _kt_sequence(arms: list[int]) -> float:
    """Log KT probability of a 0/1 sequence, by its predictive probabilities one sample at a time (the definition)."""
    out, n1, n = 0.0, 0, 0
    for x in arms:
        p1 = (n1 + 0.5) / (n + 1)
        out += math.log(p1 if x else 1 - p1)
        n1, n = n1 + x, n + 1
    return out


def test_the_stable_split_e_value_is_its_definition_on_a_small_sequence():
    """Q: after the k-th bucket, weight 1/(k(k+1)), a KT estimator before and one after; positions not reached yet
    weigh 1/m and see one KT estimator. Divided by the likelihood at the best constant share."""
    buckets = [(2, 5), (0, 3), (1, 1), (4, 2)]  # (treatment, control)
    seqs = [[1] * a + [0] * b for a, b in buckets]
    m = len(buckets)
    terms = [math.log(1 / m) + _kt_sequence([x for s in seqs for x in s])]
    for k in range(1, m):
        before = [x for s in seqs[:k] for x in s]
        after = [x for s in seqs[k:] for x in s]
        terms.append(math.log(1 / (k * (k + 1))) + _kt_sequence(before) + _kt_sequence(after))
    log_q = math.log(sum(math.exp(x) for x in terms))
    a, n = sum(b[0] for b in buckets), sum(b[0] + b[1] for b in buckets)
    log_l = a * math.log(a / n) + (n - a) * math.log(1 - a / n)
    got = stability_log_e([b[0] for b in buckets], [b[1] for b in buckets])
    assert got.log_e == pytest.approx(log_q - log_l, abs=1e-9)
    # empty buckets take no position; no samples, no evidence
    with_empty = stability_log_e([2, 0, 0, 1, 4], [5, 0, 3, 1, 2])
    assert with_empty.log_e == pytest.approx(got.log_e, abs=1e-12)
    assert stability_log_e([], []) == stability_log_e([0, 0], [0, 0]) == Stability(0.0, None, None, None)


def test_the_stable_split_test_keeps_its_level_and_finds_a_change():
    rnd = random.Random(7)
    runs, buckets, per_bucket = 300, 60, 200
    false = 0
    for _ in range(runs):
        t, c = [], []
        for _ in range(buckets):
            k = sum(rnd.random() < 0.1 for _ in range(per_bucket))
            t.append(k)
            c.append(per_bucket - k)
            if stability_log_e(t, c).log_e >= math.log(20):  # looked at after every bucket
                false += 1
                break
    assert false / runs <= 0.05, false / runs
    # 10 % for 40 buckets, then 5 %: found, placed at the change, both shares reported
    t = [20] * 40 + [10] * 10
    c = [per_bucket - x for x in t]
    s = stability_log_e(t, c)
    assert s.log_e >= math.log(20) and s.change == 40
    assert (s.share_before, s.share_after) == (0.1, 0.05)
    assert stability_log_e(t[:40], c[:40]).log_e < 0  # the same split throughout: evidence for the null


def test_stable_split_arguments_are_checked():
    with pytest.raises(ValueError):
        stability_log_e([1, 2], [1])
    with pytest.raises(ValueError):
        stability_log_e([1, -2], [1, 1])
