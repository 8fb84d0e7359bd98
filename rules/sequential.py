"""Comparing a treatment arm with a control when the comparison is looked at every minute.

rollguard evaluates its rules at every instant (every minute for most), so a comparison of two arms is looked at
thousands of times. A per-look 95 % interval checked at each of them raises a false alarm far more often than 5 %
of the time (``bench/sequential.py`` measures how much more): for a kill switch that is a needless rollback. This
module gives intervals for the difference *treatment - control* that stay valid however often, and whenever, one
looks: *confidence sequences*. A comparison accrues from its start; :class:`Arm` holds the sufficient statistics of
one arm (count, sum, sum of squares; a rate is the mean of 0/1 values).

Methods, with ``d = mean_T - mean_C`` and its variance ``V = s2_T / n_T + s2_C / n_C``:

* ``sequential``: the normal-mixture sequential probability ratio test (mSPRT: Robbins, "Statistical methods
  related to the law of the iterated logarithm", Ann. Math. Statist. 1970; for A/B tests Johari, Koomen, Pekelis &
  Walsh, "Always valid inference: continuous monitoring of A/B tests", Operations Research 70(3), 2022). Mixing the
  Gaussian likelihood ratio of the difference ``theta`` over ``N(theta0, tau^2)`` gives

      L(theta0) = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2)))

  a nonnegative martingale under ``theta0`` (for Gaussian increments with known variance), so by Ville's inequality
  ``P(exists t: L_t >= 1/alpha) <= alpha``: the set ``{theta0 : L(theta0) < 1/alpha}`` holds the true difference
  at every look at once with probability >= 1 - alpha. That set is the interval

      d +- sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) - 2 log alpha)).

  ``tau`` is the difference the sequence is tuned to detect soonest; by default the tolerated regression (the rule's
  threshold), floored so a zero threshold still gives a usable sequence. The guarantee is asymptotic here (means of
  many events are close to Gaussian; ``V`` is estimated): the A/A simulations of ``bench/sequential.py`` measure
  the false-alarm rate for rates and latency means at several traffic levels.
* ``fixed``: ``d +- z(1 - alpha/2) sqrt(V)``, the per-look interval, valid for one pre-planned look only; kept for
  rules that want it and as the naive baseline of the benchmark.
* ``relative``: the same for ``d / mean_C``, with the delta-method variance
  ``(s2_T / n_T) / m_C^2 + m_T^2 (s2_C / n_C) / m_C^4``.

Sample-ratio mismatch (SRM): an experiment whose arms are not split as configured is not to be trusted (a bug in
assignment or in logging is likelier than a real effect). :func:`srm_log_e` is the Dirichlet-multinomial mixture
test of Lindon & Malek ("Anytime-valid inference for multinomial count data", NeurIPS 2022): the posterior
predictive probability of the arm counts under a Dirichlet prior centred on the expected split, divided by their
probability under the expected split, is a nonnegative martingale under the null (each event's arm an independent
draw with the expected probabilities), so rejecting once it reaches ``1/alpha`` is wrong with probability
<= alpha, exactly, at any number of looks.

Without a configured split, :func:`stability_log_e` tests that the split *stays the same* over time, whatever it
is: the null is that each sample's arm is an independent draw with one unknown treatment share ``p`` throughout.
A composite null has no single likelihood to divide by, so the test is *universal inference* (Wasserman, Ramdas &
Balakrishnan, "Universal inference", PNAS 117(29), 2020): a predictive distribution ``Q`` fixed in advance, divided
by the likelihood at the null's maximum ``sup_p L_p``. For every ``p``, ``Q / L_p`` is a nonnegative martingale
under ``p``, and ``Q / sup_p L_p <= Q / L_p``, so the ratio reaches ``1/alpha`` with probability <= alpha at any
number of looks. ``Q`` bets on one change of the share: a mixture over the change's position (after the ``k``-th
time bucket that holds samples, weight ``1 / (k (k + 1))``, summing to 1) of two independent Krichevsky-Trofimov
estimators (Beta(1/2, 1/2) mixtures), one before the change and one after; the weight of positions not reached yet
is the no-change estimator. Under a stable split it loses about ``log n`` to the maximum; a share that moves from
10 % to 5 % after a day at 1 sample/s rejects within the hour (``bench/sequential.py`` measures both).

Nothing here reads a clock or draws a random number; the functions are plain arithmetic (``math``), the same in
replay and live.

>>> c, t = Arm.of([1.0] * 160 + [0.0] * 840), Arm.of([1.0] * 130 + [0.0] * 870)
>>> iv = compare(t, c, alpha=0.05, tau=0.02)
>>> round(iv.delta, 3), iv.lo < -0.03 < iv.hi, iv.hi < 0.05
(-0.03, True, True)
>>> fixed = compare(t, c, alpha=0.05, method="fixed")
>>> fixed.hi - fixed.lo < iv.hi - iv.lo  # the always-valid interval is wider: it pays for every look
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["Arm", "Interval", "compare", "srm_log_e", "srm_rejects", "stability_log_e", "Stability", "METHODS", "MIN_TAU_SHARE"]

METHODS = ("sequential", "fixed")
MIN_TAU_SHARE = 0.05  # tau is at least this share of the control's standard deviation (a zero threshold)


@dataclass(frozen=True, slots=True)
class Arm:
    """Sufficient statistics of one arm: ``n`` values, their sum ``s`` and sum of squares ``ss``."""

    n: int = 0
    s: float = 0.0
    ss: float = 0.0

    @classmethod
    def of(cls, values) -> Arm:
        xs = [float(x) for x in values]
        return cls(len(xs), math.fsum(xs), math.fsum(x * x for x in xs))

    @classmethod
    def rate(cls, successes: int, trials: int) -> Arm:
        """A rate as the mean of 0/1 values: the sum and the sum of squares are both the successes."""
        return cls(trials, float(successes), float(successes))

    def __add__(self, other: Arm) -> Arm:
        return Arm(self.n + other.n, self.s + other.s, self.ss + other.ss)

    @property
    def mean(self) -> float:
        return self.s / self.n if self.n else math.nan

    @property
    def var(self) -> float:
        """The sample variance (n - 1 in the denominator); 0 for fewer than two values."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.ss - self.s * self.s / self.n) / (self.n - 1))


