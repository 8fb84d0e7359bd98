"""``DriftDetector.update_many`` is the per-value ``update`` loop, bit for bit (river stays the reference).

For random streams with drifts (so river's reset-after-drift path runs), random slot assignments and random batch
splits, a detector fed by ``update_many`` (its state round-tripped between some batches) and a twin fed value by
value must give the same per-slot ``[flags, estimation, n_updates]`` and the same signed state after every batch.
Floats are compared exactly (``==`` and ``float.hex``), not approximately.
"""

from __future__ import annotations

import collections
import random
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river.drift.binary import HDDMA

from detectors import BINARY_DETECTORS, DetectorError, DriftDetector, batch, make_detector

KEY = b"0123456789abcdef-batch"

PARAMS = {
    "adwin": st.fixed_dictionaries(
        {},
        optional={
            "delta": st.sampled_from([0.002, 0.05, 0.3, 0.9]),
            "clock": st.sampled_from([1, 2, 8, 32]),
            "max_buckets": st.sampled_from([2, 5]),  # 1 panics river's Rust core after some drifts, per value too
            "min_window_length": st.sampled_from([1, 3, 5]),
            "grace_period": st.sampled_from([0, 3, 10]),
        },
    ),
    "page_hinkley": st.fixed_dictionaries(
        {},
        optional={
            "min_instances": st.sampled_from([1, 2, 10, 30]),
            "delta": st.sampled_from([0.0, 0.005, 0.3]),
            "threshold": st.sampled_from([0.5, 3.0, 20.0, 50.0]),
            "alpha": st.sampled_from([1 - 0.0001, 0.9, 1.0]),
            "mode": st.sampled_from(["both", "up", "down"]),
        },
    ),
    "ddm": st.fixed_dictionaries(
        {},
        optional={
            "warm_start": st.sampled_from([0, 1, 5, 30]),
            "warning_threshold": st.sampled_from([0.5, 2.0]),
            "drift_threshold": st.sampled_from([0.8, 1.5, 3.0]),
        },
    ),
    "hddm_a": st.fixed_dictionaries(
        {},
        optional={
            "drift_confidence": st.sampled_from([0.001, 0.05, 0.3]),
            "warning_confidence": st.sampled_from([0.005, 0.1, 0.6]),
            "two_sided_test": st.booleans(),
        },
    ),
    "eddm": st.fixed_dictionaries(
        {},
        optional={
            "warm_start": st.sampled_from([0, 1, 5, 30]),
            "alpha": st.just(0.95),
            "beta": st.sampled_from([0.5, 0.9, 0.95]),
        },
    ),
    "hddm_w": st.fixed_dictionaries(
        {},
        optional={
            "drift_confidence": st.sampled_from([0.001, 0.1]),
            "lambda_val": st.sampled_from([0.05, 0.3]),
            "two_sided_test": st.booleans(),
        },
    ),
    "kswin": st.fixed_dictionaries(
        {"window_size": st.just(40), "stat_size": st.just(10)}, optional={"alpha": st.sampled_from([0.005, 0.1])}
    ),
}
KERNEL_DETECTORS = ["adwin", "page_hinkley", "ddm", "hddm_a", "eddm"]


def stream(name: str, rng: random.Random, n: int) -> list:
    """Segments of random length and level: 0/1 at a random rate for binary detectors, else noisy levels."""
    values: list = []
    while len(values) < n:
        length = rng.choice([5, 30, 200, 600])
        if name in BINARY_DETECTORS:
            p = rng.choice([0.0, 0.05, 0.2, 0.5, 0.9, 1.0])
            values += [1 if rng.random() < p else 0 for _ in range(length)]
        else:
            level, noise = rng.choice([-50.0, 0.0, 1.0, 5.0, 300.0]), rng.choice([0.0, 0.1, 1.0, 20.0])
            values += [level + rng.gauss(0.0, noise) for _ in range(length)]
    values = values[:n]
    spelling = rng.random()
    if spelling < 0.2:  # other spellings the wrapper accepts: ints / bools / floats, numpy scalars
        if name in BINARY_DETECTORS:
            values = [rng.choice([bool(x), float(x), x, np.int64(x)]) for x in values]
        else:
            values = [rng.choice([round(x), x, np.float64(x)]) for x in values]
    elif spelling < 0.3 and name not in BINARY_DETECTORS:
        values = [round(x) for x in values]
    return values


