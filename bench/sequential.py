"""False alarms and detection times of arm comparisons looked at every minute (not a test).

``./dev bench sequential [--runs N] [--quick]`` simulates a feature whose traffic is split between a control arm
(90 %) and a treatment arm (10 %) for 7 days, with a diurnal cycle (half to one and a half times the mean rate), and
evaluates a comparison of the two arms at every minute, as rollguard's rules are evaluated, with the intervals of
:mod:`rules.sequential`:

* ``sequential``: the always-valid normal-mixture confidence sequence;
* ``fixed``: the per-look normal interval, looked at every minute (what a naive repeated check does).

A comparison fires at the first minute where its interval lies wholly on the bad side of the threshold (both arms
with at least ``MIN_SAMPLES`` values). Three metrics, each at 1, 10 and 100 events/s:

* acceptance: a rate, 16 % in the control (the seeds' acceptance gates sit at 15-17 %); threshold 0 (any
  regression);
* latency mean: log-normal latencies (median 800 ms, sigma 0.5); threshold 0;
* latency p95: the share of treatment latencies above the control's p95, against 5 % (how rollguard compares
  quantiles: a quantile regression is an excess of values above the control's quantile); threshold 0.

*A/A*: both arms identical, the null at its boundary: every firing is a false alarm, and the rate of runs with one
must be <= alpha (0.05) for ``sequential``. *Detection*: a 2-point acceptance regression (16 % -> 14 %) and a 20 %
latency regression (every latency x 1.2) in the treatment: the median time to the first firing, and the share of
runs that fired within the 7 days.

Rates and p95 excesses are simulated exactly per minute (binomial counts). Latency means at 1 and 10 events/s are
simulated per event (log-normal draws, summed per minute); at 100 events/s, where a minute holds 600 treatment
values, per minute from the normal approximation of (sum, sum of squares) with the log-normal's exact moments.
*Sample-ratio tests* (``rules.sequential``), on the arms' sample counts per 10-minute bucket (the catalogue's
``every`` for week-long comparisons; both tests only move at bucket boundaries), the treatment's first bucket left
out as the engine does: ``split`` (the Dirichlet-multinomial e-value against the configured 10 %), a per-look
binomial z-test of the same (the naive check), and ``stable`` (the universal-inference change test, no split
configured). A/A: a steady 10 % split; detection: the treatment's share falls to 5 % on day 3 (half its events lost
to a logging bug), time from the change to the first rejection.

Everything is seeded (``--seed``): the same command prints the same table. The arithmetic is vectorised here and
checked against :func:`rules.sequential.compare` on sampled looks before anything is printed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rules.sequential import MIN_TAU_SHARE, Arm, compare, srm_log_e, stability_log_e  # noqa: E402

MINUTES = 7 * 24 * 60
SHARE_T = 0.10
ALPHA = 0.05
MIN_SAMPLES = 100
P_ACCEPT = 0.16
LAT_MU, LAT_SIGMA = math.log(800.0), 0.5
Q95_EXCESS = 0.05
RATES = (1, 10, 100)


def diurnal() -> np.ndarray:
    """Traffic per minute relative to the mean: a daily sine from 0.5 to 1.5."""
    m = np.arange(MINUTES)
    return 1.0 + 0.5 * np.sin(2 * np.pi * (m % 1440) / 1440.0)


def arm_counts(rng, rate: float) -> tuple[np.ndarray, np.ndarray]:
    total = rng.poisson(60.0 * rate * diurnal())
    nt = rng.binomial(total, SHARE_T)
    return nt, total - nt


def cumulative(*arrays):
    return [np.cumsum(a, dtype=np.float64) for a in arrays]


def intervals(nt, st, sst, nc, sc, ssc, method: str, tau: float | None):
    """Vectorised :func:`rules.sequential.compare` (absolute difference) over looks; NaN where an arm has < 2."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mt, mc = st / nt, sc / nc
        vt = np.maximum(0.0, (sst - st * st / nt) / (nt - 1)) / nt
        vc = np.maximum(0.0, (ssc - sc * sc / nc) / (nc - 1)) / nc
        delta, v = mt - mc, vt + vc
        if method == "fixed":
            half = NormalDist().inv_cdf(1 - ALPHA / 2) * np.sqrt(v)
        else:
            sd_c = np.sqrt(vc * nc)
            t = np.maximum(np.maximum(abs(tau) if tau else 0.0, MIN_TAU_SHARE * sd_c), 1e-12)
            t2 = t * t
            half = np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) - 2 * math.log(ALPHA)))
        half = np.where(v > 0, half, 0.0)
    ok = (nt >= 2) & (nc >= 2)
    return np.where(ok, delta, np.nan), np.where(ok, delta - half, np.nan), np.where(ok, delta + half, np.nan)


