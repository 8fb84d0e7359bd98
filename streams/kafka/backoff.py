"""Exponential backoff for delivery retries: doubling from ``base_s`` up to ``max_s``, optionally with jitter.

Jitter spreads the retries of several consumers that failed together (an Alertmanager restart) so they do not hit
the receiver in step. It draws from a ``random.Random`` the caller passes (seeded in tests); retry timing is I/O
shell behaviour and never reaches a decision. Without one the delays are plain doublings.

>>> b = Backoff(0.5, 4.0)
>>> [b.next_delay() for _ in range(6)]
[0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
>>> b.reset(); b.next_delay()
0.5
>>> import random
>>> j = Backoff(1.0, 8.0, rng=random.Random(7))
>>> delays = [j.next_delay() for _ in range(5)]
>>> all(d / 2 <= d_j <= d for d, d_j in zip([1.0, 2.0, 4.0, 8.0, 8.0], delays))
True
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """``next_delay()`` gives the wait before the next attempt; ``reset()`` after a success. With ``rng`` the delay
    is drawn from ``[d/2, d]`` ("equal jitter"): never more than the undithered ``d``, never less than half."""

    def __init__(self, base_s: float = 0.5, max_s: float = 30.0, rng: random.Random | None = None) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f"backoff: need 0 < base_s <= max_s, got {base_s} and {max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self.rng = rng
        self._next = base_s

    def next_delay(self) -> float:
        d = self._next
        self._next = min(d * 2, self.max_s)
        if self.rng is None:
            return d
        return d / 2 + self.rng.random() * d / 2

    def reset(self) -> None:
        self._next = self.base_s
