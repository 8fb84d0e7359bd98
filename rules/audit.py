"""The tamper-evident audit log: per feature, decisions and commands each form a hash chain.

Every decision and every command carries ``prev_hash`` (the ``hash`` of the previous record of the same feature in
the same stream, or the stream's genesis value) and ``hash`` = SHA-256 of ``prev_hash`` followed by the canonical
JSON of the record without ``hash``. Each stream (the decisions topic, the commands topic, or the replay files) is
verifiable on its own. Editing a record breaks its hash; deleting, moving or inserting one breaks the next link;
cutting off the end breaks nothing inside the log, which is why the chain heads (``rollguard audit head``) are
saved somewhere the log's writers cannot reach and given to :func:`verify_chain`.

The hashes are not keyed: whoever can rewrite a log can recompute every hash after the record changed, and only the
stored head then tells. Commands are also signed (``rules.verify``), and the signature covers ``prev_hash``.

>>> recs, prev = [], genesis("decisions", "f")
>>> for i in range(3):
...     r = {"decision_id": f"d{i}", "feature": "f", "prev_hash": prev}
...     r["hash"] = prev = link_hash(prev, r)
...     recs.append(r)
>>> verify_chain(recs).ok
True
>>> [(p.kind, p.index) for p in verify_chain([recs[0], recs[2]]).problems]
[('deletion', 1)]
>>> [(p.kind, p.index) for p in verify_chain(recs[:2], head={"decisions": {"f": recs[2]["hash"]}}).problems]
[('truncation', 2)]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rules.outputs import canonical

__all__ = ["STREAMS", "KINDS", "genesis", "link_hash", "stream_of", "record_id", "verify_chain", "AuditReport",
           "ChainStatus", "Problem", "Heads"]  # fmt: skip

STREAMS = ("decisions", "commands")
KINDS = ("malformed", "edit", "deletion", "reorder", "fork", "truncation")
Heads = Mapping[str, Mapping[str, str]]  # stream -> feature -> hash of the last record


def genesis(stream: str, feature: str) -> str:
    """The ``prev_hash`` of a feature's first record in ``stream``: distinct per stream and feature, so one chain's
    beginning cannot be spliced onto another."""
    return hashlib.sha256(f"rollguard-audit-genesis\x1f{stream}\x1f{feature}".encode()).hexdigest()


def link_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``prev_hash`` followed by the canonical JSON of ``record`` without its ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(prev_hash.encode() + canonical(body)).hexdigest()


def stream_of(record: Mapping[str, Any]) -> str | None:
    """``commands`` or ``decisions`` by the record's identity field (a command also names its decision)."""
    if "command_id" in record:
        return "commands"
    if "decision_id" in record:
        return "decisions"
    return None


def record_id(record: Mapping[str, Any]) -> str | None:
    return record.get("command_id") or record.get("decision_id")


@dataclass(frozen=True)
class Problem:
    """The first broken link of one chain. ``index`` is the position in the verified input (``len(records)`` for a
    truncation: what is missing is after the end)."""

    kind: str  # one of KINDS
    stream: str
    feature: str
    index: int
    record_id: str | None
    detail: str


@dataclass
class ChainStatus:
    """One (stream, feature) chain as verified: records linked, exact re-deliveries skipped, records from before
    chaining existed, and (with a stored head) whether it was found and how many records follow it."""

    stream: str
    feature: str
    records: int = 0
    duplicates: int = 0
    legacy: int = 0
    head: str | None = None  # hash of the last linked record
    anchored: bool = False  # the stored head for this chain was found in it
    beyond_head: int = 0  # records linked after the stored head (written after it was saved)


@dataclass
class AuditReport:
    chains: dict[tuple[str, str], ChainStatus] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def heads(self) -> dict[str, dict[str, str]]:
        """The heads of the chains as verified, in the form ``verify_chain(head=…)`` takes."""
        out: dict[str, dict[str, str]] = {}
        for (stream, feature), c in sorted(self.chains.items()):
            if c.head is not None:
                out.setdefault(stream, {})[feature] = c.head
        return out


class _Chain:
    __slots__ = ("status", "head", "seen", "broken", "missing", "later", "started")

    def __init__(self, status: ChainStatus, head: str | None) -> None:
        self.status = status
        self.head = head  # None: the first record may link to anything (from_genesis=False)
        self.seen: dict[str, int] = {}  # hash -> index of the record that has it
        self.broken: Problem | None = None
        self.missing: str | None = None  # the prev_hash a gap points to (reorder if it shows up later)
        self.later: set[str] = set()  # hashes stated by records after the break
        self.started = False  # a chained record was seen (so an unchained one is a stripped record)