def first_firing(nt, nc, hi_or_lo, bad_low: bool) -> int | None:
    """First look where the interval is wholly on the bad side of 0 with enough samples, or None."""
    enough = (nt >= MIN_SAMPLES) & (nc >= MIN_SAMPLES)
    fired = enough & ((hi_or_lo < 0) if bad_low else (hi_or_lo > 0))
    idx = np.flatnonzero(fired)
    return int(idx[0]) if idx.size else None


def lognormal_moments(mu: float, sigma: float, k: int) -> float:
    return math.exp(k * mu + k * k * sigma * sigma / 2)


def latency_sums(rng, n: np.ndarray, scale: float, per_event: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per minute: the sum and sum of squares of ``n`` log-normal latencies (times ``scale``)."""
    if per_event:
        x = rng.lognormal(LAT_MU, LAT_SIGMA, int(n.sum())) * scale
        minute = np.repeat(np.arange(n.size), n)
        return np.bincount(minute, x, n.size), np.bincount(minute, x * x, n.size)
    m1, m2 = lognormal_moments(LAT_MU, LAT_SIGMA, 1), lognormal_moments(LAT_MU, LAT_SIGMA, 2)
    m3, m4 = lognormal_moments(LAT_MU, LAT_SIGMA, 3), lognormal_moments(LAT_MU, LAT_SIGMA, 4)
    cov = np.array([[m2 - m1 * m1, m3 - m1 * m2], [m3 - m1 * m2, m4 - m2 * m2]])
    z = rng.multivariate_normal([0.0, 0.0], cov, size=n.size)
    s = n * m1 + np.sqrt(n) * z[:, 0]
    ss = n * m2 + np.sqrt(n) * z[:, 1]
    return s * scale, ss * scale * scale


def run_once(rng, metric: str, rate: int, effect: bool, methods) -> dict[str, int | None]:
    nt, nc = arm_counts(rng, rate)
    if metric == "acceptance":
        st = rng.binomial(nt, P_ACCEPT - (0.02 if effect else 0.0)).astype(np.float64)
        sc = rng.binomial(nc, P_ACCEPT).astype(np.float64)
        sst, ssc, bad_low = st, sc, True
    elif metric == "latency p95":
        p_t = Q95_EXCESS
        if effect:  # share of (1.2 x latency) above the control's p95
            z95 = NormalDist().inv_cdf(1 - Q95_EXCESS)
            p_t = 1 - NormalDist().cdf(z95 - math.log(1.2) / LAT_SIGMA)
        st = rng.binomial(nt, p_t).astype(np.float64)
        sc = rng.binomial(nc, Q95_EXCESS).astype(np.float64)
        sst, ssc, bad_low = st, sc, False
    else:
        per_event = rate <= 10
        st, sst = latency_sums(rng, nt, 1.2 if effect else 1.0, per_event)
        sc, ssc = latency_sums(rng, nc, 1.0, per_event)
        bad_low = False
    cum = cumulative(nt, st, sst, nc, sc, ssc)
    out = {}
    for method in methods:
        _, lo, hi = intervals(*cum, method, None)
        out[method] = first_firing(cum[0], cum[3], hi if bad_low else lo, bad_low)
    out["_cum"] = cum  # for the cross-check
    return out


def cross_check(rng, cum) -> None:
    """The vectorised intervals equal rules.sequential.compare on sampled looks."""
    for method in ("sequential", "fixed"):
        _, lo, hi = intervals(*cum, method, None)
        for i in rng.choice(MINUTES, size=20, replace=False):
            nt, st, sst, nc, sc, ssc = (float(a[i]) for a in cum)
            iv = compare(Arm(int(nt), st, sst), Arm(int(nc), sc, ssc), alpha=ALPHA, method=method)
            for a, b in ((iv.lo, lo[i]), (iv.hi, hi[i])):
                assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (
                    method, i, a, b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000, help="seeded runs per A/A cell (detection: a fifth)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="200 runs: a smoke run")
    args = ap.parse_args()
    runs = 200 if args.quick else args.runs
    t0 = time.perf_counter()
    print(f"arms: treatment {SHARE_T:.0%} / control {1 - SHARE_T:.0%}, 7 days looked at every minute "
          f"({MINUTES:,} looks), alpha {ALPHA}, min {MIN_SAMPLES} per arm; seed {args.seed}")  # fmt: skip
    print()
    print("A/A: share of runs with a false alarm within 7 days")
    print(f"{'metric':14s} {'events/s':>8s} {'runs':>6s} {'sequential':>11s} {'fixed, every minute':>20s}")
    rows = []
    for metric in ("acceptance", "latency mean", "latency p95"):
        for rate in RATES:
            n = runs if not (metric == "latency mean" and rate == 10) else max(runs // 5, 40)
            rng = np.random.default_rng([args.seed, RATES.index(rate), len(metric)])
            fired = {"sequential": 0, "fixed": 0}
            for r in range(n):
                res = run_once(rng, metric, rate, False, ("sequential", "fixed"))
                if r == 0:
                    cross_check(rng, res["_cum"])
                for m in fired:
                    fired[m] += res[m] is not None
            rows.append((metric, rate, n, fired["sequential"] / n, fired["fixed"] / n))
            print(f"{metric:14s} {rate:8d} {n:6d} {fired['sequential'] / n:11.3f} {fired['fixed'] / n:20.3f}",
                  flush=True)  # fmt: skip
    print()
    print("Detection: acceptance 16% -> 14%, latency x 1.2; minutes to the first firing (median over runs that fired)")
    print(f"{'metric':14s} {'events/s':>8s} {'runs':>6s} {'fired':>6s} {'median':>9s} {'p90':>9s}")
    for metric in ("acceptance", "latency mean", "latency p95"):
        for rate in RATES:
            n = max(runs // 5, 20)
            rng = np.random.default_rng([args.seed, 100 + RATES.index(rate), len(metric)])
            times = [run_once(rng, metric, rate, True, ("sequential",))["sequential"] for _ in range(n)]
            hit = [t + 1 for t in times if t is not None]
            med = _dur(float(np.median(hit))) if hit else "-"
            p90 = _dur(float(np.percentile(hit, 90))) if hit else "-"
            print(f"{metric:14s} {rate:8d} {n:6d} {len(hit) / n:6.0%} {med:>9s} {p90:>9s}", flush=True)
    worst = max(r[3] for r in rows)
    worst_srm = srm_tables(args.seed, runs)
    print()
    print(f"worst A/A false-alarm rate of the sample-ratio tests: {worst_srm:.3f} (aim <= {ALPHA})")
    print(f"worst A/A false-alarm rate of the sequential test: {worst:.3f} (aim <= {ALPHA}); naive fixed test: "
          f"{min(r[4] for r in rows):.3f} .. {max(r[4] for r in rows):.3f}; {time.perf_counter() - t0:.0f}s")  # fmt: skip


BUCKET_MIN = 10
BUCKETS = MINUTES // BUCKET_MIN
CHANGE_BUCKET = 3 * 1440 // BUCKET_MIN


def srm_buckets(rng, rate: int, change: bool) -> tuple[np.ndarray, np.ndarray]:
    """Treatment and control samples per 10-minute bucket (the first, where the treatment starts, left out)."""
    total = rng.poisson(60.0 * rate * diurnal()).reshape(BUCKETS, BUCKET_MIN).sum(axis=1)
    share = np.full(BUCKETS, SHARE_T)
    if change:
        share[CHANGE_BUCKET:] = SHARE_T / 2
    nt = rng.binomial(total, share)
    return nt[1:], (total - nt)[1:]


def _gammaln(x: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln  # river's dependency; only this bench needs it vectorised

    return gammaln(x)


def _kt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _gammaln(a + 0.5) + _gammaln(b + 0.5) - _gammaln(a + b + 1) - 2 * math.lgamma(0.5)


def _loglik(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        la = np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / n), 0.0)
        lb = np.where(b > 0, b * np.log(np.where(b > 0, b, 1) / n), 0.0)
    return la + lb


def stable_log_e(nt: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """Vectorised :func:`rules.sequential.stability_log_e` at every look (after each bucket; no empty buckets)."""
    pa = np.concatenate([[0.0], np.cumsum(nt, dtype=np.float64)])
    pb = np.concatenate([[0.0], np.cumsum(nc, dtype=np.float64)])
    m = nt.size
    look = np.arange(1, m + 1)[:, None]  # look i sees buckets < i
    k = np.arange(1, m + 1)[None, :]
    valid = k < look
    ka, kb = np.broadcast_to(pa[1:][None, :], (m, m)), np.broadcast_to(pb[1:][None, :], (m, m))
    ta, tb = pa[1:][:, None], pb[1:][:, None]
    kt_before = _kt(pa[1:], pb[1:])[None, :]
    after = _kt(np.where(valid, ta - ka, 0.0), np.where(valid, tb - kb, 0.0))
    terms = np.where(valid, kt_before + after - np.log(k) - np.log(k + 1), -np.inf)
    none = (_kt(pa[1:], pb[1:]) - np.log(np.arange(1, m + 1)))[:, None]
    terms = np.concatenate([terms, none], axis=1)
    top = terms.max(axis=1, keepdims=True)
    log_q = top[:, 0] + np.log(np.exp(terms - top).sum(axis=1))
    return log_q - _loglik(pa[1:], pb[1:])


def split_log_e(nt: np.ndarray, nc: np.ndarray, concentration: float = 100.0) -> np.ndarray:
    """Vectorised :func:`rules.sequential.srm_log_e` (treatment, control; expected 10 %) at every look."""
    a, b = np.cumsum(nt, dtype=np.float64), np.cumsum(nc, dtype=np.float64)
    at, ac = concentration * SHARE_T, concentration * (1 - SHARE_T)
    return (math.lgamma(concentration) - _gammaln(concentration + a + b) + _gammaln(at + a) - math.lgamma(at)
            - a * math.log(SHARE_T) + _gammaln(ac + b) - math.lgamma(ac) - b * math.log(1 - SHARE_T))  # fmt: skip


def split_z(nt: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """The naive per-look check: |z| of the treatment's share against 10 %."""
    a, n = np.cumsum(nt, dtype=np.float64), np.cumsum(nt + nc, dtype=np.float64)
    return np.abs(a - n * SHARE_T) / np.sqrt(n * SHARE_T * (1 - SHARE_T))


def srm_cross_check(rng, nt: np.ndarray, nc: np.ndarray) -> None:
    """The vectorised tests equal rules.sequential's on sampled looks."""
    stable, split = stable_log_e(nt, nc), split_log_e(nt, nc)
    for i in rng.choice(nt.size, size=8, replace=False):
        want = stability_log_e(list(nt[: i + 1]), list(nc[: i + 1])).log_e
        assert math.isclose(stable[i], want, rel_tol=1e-9, abs_tol=1e-7), ("stable", i, stable[i], want)
        want = srm_log_e([int(nc[: i + 1].sum()), int(nt[: i + 1].sum())], [1 - SHARE_T, SHARE_T])
        assert math.isclose(split[i], want, rel_tol=1e-9, abs_tol=1e-7), ("split", i, split[i], want)


def srm_tables(seed: int, runs: int) -> float:
    """Print the sample-ratio A/A and detection tables; the worst sequential A/A rate."""
    bound, z = -math.log(ALPHA), NormalDist().inv_cdf(1 - ALPHA / 2)
    print()
    print(f"Sample-ratio tests, treatment {SHARE_T:.0%}, {BUCKET_MIN}-minute buckets ({BUCKETS - 1:,} looks)")
    print(f"{'A/A':14s} {'events/s':>8s} {'runs':>6s} {'split':>7s} {'stable':>7s} {'z-test, every look':>19s}")
    worst = 0.0
    for rate in RATES:
        rng = np.random.default_rng([seed, 200 + RATES.index(rate)])
        fired = np.zeros(3)
        for r in range(runs):
            nt, nc = srm_buckets(rng, rate, False)
            if r == 0:
                srm_cross_check(rng, nt, nc)
            fired += [(split_log_e(nt, nc) >= bound).any(), (stable_log_e(nt, nc) >= bound).any(),
                      (split_z(nt, nc) >= z).any()]  # fmt: skip
        worst = max(worst, fired[0] / runs, fired[1] / runs)
        print(f"{'steady 10 %':14s} {rate:8d} {runs:6d} {fired[0] / runs:7.3f} {fired[1] / runs:7.3f} "
              f"{fired[2] / runs:19.3f}", flush=True)  # fmt: skip
    print(f"{'detection':14s} {'events/s':>8s} {'runs':>6s} {'split: median':>14s} {'p90':>7s} "
          f"{'stable: median':>15s} {'p90':>7s}  (from the change on day 3)")  # fmt: skip
    for rate in RATES:
        rng = np.random.default_rng([seed, 300 + RATES.index(rate)])
        n = max(runs // 5, 20)
        times: dict[str, list[float]] = {"split": [], "stable": []}
        for _ in range(n):
            nt, nc = srm_buckets(rng, rate, True)
            for name, e in (("split", split_log_e(nt, nc)), ("stable", stable_log_e(nt, nc))):
                after = np.flatnonzero(e[CHANGE_BUCKET - 1:] >= bound)  # look i covers buckets 1..i+1
                times[name].append(float((after[0] + 1) * BUCKET_MIN) if after.size else math.inf)
        cells = []
        for name in ("split", "stable"):
            t = np.array(times[name])
            cells += [_dur(float(np.median(t))), _dur(float(np.percentile(t, 90)))]
        print(f"{'10 % -> 5 %':14s} {rate:8d} {n:6d} {cells[0]:>14s} {cells[1]:>7s} {cells[2]:>15s} {cells[3]:>7s}",
              flush=True)  # fmt: skip
    return worst


def _dur(minutes: float) -> str:
    if math.isinf(minutes):
        return "never"
    if minutes < 60:
        return f"{minutes:.0f}m"
    if minutes < 1440:
        return f"{minutes / 60:.1f}h"
    return f"{minutes / 1440:.1f}d"


if __name__ == "__main__":
    main()
