"""Build every dashboard and write them as deterministic JSON (what Grafana's file provider loads).

Determinism is what makes the committed files reviewable and the staleness test possible: uids derive from
names, panel ids are assigned in layout order, keys are sorted, the schema version is the SDK's fixed one and
nothing carries a timestamp or a Grafana-assigned id. Building twice gives byte-identical files.

>>> uid_for("rules", "safe-llm")
'rollguard-rules-safe-llm'
>>> uid_for("rules", "email-reply-general-availability")
'rollguard-rules-email-reply-gen-fb11e7ee'
>>> len(uid_for("rules", "email-reply-general-availability")) <= MAX_UID
True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.launch import launch_dashboard
from dashboards.operations import operations_dashboard
from dashboards.rulepack import rulepack_dashboard
from rules.exceptions import RollguardError
from rules.model import RuleSet

__all__ = [
    "MAX_UID",
    "LAUNCH_FILE",
    "OPERATIONS_FILE",
    "LAUNCH_UID",
    "OPERATIONS_UID",
    "RULES_FILE_GLOB",
    "uid_for",
    "rules_file",
    "finalize",
    "render",
    "build_dashboards",
    "write_dashboards",
]

MAX_UID = 40  # Grafana's limit on dashboard uids
LAUNCH_FILE = "launch-guardrails.json"
OPERATIONS_FILE = "operations.json"
LAUNCH_UID = "rollguard-launch-guardrails"
OPERATIONS_UID = "rollguard-operations"
RULES_FILE_GLOB = "rules-*.json"
_UID_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def uid_for(kind: str, name: str) -> str:
    """``rollguard-<kind>-<name>``; when that is too long or not uid-safe, a prefix of it and a hash of the name
    (so two names never share a uid)."""
    uid = f"rollguard-{kind}-{name}"
    if len(uid) <= MAX_UID and _UID_CHARS.fullmatch(uid):
        return uid
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", uid)[: MAX_UID - len(digest) - 1].rstrip("-")
    return f"{prefix}-{digest}"


def rules_file(ruleset: RuleSet) -> str:
    return f"rules-{ruleset.name}.json"


def _number_panels(panels: Iterable[Any], start: int = 1) -> int:
    """Give every panel (rows and panels inside collapsed rows too) the next id, in layout order."""
    next_id = start
    for panel in panels:
        panel.id_val = next_id
        next_id += 1
        if isinstance(panel, dm.RowPanel):
            next_id = _number_panels(panel.panels, next_id)
    return next_id


def finalize(builder: db.Dashboard) -> dict[str, Any]:
    """Build the SDK model, number its panels and return it as plain JSON data."""
    model = builder.build()
    _number_panels(model.panels or ())
    return json.loads(JSONEncoder().encode(model))


def render(dashboard: Mapping[str, Any]) -> str:
    """The file text: sorted keys, two-space indent, UTF-8 as is, final newline."""
    return json.dumps(dashboard, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def build_dashboards(rulesets: Iterable[RuleSet]) -> dict[str, dict[str, Any]]:
    """File name → dashboard JSON: the two fixed dashboards and one per rule pack."""
    out = {
        LAUNCH_FILE: finalize(launch_dashboard(LAUNCH_UID)),
        OPERATIONS_FILE: finalize(operations_dashboard(OPERATIONS_UID)),
    }
    uids = {d["uid"]: name for name, d in out.items()}
    for ruleset in rulesets:
        name = rules_file(ruleset)
        dashboard = finalize(rulepack_dashboard(ruleset, uid_for("rules", ruleset.name)))
        if dashboard["uid"] in uids:  # only possible with names that differ in case or punctuation alone
            raise RollguardError(f"{name}: dashboard uid {dashboard['uid']} is also {uids[dashboard['uid']]}'s")
        uids[dashboard["uid"]] = name
        out[name] = dashboard
    return out


def write_dashboards(dashboards: Mapping[str, Mapping[str, Any]], out_dir: Path) -> tuple[list[Path], list[Path]]:
    """Write each dashboard to ``out_dir``; return (written files, ``rules-*.json`` files there not written now).

    Files are rewritten only when their text changed, so an unchanged build leaves modification times alone.
    Stale rule-pack dashboards are reported, not deleted: ``--out`` may be a folder shared with other packs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(dashboards):
        path = out_dir / name
        text = render(dashboards[name])
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    stale = sorted(p for p in out_dir.glob(RULES_FILE_GLOB) if p.name not in dashboards)
    return written, stale
