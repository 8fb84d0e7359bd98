"""How close the cohort metrics' estimate is to the truth (not a test): ``./dev bench cohort_error``.

``retention:<k>`` and ``returning_share:<k>`` (``rules.cohort``) intersect the distinct-users sketches of two
windows: exactly while both hold their hashes (at most 1,024 users each), by inclusion–exclusion over the
HyperLogLog registers past that. This draws cohorts of N users, lets a share r of them come back along with as many
new users as returning ones (so the second window is about as large as the first), and prints the error of
``retention`` against the true r: its mean (bias), the 95th percentile of its absolute value and the worst, over
``--seeds`` draws per cell. Users are random 64-bit hashes (what the sketch sees of an HMAC'd id), added through
``HyperLogLog.add_hash``. Deterministic: seed ``i`` of a cell always draws the same users.

    ./dev bench cohort_error [--seeds 40] [--sizes 1000,5000,20000,100000,400000] [--shares 0.3,0.38,0.45]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.cohort import share_returning  # noqa: E402
from rules.sketches.hll import HyperLogLog  # noqa: E402


def one(n: int, r: float, seed: int) -> float:
    rnd = random.Random(f"{n}-{r}-{seed}")
    cohort = [rnd.getrandbits(64) for _ in range(n)]
    back = cohort[: round(n * r)]
    new = [rnd.getrandbits(64) for _ in range(len(back))]
    x, y = HyperLogLog(), HyperLogLog()
    for h in cohort:
        x.add_hash(h)
    for h in back + new:
        y.add_hash(h)
    value, _, _ = share_returning(x, y)
    return value - len(back) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--sizes", default="1000,5000,20000,100000,400000")
    ap.add_argument("--shares", default="0.3,0.38,0.45")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    shares = [float(x) for x in args.shares.split(",")]
    print(f"retention estimate minus truth, {args.seeds} draws per cell (percentage points)")
    print(f"{'cohort users':>12} {'true share':>10} {'bias':>7} {'p95 |err|':>9} {'worst':>7}")
    began = time.perf_counter()
    for n in sizes:
        for r in shares:
            errs = sorted(one(n, r, s) * 100 for s in range(args.seeds))
            absolute = sorted(abs(e) for e in errs)
            p95 = absolute[min(len(absolute) - 1, round(0.95 * (len(absolute) - 1)))]
            print(f"{n:>12,} {r:>10.2f} {sum(errs) / len(errs):>+7.2f} {p95:>9.2f} {absolute[-1]:>7.2f}")
    print(f"({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