@dataclass(frozen=True, slots=True)
class Interval:
    """An interval for treatment - control (or its ratio to the control, ``relative``), with its evidence."""

    delta: float  # the point estimate
    lo: float
    hi: float
    method: str  # sequential | fixed
    relative: bool
    alpha: float
    tau: float | None  # the mixture scale (sequential)

    def beyond(self, op: str, threshold: float) -> bool:
        """Whether the whole interval lies on the firing side of ``threshold``: the regression is established."""
        if op in ("<", "<="):
            return self.hi < threshold if op == "<" else self.hi <= threshold
        if op in (">", ">="):
            return self.lo > threshold if op == ">" else self.lo >= threshold
        raise ValueError(f"a comparison needs a one-sided op (<, <=, >, >=), got {op!r}")

    def as_dict(self) -> dict:
        return {"delta": self.delta, "lo": self.lo, "hi": self.hi, "method": self.method,
                "relative": self.relative, "alpha": self.alpha, "tau": self.tau}  # fmt: skip


def compare(treatment: Arm, control: Arm, *, alpha: float = 0.05, method: str = "sequential", tau: float | None = None,
            relative: bool = False) -> Interval:  # fmt: skip
    """The interval for treatment - control (``relative``: over the control's mean) at level ``1 - alpha``.

    NaN bounds when either arm has fewer than two values, or ``relative`` with a control mean of 0. With both
    variances 0 (every value equal in both arms) the interval is the point ``delta``."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    nan = math.nan
    if treatment.n < 2 or control.n < 2:
        return Interval(nan, nan, nan, method, relative, alpha, tau)
    mt, mc = treatment.mean, control.mean
    vt, vc = treatment.var / treatment.n, control.var / control.n
    if relative:
        if mc == 0:
            return Interval(nan, nan, nan, method, relative, alpha, tau)
        delta = (mt - mc) / mc
        v = vt / (mc * mc) + mt * mt * vc / mc**4
        sd_c = math.sqrt(control.var) / abs(mc)
    else:
        delta = mt - mc
        v = vt + vc
        sd_c = math.sqrt(control.var)
    if v <= 0:
        return Interval(delta, delta, delta, method, relative, alpha, tau)
    if method == "fixed":
        half = NormalDist().inv_cdf(1 - alpha / 2) * math.sqrt(v)
        return Interval(delta, delta - half, delta + half, method, relative, alpha, None)
    t = abs(tau) if tau else 0.0
    t = max(t, MIN_TAU_SHARE * sd_c, 1e-12)
    t2 = t * t
    half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) - 2 * math.log(alpha)))
    return Interval(delta, delta - half, delta + half, method, relative, alpha, t)


def srm_log_e(counts: list[int] | tuple[int, ...], expected: list[float] | tuple[float, ...],
              concentration: float = 100.0) -> float:  # fmt: skip
    """Log of the Dirichlet-multinomial mixture e-value for arm ``counts`` against the ``expected`` split
    (probabilities summing to 1), prior ``Dirichlet(concentration * expected)``. 0 with no events; it grows when the
    observed split drifts from the expected one (Lindon & Malek 2022).

    >>> srm_log_e([100, 900], [0.1, 0.9]) < 0 < srm_log_e([41, 959], [0.1, 0.9])
    True
    """
    if len(counts) != len(expected) or len(counts) < 2:
        raise ValueError("counts and expected need one entry per arm, at least two arms")
    total_p = math.fsum(expected)
    if any(p <= 0 for p in expected) or abs(total_p - 1) > 1e-9:
        raise ValueError(f"expected shares must be positive and sum to 1, got {list(expected)}")
    a = [concentration * p for p in expected]
    n = sum(counts)
    out = math.lgamma(concentration) - math.lgamma(concentration + n)
    for x, ai, p in zip(counts, a, expected):
        out += math.lgamma(ai + x) - math.lgamma(ai) - x * math.log(p)
    return out


def srm_rejects(counts, expected, alpha: float = 0.05, concentration: float = 100.0) -> bool:
    """Whether the arm counts contradict the expected split at level ``alpha`` (valid at every look)."""
    return srm_log_e(counts, expected, concentration) >= -math.log(alpha)


@dataclass(frozen=True, slots=True)
class Stability:
    """The evidence of :func:`stability_log_e`: the log e-value, and the likeliest change: the index of the first
    bucket after it (None with fewer than two buckets) and the treatment's share before and after it."""

    log_e: float
    change: int | None
    share_before: float | None
    share_after: float | None


