"""Batch kernels behind ``DriftDetector.update_many``: one tight loop per river detector, same numbers as river.

Each kernel replays river's ``update`` for every value of a batch with the detector's state in local variables,
doing river's floating-point operations in river's order (so every flag and statistic is bit-identical to calling
``update`` value by value), and writes the state back once at the end. river resets a detector on the update
*after* a drift; the kernels do the same by calling the detector's own ``_reset`` (rare) and reloading the
locals from it. The wrapper's ``_run`` (count, mean since the last restart) is kept alongside.

A kernel is ``kernel(detector, values, stops, run) -> (flagged, estimations, run)``:

- ``values``: accepted values (floats, or 0/1 for binary detectors), in arrival order;
- ``stops``: increasing indices into ``values`` after which the wrapper's estimation is read (each slot's last
  value), so estimations are computed only there;
- ``flagged``: indices of the values that flagged drift; ``estimations``: one per stop.

Kernels exist for ADWIN (its Rust ``update`` called in the loop), Page-Hinkley, DDM, HDDM-A (river's and
:mod:`detectors.fast`'s) and EDDM; they are chosen by the *exact* class of the river detector (a subclass may change
``update``). Anything else (KSWIN, HDDM-W, whose statistics live in Rust objects) runs :func:`generic`, the plain
per-value loop. tests/test_detector_batch.py checks every kernel against river.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from river import stats
from river.drift import ADWIN, PageHinkley
from river.drift.binary import DDM, EDDM, HDDMA

from detectors import fast

__all__ = ["KERNELS", "generic", "kernel_for"]

Run = tuple[int, float]
Kernel = Callable[[Any, Sequence[Any], Sequence[int], Run], tuple[list[int], list[Any], Run]]


def generic(detector: Any, values: Sequence[Any], stops: Sequence[int], run: tuple[int, float]):
    """The per-value loop, exactly what ``DriftDetector.update`` does, for detectors without a kernel."""
    count, mean = run
    update = detector.update
    has_estimation = hasattr(detector, "estimation")
    flagged: list[int] = []
    estimations: list[Any] = []
    start = 0
    for stop in stops:
        for i in range(start, stop + 1):
            value = values[i]
            if detector.drift_detected:
                count, mean = 0, 0.0
            update(value)
            count += 1
            mean = mean + (value - mean) / count
            if detector.drift_detected:
                flagged.append(i)
        estimations.append(float(detector.estimation) if has_estimation else mean)
        start = stop + 1
    return flagged, estimations, (count, mean)


def _adwin(detector: ADWIN, values: Sequence[float], stops: Sequence[int], run: tuple[int, float]):
    # ADWIN.update: reset if the last update drifted, then drift = helper.update(x) (river's Rust core).
    count, mean = run
    drift = detector._drift_detected
    helper = detector._helper
    update = helper.update
    flagged: list[int] = []
    estimations: list[float] = []
    start = 0
    for stop in stops:
        for i, x in enumerate(values[start : stop + 1], start):
            if drift:
                detector._reset()
                helper = detector._helper
                update = helper.update
                count, mean = 0, 0.0
            drift = update(x)
            count += 1
            mean = mean + (x - mean) / count
            if drift:
                flagged.append(i)
        # ADWIN.estimation: total / width, 0.0 for an empty window.
        width = helper.get_width()
        estimations.append(float(0.0 if width == 0 else helper.get_total() / width))
        start = stop + 1
    detector._drift_detected = drift
    return flagged, estimations, (count, mean)


def _page_hinkley(detector: PageHinkley, values: Sequence[float], stops: Sequence[int], run: tuple[int, float]):
    test = getattr(detector._test_drift, "__func__", None)
    if test is PageHinkley._test_both:
        mode = 0
    elif test is PageHinkley._test_increase:
        mode = 1
    elif test is PageHinkley._test_decrease:
        mode = 2
    else:
        return generic(detector, values, stops, run)
    count, mean = run
    alpha, delta, threshold, min_instances = detector.alpha, detector.delta, detector.threshold, detector.min_instances
    drift = detector._drift_detected
    x_mean = detector._x_mean
    n, m = x_mean.n, x_mean._mean
    s_inc, s_dec = detector._sum_increase, detector._sum_decrease
    min_inc, max_dec = detector._min_increase, detector._max_decrease
    flagged: list[int] = []
    estimations: list[float] = []
    start = 0
    for stop in stops:
        for i, x in enumerate(values[start : stop + 1], start):
            if drift:
                detector._reset()
                drift = False
                x_mean = detector._x_mean
                n, m = x_mean.n, x_mean._mean
                s_inc, s_dec = detector._sum_increase, detector._sum_decrease
                min_inc, max_dec = detector._min_increase, detector._max_decrease
                count, mean = 0, 0.0
            # stats.Mean.update(x), w = 1.0
            n += 1.0
            m += (1.0 / n) * (x - m)
            dev = x - m
            s_inc = alpha * s_inc + dev - delta
            s_dec = alpha * s_dec + dev + delta
            if s_inc < min_inc:
                min_inc = s_inc
            if s_dec > max_dec:
                max_dec = s_dec
            if n >= min_instances:
                if mode == 0:
                    drift = s_inc - min_inc > threshold or max_dec - s_dec > threshold
                elif mode == 1:
                    drift = s_inc - min_inc > threshold
                else:
                    drift = max_dec - s_dec > threshold
                if drift:
                    flagged.append(i)
            count += 1
            mean = mean + (x - mean) / count
        estimations.append(mean)
        start = stop + 1
    x_mean.n, x_mean._mean = n, m
    detector._sum_increase, detector._sum_decrease = s_inc, s_dec
    detector._min_increase, detector._max_decrease = min_inc, max_dec
    detector._drift_detected = drift
    return flagged, estimations, (count, mean)


def _ddm_levels(p_min: Any, s_min: Any, warning_threshold: float, drift_threshold: float) -> tuple:
    if p_min is None or s_min is None:  # no minimum yet: river sets one before it compares
        return (None, None)
    return p_min + warning_threshold * s_min, p_min + drift_threshold * s_min


def _ddm(detector: DDM, values: Sequence[int], stops: Sequence[int], run: tuple[int, float]):
    sqrt = math.sqrt
    count, mean = run
    warm_start, warning_threshold, drift_threshold = (
        detector.warm_start,
        detector.warning_threshold,
        detector.drift_threshold,
    )
    drift, warning = detector._drift_detected, detector._warning_detected
    p = detector._p
    n, m = p.n, p._mean
    p_min, s_min, ps_min = detector._p_min, detector._s_min, detector._ps_min
    # river's p_min + threshold * s_min, the same doubles, recomputed only when the minimum moves.
    levels = _ddm_levels(p_min, s_min, warning_threshold, drift_threshold)
    flagged: list[int] = []
    estimations: list[float] = []
    start = 0
    for stop in stops:
        for i, x in enumerate(values[start : stop + 1], start):
            if drift:
                detector._reset()
                drift, warning = detector._drift_detected, detector._warning_detected
                p = detector._p
                n, m = p.n, p._mean
                p_min, s_min, ps_min = detector._p_min, detector._s_min, detector._ps_min
                levels = _ddm_levels(p_min, s_min, warning_threshold, drift_threshold)
                count, mean = 0, 0.0
            n += 1.0
            m += (1.0 / n) * (x - m)
            s = sqrt(m * (1 - m) / n)
            if n > warm_start:
                ps = m + s
                if ps <= ps_min:
                    p_min = m
                    s_min = s
                    ps_min = p_min + s_min
                    levels = p_min + warning_threshold * s_min, p_min + drift_threshold * s_min
                warning = ps > levels[0]
                if ps > levels[1]:
                    drift = True
                    warning = False
                    flagged.append(i)
            count += 1
            mean = mean + (x - mean) / count
        estimations.append(mean)
        start = stop + 1
    p.n, p._mean = n, m
    detector._p_min, detector._s_min, detector._ps_min = p_min, s_min, ps_min
    detector._drift_detected, detector._warning_detected = drift, warning
    return flagged, estimations, (count, mean)


def _hddm_a(detector: HDDMA, values: Sequence[int], stops: Sequence[int], run: tuple[int, float]):
    z, lo, hi = detector._z, detector._x_min, detector._x_max
    if not (type(z) is type(lo) is type(hi)) or z is lo or z is hi or lo is hi:
        # river clones _z into _x_min / _x_max; the in-place write-back below needs three distinct objects of
        # one class, which is all river ever makes.
        return generic(detector, values, stops, run)
    sqrt, log = math.sqrt, math.log
    count, mean = run
    # The logarithms river recomputes on every update: the same call on the same constant, the same double.
    log_bound = log(1.0 / detector.drift_confidence)
    log_drift = log(2.0 / detector.drift_confidence)
    log_warning = log(2.0 / detector.warning_confidence)
    if not (log_drift > 0.0 and log_warning > 0.0):
        # Out-of-range confidences (the registry refuses them) make river's sqrt raise; the shortcuts below
        # assume its bounds are >= 0.
        return generic(detector, values, stops, run)
    # Hoeffding bounds of _x_min / _x_max by their count: recomputed (same call, same double) only when the
    # count changes, i.e. when a cut point moves.
    lo_key = hi_key = lo_eps = hi_eps = None
    two_sided = detector.two_sided_test
    drift, warning = detector._drift_detected, detector._warning_detected
    zn, zm, lo_n, lo_m, hi_n, hi_m = z.n, z._mean, lo.n, lo._mean, hi.n, hi._mean
    flagged: list[int] = []
    estimations: list[float] = []
    start = 0
    for stop in stops:
        for i, x in enumerate(values[start : stop + 1], start):
            if drift:
                detector._reset()  # three fresh Means of one class, river's or fast's
                z, lo, hi = detector._z, detector._x_min, detector._x_max
                drift, warning = detector._drift_detected, detector._warning_detected
                zn, zm, lo_n, lo_m, hi_n, hi_m = z.n, z._mean, lo.n, lo._mean, hi.n, hi._mean
                lo_key = hi_key = None
                count, mean = 0, 0.0
            # _z.update(x)
            zn += 1.0
            zm += (1.0 / zn) * (x - zm)
            # _x_min / _x_max = _z.clone() when empty
            if lo_n == 0:
                lo_n, lo_m = zn, zm
            if hi_n == 0:
                hi_n, hi_m = zn, zm
            eps_z = sqrt(1.0 / (2 * zn) * log_bound)
            if lo_n != lo_key:
                lo_key = lo_n
                lo_eps = sqrt(1.0 / (2 * lo_n) * log_bound)
            if lo_m + lo_eps >= zm + eps_z:
                lo_n, lo_m = zn, zm
            if hi_n != hi_key:
                hi_key = hi_n
                hi_eps = sqrt(1.0 / (2 * hi_n) * log_bound)
            if hi_m - hi_eps <= zm - eps_z:
                hi_n, hi_m = zn, zm
            # _mean_incr(drift_confidence), then _mean_incr(warning_confidence); a bound is a sqrt, >= 0, so a
            # negative difference passes neither test and the bounds need not be computed.
            diff = zm - lo_m
            if lo_n == zn or diff < 0.0:
                warning = drift = False
            else:
                k = (zn - lo_n) / lo_n * (1.0 / zn)
                if diff >= sqrt(k / 2 * log_drift):
                    warning, drift = False, True
                elif diff >= sqrt(k / 2 * log_warning):
                    warning, drift = True, False
                else:
                    warning = drift = False
            if two_sided and hi_n != zn and hi_m - zm >= 0.0:
                k = (zn - hi_n) / hi_n * (1.0 / zn)
                diff = hi_m - zm
                if diff >= sqrt(k / 2 * log_drift):
                    drift = True
                elif diff >= sqrt(k / 2 * log_warning):
                    warning = True
            if drift:
                flagged.append(i)
            count += 1
            mean = mean + (x - mean) / count
        estimations.append(mean)
        start = stop + 1
    z.n, z._mean, lo.n, lo._mean, hi.n, hi._mean = zn, zm, lo_n, lo_m, hi_n, hi_m
    detector._drift_detected, detector._warning_detected = drift, warning
    return flagged, estimations, (count, mean)


def _eddm(detector: EDDM, values: Sequence[int], stops: Sequence[int], run: tuple[int, float]):
    distances = detector._error_distances
    if type(distances) is not stats.Var or type(distances.mean) is not stats.Mean:
        return generic(detector, values, stops, run)
    count, mean = run
    warm_start, alpha, beta = detector.warm_start, detector.alpha, detector.beta
    drift, warning = detector._drift_detected, detector._warning_detected
    ddof, d_mean = distances.ddof, distances.mean
    d_n, d_m, d_s = d_mean.n, d_mean._mean, distances._S
    n, last_error, n_errors, p2s_max = detector._n, detector._last_error, detector._n_errors, detector._p2s_prime_max
    flagged: list[int] = []
    estimations: list[float] = []
    start = 0
    for stop in stops:
        for i, x in enumerate(values[start : stop + 1], start):
            if drift:
                detector._reset()
                drift, warning = detector._drift_detected, detector._warning_detected
                distances = detector._error_distances
                ddof, d_mean = distances.ddof, distances.mean
                d_n, d_m, d_s = d_mean.n, d_mean._mean, distances._S
                n, last_error = detector._n, detector._last_error
                n_errors, p2s_max = detector._n_errors, detector._p2s_prime_max
                count, mean = 0, 0.0
            n += 1
            if x == 1:
                n_errors += 1
                # _error_distances.update(n - last_error): stats.Var.update with w = 1.0
                distance = n - last_error
                mean_old = d_m
                d_n += 1.0
                d_m += (1.0 / d_n) * (distance - d_m)
                d_s += 1.0 * (distance - mean_old) * (distance - d_m)
                if n > warm_start:
                    # Var.get() ** 0.5, Var.mean.get()
                    p2s = d_m + 2 * ((d_s / (d_n - ddof) if d_n > ddof else 0.0) ** 0.5)
                    if p2s > p2s_max:
                        p2s_max = p2s
                    elif n_errors > warm_start:
                        level = p2s / p2s_max
                        if level < beta:
                            drift = True
                            flagged.append(i)
                        elif level < alpha:
                            warning = True
                        else:
                            warning = False
                last_error = n
            count += 1
            mean = mean + (x - mean) / count
        estimations.append(mean)
        start = stop + 1
    d_mean.n, d_mean._mean, distances._S = d_n, d_m, d_s
    detector._n, detector._last_error, detector._n_errors, detector._p2s_prime_max = n, last_error, n_errors, p2s_max
    detector._drift_detected, detector._warning_detected = drift, warning
    return flagged, estimations, (count, mean)


KERNELS: dict[type, Kernel] = {
    ADWIN: _adwin,
    PageHinkley: _page_hinkley,
    DDM: _ddm,
    EDDM: _eddm,
    HDDMA: _hddm_a,
    fast.HDDMA: _hddm_a,
}


def kernel_for(detector: Any) -> Kernel:
    """The batch kernel for this river detector: a specialised one for its exact class, else :func:`generic`."""
    return KERNELS.get(type(detector), generic)
