"""Per-value cost of the detectors, the engine's per-event loop against ``update_many`` (not a test).

``./dev bench detectors`` (or ``python bench/detectors.py``) feeds each detector the same 100k values twice in one
process: once the way the engine did per event (``update`` then ``estimation`` and ``n_updates`` into the slot's
entry), once through ``DriftDetector.update_many`` in batches of ``--batch`` values spread over ``--slots``
interleaved slots. Streams shift level every few thousand values so the detectors drift and reset as in
production. Prints µs per value, best of ``--repeat`` runs, and checks both ways gave the same result.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectors import BINARY_DETECTORS, make_detector  # noqa: E402

DETECTORS = {
    "adwin": {},
    "page_hinkley": {"delta": 0.5, "threshold": 25},
    "ddm": {"warm_start": 300, "drift_threshold": 4.0},
    "hddm_a": {},
    "eddm": {"warm_start": 60, "alpha": 0.8, "beta": 0.7},
    "hddm_w": {},
    "kswin": {"alpha": 1e-4},
}


def stream(name: str, n: int, seed: int) -> list:
    rng = random.Random(seed)
    out: list = []
    while len(out) < n:
        length = rng.randrange(1000, 8000)
        if name in BINARY_DETECTORS:
            p = rng.choice([0.05, 0.1, 0.3, 0.5])
            out += [1 if rng.random() < p else 0 for _ in range(length)]
        else:
            level = rng.choice([0.0, 2.0, 5.0])
            out += [rng.gauss(level, 1.0) for _ in range(length)]
    return out[:n]


def per_value(detector, values, slots) -> dict:
    out: dict = {}
    update = detector.update
    for x, slot in zip(values, slots):
        flagged = update(x)
        entry = out.get(slot)
        if entry is None:
            entry = out[slot] = [0, None, 0]
        if flagged:
            entry[0] += 1
        entry[1] = detector.estimation
        entry[2] = detector.n_updates
    return out


def batched(detector, values, slots, size) -> list:
    return [detector.update_many(values[i : i + size], slots[i : i + size]) for i in range(0, len(values), size)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500, help="values per update_many call (default 500)")
    ap.add_argument("--slots", type=int, default=8, help="interleaved slots per batch (default 8)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kswin-values", type=int, default=5_000, help="kswin costs ~200 µs/value (default 5000)")
    ap.add_argument("detectors", nargs="*", default=list(DETECTORS))
    args = ap.parse_args()

    print(f"{'detector':<14}{'values':>8}{'per-value µs':>14}{'update_many µs':>16}{'speed-up':>10}{'drifts':>8}")
    for name in args.detectors:
        params = DETECTORS[name]
        n = args.kswin_values if name == "kswin" else args.values
        values = stream(name, n, seed=1)
        rng = random.Random(2)
        slots = [rng.randrange(args.slots) for _ in values]
        best = {"loop": float("inf"), "many": float("inf")}
        for _ in range(args.repeat):
            for way in ("loop", "many"):
                detector = make_detector(name, params, seed=0)
                start = time.perf_counter()
                if way == "loop":
                    expected = [per_value(detector, values[i : i + args.batch], slots[i : i + args.batch])
                                for i in range(0, n, args.batch)]
                    drifts = sum(e[0] for d in expected for e in d.values())
                else:
                    got = batched(detector, values, slots, args.batch)
                best[way] = min(best[way], time.perf_counter() - start)
            if got != expected:
                print(f"{name}: update_many and the per-value loop disagree", file=sys.stderr)
                return 1
        loop_us, many_us = best["loop"] / n * 1e6, best["many"] / n * 1e6
        print(f"{name:<14}{n:>8}{loop_us:>14.3f}{many_us:>16.3f}{loop_us / many_us:>9.1f}x{drifts:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
