"""The seal step: the last thing every engine method does to its outputs before returning them.

Per feature, in output order:

* each **command** gets ``seq`` (the feature's command counter: 1, 2, 3, …, never reused), ``issued_at`` (epoch
  milliseconds of its event time ``ts`` — never the wall clock, so replay seals exactly as live did) and its
  ``prev_hash``; with a signing key also ``key_id`` and ``signature`` (``rules.verify.sign``: HMAC-SHA256 over the
  command without ``signature`` and ``hash``, so the signature covers ``seq``, ``issued_at``, ``key_id`` and
  ``prev_hash``); then its ``hash``;
* each **decision** gets ``prev_hash`` and ``hash``.

The counter and the two chain heads live in the feature's state (``FeatureState.command_seq`` / ``chain``), which is
persisted with the rest of it, so a worker that takes a feature over continues its chains.
"""

from __future__ import annotations

from collections.abc import Mapping

from rules.audit import genesis, link_hash
from rules.events import parse_ts
from rules.policy import Outputs
from rules.state import FeatureState
from rules.verify import sign

__all__ = ["Sealer", "DEFAULT_KEY_ID"]

DEFAULT_KEY_ID = "default"  # published when a signing key is set without an id; verifiers then hold "default"


class Sealer:
    """Seals outputs with the configured signing key (commands go unsigned without one, but are still chained)."""

    __slots__ = ("key", "key_id")

    def __init__(self, signing_key: bytes | None = None, key_id: str | None = None) -> None:
        self.key = signing_key
        self.key_id = key_id or DEFAULT_KEY_ID

    def seal(self, out: Outputs, features: Mapping[str, FeatureState]) -> Outputs:
        for d in out.decisions:
            _chain(d, features[d["feature"]], "decisions")
        for c in out.commands:
            fs = features[c["feature"]]
            fs.command_seq += 1
            c["seq"] = fs.command_seq
            c["issued_at"] = parse_ts(c["ts"])
            if self.key is not None:
                c["key_id"] = self.key_id
            c["prev_hash"] = fs.chain.get("commands") or genesis("commands", c["feature"])
            if self.key is not None:
                c["signature"] = sign(c, self.key)
            c["hash"] = link_hash(c["prev_hash"], c)
            fs.chain["commands"] = c["hash"]
        return out


def _chain(record: dict, fs: FeatureState, stream: str) -> None:
    prev = fs.chain.get(stream) or genesis(stream, record["feature"])
    record["prev_hash"] = prev
    record["hash"] = fs.chain[stream] = link_hash(prev, record)
