"""Mergeable, deterministic sketches for windowed metrics.

Each sketch is exact under merge in the sense the windowing needs: adding the same values in any order, or into any
partition of sub-window sketches that are then merged in any order, gives an equal state (``to_state()`` is
byte-identical after ``json.dumps(..., sort_keys=True)``). States are plain JSON data (``to_state``), and compact
binary (``write_to`` / ``read_from``, packed with :mod:`rules.sketches.packing`) for the state store.

- :class:`DDSketch` — latency quantiles within a relative error (default 0.5%); ``subtract`` undoes ``merge``.
- :class:`HyperLogLog` — distinct users; exact up to :data:`SPARSE_LIMIT`, then 0.81% standard error.
"""

from rules.sketches.ddsketch import DDSketch
from rules.sketches.exceptions import SketchError
from rules.sketches.hll import SPARSE_LIMIT, HyperLogLog, key_hash

__all__ = ["DDSketch", "HyperLogLog", "SPARSE_LIMIT", "SketchError", "key_hash"]