def verify_chain(records: Iterable[Mapping[str, Any]], head: Heads | None = None, *,
                 from_genesis: bool = True) -> AuditReport:  # fmt: skip
    """Verify every (stream, feature) chain in ``records`` (decisions and/or commands, in log order) and report the
    first problem of each, ordered by position:

    * ``edit`` — a record's content does not match its ``hash`` (or its chain fields were removed);
    * ``deletion`` — a record links to a hash that never appears: records before it are missing;
    * ``reorder`` — a record links to a hash that appears only later;
    * ``fork`` — a record links to an earlier record that already has a successor: a record was inserted, or a
      second history was published (a worker that crashed between publishing and saving its state, then decided
      differently on the retry — possible only with operator resumes or idle watermarks in the same batch);
    * ``truncation`` — the stored ``head`` of a chain is not in it: records at its end were removed or rewritten;
    * ``malformed`` — not a decision or command, or no feature.

    An exact copy of a record already linked (at-least-once re-delivery) is counted, not reported. With
    ``from_genesis`` False each chain may start anywhere (a topic whose retention dropped its oldest records).
    Records without chain fields before a feature's first chained record are counted as ``legacy``."""
    report = AuditReport()
    chains: dict[tuple[str, str], _Chain] = {}
    n = 0
    for i, rec in enumerate(records):
        n = i + 1
        stream = stream_of(rec) if isinstance(rec, Mapping) else None
        feature = rec.get("feature") if stream else None
        if stream is None or not isinstance(feature, str):
            report.problems.append(Problem("malformed", stream or "?", str(feature or "?"), i, None,
                                           "not a decision or command with a feature"))  # fmt: skip
            continue
        c = chains.get((stream, feature))
        if c is None:
            status = report.chains[(stream, feature)] = ChainStatus(stream, feature)
            c = chains[(stream, feature)] = _Chain(status, genesis(stream, feature) if from_genesis else None)
        _check(c, i, rec, stream, feature)
    for (stream, feature), c in chains.items():
        if c.broken is not None:
            p = c.broken
            if p.kind == "deletion" and c.missing in c.later:
                p = Problem("reorder", p.stream, p.feature, p.index, p.record_id,
                            "links to a record that comes later in the log: records were reordered")  # fmt: skip
            report.problems.append(p)
    for stream, by_feature in sorted((head or {}).items()):
        for feature, want in sorted(by_feature.items()):
            c = chains.get((stream, feature))
            if c is not None and c.broken is not None:
                continue  # its first problem is reported already
            if c is None or want not in c.seen:
                last = f"after record {max(c.seen.values())}" if c and c.seen else "anywhere"
                report.problems.append(Problem("truncation", stream, feature, n, None,
                                               f"the stored head {want[:16]}… is not in the chain ({last}): records "
                                               "at its end were removed or rewritten"))  # fmt: skip
                continue
            c.status.anchored = True
            c.status.beyond_head = sum(1 for j in c.seen.values() if j > c.seen[want])
    report.problems.sort(key=lambda p: (p.index, p.stream, p.feature))
    return report


def _check(c: _Chain, i: int, rec: Mapping[str, Any], stream: str, feature: str) -> None:
    h, prev = rec.get("hash"), rec.get("prev_hash")
    if c.broken is not None:
        if isinstance(h, str):
            c.later.add(h)
        return
    rid = record_id(rec)
    if h is None and prev is None and not c.started:
        c.status.legacy += 1
        return
    c.started = True
    if not isinstance(h, str) or not isinstance(prev, str):
        c.broken = Problem("edit", stream, feature, i, rid, "chain fields removed or not strings")
        return
    if link_hash(prev, rec) != h:
        c.broken = Problem("edit", stream, feature, i, rid, "content does not match its hash: the record was edited")
        return
    if h in c.seen:  # the same record again, content verified: a re-delivery (crash between publish and commit)
        c.status.duplicates += 1
        return
    if c.head is None or prev == c.head:
        c.seen[h] = i
        c.head = c.status.head = h
        c.status.records += 1
        return
    if prev in c.seen:
        successor = min((j for j in c.seen.values() if j > c.seen[prev]), default=None)
        c.broken = Problem("fork", stream, feature, i, rid,
                           f"links to record {c.seen[prev]}, which record {successor} already follows: a record was "
                           "inserted, or a second history was published after a worker crash")  # fmt: skip
        return
    c.broken = Problem("deletion", stream, feature, i, rid, "links to a record that is not in the log: records "
                       "before this one were deleted")  # fmt: skip
    c.missing = prev