def per_value(detector: DriftDetector, values, slots) -> dict[int, list]:
    """The engine's per-event loop, the reference for update_many."""
    out: dict[int, list] = {}
    for x, slot in zip(values, slots):
        flagged = detector.update(x)
        entry = out.setdefault(slot, [0, None, 0])
        entry[0] += 1 if flagged else 0
        entry[1] = detector.estimation
        entry[2] = detector.n_updates
    return out


def exact(result: dict[int, list]) -> dict[int, tuple]:
    """The result with floats spelled bit-exactly (float.hex), so -0.0 vs 0.0 or an int vs float would differ."""
    return {
        slot: (flags, type(est).__name__, est.hex() if isinstance(est, float) else est, n)
        for slot, (flags, est, n) in result.items()
    }


def canonical(obj):
    """Everything in a detector's state, floats as float.hex, Rust objects as their pickled bytes."""
    if isinstance(obj, float):
        return ("float", obj.hex())
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return (type(obj).__name__, obj)
    if isinstance(obj, dict):
        return ("dict", [(k, canonical(v)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple, collections.deque)):
        return (type(obj).__name__, [canonical(v) for v in obj])
    if isinstance(obj, types.MethodType):
        return ("method", obj.__func__.__qualname__, obj.__self__ is not None)
    if isinstance(obj, random.Random):
        return ("random", obj.getstate())
    if isinstance(obj, np.generic):
        return ("numpy", type(obj).__name__, repr(obj))
    if hasattr(obj, "__dict__"):
        return (type(obj).__module__, type(obj).__qualname__, canonical(vars(obj)))
    return (type(obj).__module__, type(obj).__qualname__, obj.__getstate__())  # river's Rust objects


def assert_same(batched: DriftDetector, twin: DriftDetector, *, same_bytes: bool = False) -> None:
    # A state round trip alone can change the pickle's bytes (shared objects come back unshared), so the
    # bytes are compared only when the batched detector was never restored.
    if same_bytes:
        assert batched.to_state(KEY) == twin.to_state(KEY)
    assert canonical(batched._detector) == canonical(twin._detector)
    assert (batched.name, batched.params, batched.n_updates) == (twin.name, twin.params, twin.n_updates)
    assert batched.describe() == twin.describe()
    assert batched._run[1].hex() == twin._run[1].hex() and batched._run[0] == twin._run[0]


def run_batches(name, params, seed, n, n_slots, n_batches, round_trips, detector=None, twin=None) -> int:
    rng = random.Random(seed)
    batched = detector or make_detector(name, params, seed=seed)
    twin = twin or make_detector(name, params, seed=seed)
    values = stream(name, rng, n)
    slots = [rng.randrange(n_slots) for _ in values]
    if rng.random() < 0.3:  # slots in blocks, as when one slot's events arrive together
        slots.sort()
    cuts = sorted(rng.sample(range(1, n), min(n_batches - 1, n - 1))) if n > 1 else []
    flags = 0
    restored = False
    for lo, hi in zip([0, *cuts], [*cuts, n]):
        chunk_values, chunk_slots = values[lo:hi], slots[lo:hi]
        if round_trips and rng.random() < 0.5:
            batched = DriftDetector.from_state(batched.to_state(KEY), KEY)
            restored = True
        if rng.random() < 0.1:  # the batch path and the per-value path mix freely
            got = per_value(batched, chunk_values, chunk_slots)
        else:
            got = batched.update_many(tuple(chunk_values) if rng.random() < 0.2 else chunk_values, chunk_slots)
        expected = per_value(twin, chunk_values, chunk_slots)
        assert exact(got) == exact(expected)
        assert got == expected
        assert_same(batched, twin, same_bytes=not restored)
        flags += sum(entry[0] for entry in expected.values())
    # and they continue alike
    tail = stream(name, rng, 50)
    assert [batched.update(x) for x in tail] == [twin.update(x) for x in tail]
    assert_same(batched, twin, same_bytes=not restored)
    return flags


@pytest.mark.parametrize("name", KERNEL_DETECTORS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_update_many_equals_the_per_value_loop(name, data, seed):
    params = data.draw(PARAMS[name], label="params")
    n = data.draw(st.one_of(st.integers(1, 60), st.integers(500, 3000)), label="n")  # small and drifting
    n_slots = data.draw(st.sampled_from([1, 2, 5, 40]), label="n_slots")
    n_batches = data.draw(st.integers(1, 8), label="n_batches")
    run_batches(name, params, seed, n, n_slots, n_batches, round_trips=data.draw(st.booleans(), label="round_trips"))


@pytest.mark.parametrize("name", ["hddm_w", "kswin"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_update_many_equals_the_per_value_loop_without_a_kernel(name, data, seed):
    params = data.draw(PARAMS[name], label="params")
    n = data.draw(st.integers(1, 300 if name == "kswin" else 1500), label="n")
    run_batches(name, params, seed, n, data.draw(st.sampled_from([1, 3, 20])), data.draw(st.integers(1, 5)), True)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("adwin", {"delta": 0.3, "clock": 1}),
        ("page_hinkley", {"threshold": 3.0, "min_instances": 5}),
        ("page_hinkley", {"threshold": 3.0, "mode": "up"}),
        ("page_hinkley", {"threshold": 3.0, "mode": "down"}),
        ("ddm", {"warm_start": 5, "drift_threshold": 1.5}),
        ("hddm_a", {"drift_confidence": 0.05}),
        ("hddm_a", {"drift_confidence": 0.05, "two_sided_test": True}),
        ("eddm", {"warm_start": 5, "beta": 0.9}),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_long_streams_with_many_drifts(name, params, seed):
    # Long enough that every detector drifts (and resets) many times, including inside a batch.
    assert run_batches(name, params, seed, 20_000, 7, 6, round_trips=True) >= 5


@pytest.mark.parametrize("two_sided", [False, True])
def test_the_hddm_a_kernel_runs_river_s_own_class_too(two_sided):
    # States written before detectors.fast existed hold river's HDDMA; it gets the same kernel.
    assert batch.kernel_for(HDDMA()) is batch.kernel_for(make_detector("hddm_a", {}, 0)._detector)
    params = {"drift_confidence": 0.05, "two_sided_test": two_sided}
    plain = DriftDetector("hddm_a", params, HDDMA(**params))
    twin = DriftDetector("hddm_a", params, HDDMA(**params))
    assert run_batches("hddm_a", params, 11, 20_000, 3, 5, True, detector=plain, twin=twin) >= 5


def test_kernels_cover_the_catalogue_detectors():
    for name in KERNEL_DETECTORS:
        assert batch.kernel_for(make_detector(name, {}, 0)._detector) is not batch.generic, name
    assert batch.kernel_for(make_detector("hddm_w", {}, 0)._detector) is batch.generic


def test_example_from_the_brief():
    detector = make_detector("page_hinkley", {"threshold": 1.0, "min_instances": 1}, 0)
    twin = make_detector("page_hinkley", {"threshold": 1.0, "min_instances": 1}, 0)
    values, slots = [0.0, 0.0, 10.0, 10.0, 0.0, 3.0], [3, 1, 3, 1, 1, 2]
    assert detector.update_many(values, slots) == per_value(twin, values, slots)
    assert detector.update_many([], []) == {}
    assert_same(detector, twin, same_bytes=True)


BAD = {
    "binary": [0.5, 2, -1, float("nan"), "1", None],
    "continuous": [float("nan"), float("inf"), -float("inf"), 10**400, "1.0", None, np.float64("nan")],
}


@pytest.mark.parametrize("name", ["adwin", "page_hinkley", "ddm", "hddm_a", "eddm"])
@pytest.mark.parametrize("where", [0, 17, 99])
def test_a_bad_value_anywhere_in_the_batch_raises_before_any_change(name, where):
    rng = random.Random(where)
    detector = make_detector(name, {}, seed=1)
    detector.update_many(stream(name, rng, 300), [0] * 300)
    before = (detector.to_state(KEY), detector.describe(), detector._run)
    for bad in BAD["binary" if name in BINARY_DETECTORS else "continuous"]:
        values = stream(name, rng, 100)
        values[where] = bad
        with pytest.raises(DetectorError) as raised:
            detector.update_many(values, [i % 3 for i in range(100)])
        with pytest.raises(DetectorError) as single:
            detector.update(bad)
        assert str(raised.value) == str(single.value)
        assert (detector.to_state(KEY), detector.describe(), detector._run) == before


def test_a_huge_finite_sum_is_not_mistaken_for_a_bad_value():
    detector, twin = make_detector("page_hinkley", {}, 0), make_detector("page_hinkley", {}, 0)
    values = [1e308, 1e308, 1e308, 10**300]  # the sum overflows, the statistics do not
    assert detector.update_many(values, [0, 1, 0, 1]) == per_value(twin, values, [0, 1, 0, 1])
    assert_same(detector, twin, same_bytes=True)


def test_values_and_slots_must_pair_up():
    detector = make_detector("adwin", {}, 0)
    with pytest.raises(DetectorError, match="3 values but 2 slots"):
        detector.update_many([1.0, 2.0, 3.0], [0, 1])
    assert detector.n_updates == 0