def _kt(a: int, b: int) -> float:
    """Log of the Krichevsky-Trofimov (Beta(1/2, 1/2) mixture) probability of a sequence of ``a`` treatment and
    ``b`` control samples, in any order."""
    return math.lgamma(a + 0.5) + math.lgamma(b + 0.5) - math.lgamma(a + b + 1) - _LOG_PI


_LOG_PI = 2 * math.lgamma(0.5)


def _log_likelihood(a: int, b: int) -> float:
    """Log-likelihood of ``a`` treatment and ``b`` control samples at the maximum (share ``a / (a + b)``)."""
    n = a + b
    return (a * math.log(a / n) if a else 0.0) + (b * math.log(b / n) if b else 0.0)


def stability_log_e(treatment: list[int] | tuple[int, ...], control: list[int] | tuple[int, ...]) -> Stability:
    """Log of the universal-inference e-value against "the treatment's share of samples is constant", from the
    samples per time bucket of each arm in time order (buckets without samples are skipped; see the module
    docstring). 0 with no samples.

    >>> stability_log_e([10] * 50, [90] * 50).log_e < 0
    True
    >>> s = stability_log_e([10] * 25 + [4] * 25, [90] * 25 + [96] * 25)
    >>> s.log_e > math.log(20), s.change, round(s.share_before, 2), round(s.share_after, 2)
    (True, 25, 0.1, 0.04)
    """
    if len(treatment) != len(control):
        raise ValueError("treatment and control need one count per bucket each")
    pairs = [(a, b) for a, b in zip(treatment, control) if a < 0 or b < 0 or a + b]
    if any(a < 0 or b < 0 for a, b in pairs):
        raise ValueError("sample counts cannot be negative")
    m = len(pairs)
    ta, tb = sum(a for a, _ in pairs), sum(b for _, b in pairs)
    if not m:
        return Stability(0.0, None, None, None)
    terms = [_kt(ta, tb) - math.log(m)]  # every change position not reached yet: no change so far
    pa = pb = 0
    best, best_k = -math.inf, None
    for k in range(1, m):
        pa += pairs[k - 1][0]
        pb += pairs[k - 1][1]
        split = _kt(pa, pb) + _kt(ta - pa, tb - pb)
        terms.append(split - math.log(k) - math.log(k + 1))
        if split > best:
            best, best_k, before = split, k, (pa, pb)
    top = max(terms)
    log_q = top + math.log(math.fsum(math.exp(x - top) for x in terms))
    log_e = log_q - _log_likelihood(ta, tb)
    if best_k is None:
        return Stability(log_e, None, ta / (ta + tb), None)
    a, b = before
    return Stability(log_e, best_k, a / (a + b), (ta - a) / (ta - a + tb - b))
