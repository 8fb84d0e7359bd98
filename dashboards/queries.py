"""Read generated dashboards back: their queries, their variables, and what is structurally wrong with them.

Works on plain dashboard JSON (a dict, as ``json.load`` returns it), so the tests and the Prometheus integration
test can check the committed files without the SDK. :func:`expand` turns a Grafana query into one Prometheus's
HTTP API accepts as-is:

>>> expand('rate(x{feature=~"$feature"}[$__rate_interval])', {"feature": ".*"})
'rate(x{feature=~".*"}[1m])'
>>> expand('y{phase=~"${phase:regex}",group=~"[[segment]]"}', {"phase": "beta", "segment": "platform=ios"})
'y{phase=~"beta",group=~"platform=ios"}'
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dashboards.provisioning import PROMETHEUS_UID

__all__ = [
    "PanelQuery",
    "UnknownVariable",
    "MIN_SCHEMA_VERSION",
    "iter_panels",
    "panel_queries",
    "variables",
    "expand",
    "variable_names",
    "validate_dashboard",
]

MIN_SCHEMA_VERSION = 36
_MAX_UID = 40
_UID = re.compile(r"[A-Za-z0-9_-]+")
# Grafana's variable syntaxes: $var, [[var]] / [[var:format]], ${var} / ${var.field} / ${var:format}.
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
# Formats that leave a value as written: the values passed to expand() are already what the matcher needs.
_VERBATIM_FORMATS = frozenset({"regex", "raw", "pipe"})
_DATASOURCE_VARIABLE = "${datasource}"


class UnknownVariable(LookupError):
    """A query names a template variable :func:`expand` was given no value for."""


@dataclass(frozen=True)
class PanelQuery:
    """One Prometheus target of one panel; ``instant`` targets must be sent to ``/api/v1/query``."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool = False


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, rows included, and the panels kept inside collapsed rows."""
    for panel in dashboard.get("panels") or ():
        yield panel
        yield from panel.get("panels") or ()


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """The Prometheus queries of every panel, in layout order."""
    title = dashboard.get("title", "")
    return [
        PanelQuery(title, panel.get("title", ""), target.get("refId", ""), target["expr"], bool(target.get("instant")))
        for panel in iter_panels(dashboard)
        for target in panel.get("targets") or ()
        if "expr" in target
    ]


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Template variables by name (each the variable's JSON: ``type``, ``query``, ``allValue``, ``current``...)."""
    return {v["name"]: dict(v) for v in (dashboard.get("templating") or {}).get("list") or ()}


def variable_names(text: str) -> list[str]:
    """The template variables ``text`` uses, in order (Grafana's globals such as ``__rate_interval`` included).

    >>> variable_names('x{a=~"$a",b=~"${b:regex}"}[[c]] $__range')
    ['a', 'b', 'c', '__range']
    """
    return [m.group(1) or m.group(2) or m.group(4) for m in _VARIABLE.finditer(text)]


def expand(
    expr: str,
    values: Mapping[str, str],
    *,
    rate_interval: str = "1m",
    interval: str = "15s",
    time_range: str = "1h",
) -> str:
    """Substitute ``$var``, ``${var}``, ``${var:regex}``, ``[[var]]`` with ``values`` and Grafana's
    ``$__rate_interval``, ``$__interval``, ``$__range`` with the given durations.

    Values are inserted verbatim, as Grafana does with a custom *All* value: pass the regex a ``=~`` matcher
    should see (``.*`` for All). A variable without a value raises :class:`UnknownVariable` rather than sending
    Prometheus a query that silently matches nothing.

    >>> expand("sum(increase(x[$__range]))", {}, time_range="6h")
    'sum(increase(x[6h]))'
    >>> expand('x{a="$nope"}', {})
    Traceback (most recent call last):
    ...
    dashboards.queries.UnknownVariable: no value for template variable $nope in: x{a="$nope"}
    """
    known = {"__rate_interval": rate_interval, "__interval": interval, "__range": time_range, **values}

    def substitute(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name not in known:
            raise UnknownVariable(f"no value for template variable ${name} in: {expr}")
        if m.group(5) is not None:
            raise ValueError(f"${{{name}.{m.group(5)}}}: field access is not supported in {expr!r}")
        if fmt is not None and fmt not in _VERBATIM_FORMATS:
            raise ValueError(f"format :{fmt} of ${name} is not supported (use {sorted(_VERBATIM_FORMATS)})")
        return known[name]

    return _VARIABLE.sub(substitute, expr)


def _datasource_problems(where: str, ref: Any, allowed: Collection[str], uses: list[tuple[str, str]]) -> list[str]:
    if isinstance(ref, Mapping) and isinstance(ref.get("uid"), str):
        uses.append((where, ref["uid"]))  # ${datasource} must be defined like any other variable
    if not isinstance(ref, Mapping):
        return [f"{where}: datasource missing (want {{'uid': '{_DATASOURCE_VARIABLE}'}})"]
    uid = ref.get("uid")
    if uid != _DATASOURCE_VARIABLE and uid not in allowed:
        return [f"{where}: datasource uid {uid!r} is neither {_DATASOURCE_VARIABLE} nor a provisioned uid"]
    return []


def _grid_problems(where: str, grid: Any) -> list[str]:
    if not isinstance(grid, Mapping) or not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
        return [f"{where}: gridPos missing or incomplete (h, w, x, y)"]
    if grid["w"] < 1 or grid["h"] < 1 or grid["x"] < 0 or grid["y"] < 0 or grid["x"] + grid["w"] > 24:
        return [f"{where}: gridPos {dict(grid)} is outside the 24-column grid"]
    return []


def _overlap(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    across = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
    return across and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def _overlaps(placed: list[tuple[str, Mapping[str, int]]]) -> list[str]:
    return [
        f"{a_name} and {b_name} overlap"
        for i, (a_name, a) in enumerate(placed)
        for b_name, b in placed[i + 1 :]
        if _overlap(a, b)
    ]


def validate_dashboard(
    dashboard: Mapping[str, Any], provisioned_uids: Collection[str] = (PROMETHEUS_UID,)
) -> list[str]:
    """Structural problems of a dashboard, one message each (empty list: none found).

    Checks: ``schemaVersion`` ≥ 36; title and uid present, uid ≤ 40 characters of ``[A-Za-z0-9_-]``; panel ids
    present and unique; every panel has a title, a type and a ``gridPos`` inside the grid, and panels do not
    overlap; every panel and target datasource is ``${datasource}`` or a provisioned uid; targets have unique
    ``refId`` values and an ``expr``; every ``$var`` used in a query, title or variable query is defined.
    """
    problems: list[str] = []
    version = dashboard.get("schemaVersion")
    if not isinstance(version, int) or version < MIN_SCHEMA_VERSION:
        problems.append(f"schemaVersion {version!r}: want an integer >= {MIN_SCHEMA_VERSION}")
    if not dashboard.get("title"):
        problems.append("dashboard title is empty")
    uid = dashboard.get("uid")
    if not isinstance(uid, str) or not _UID.fullmatch(uid) or len(uid) > _MAX_UID:
        problems.append(f"uid {uid!r}: want 1-{_MAX_UID} characters of A-Z a-z 0-9 _ -")

    templating = (dashboard.get("templating") or {}).get("list") or []
    defined = [v.get("name") for v in templating]
    duplicates = sorted({n for n in defined if defined.count(n) > 1})
    if duplicates:
        problems.append(f"template variables defined twice: {duplicates}")
    uses: list[tuple[str, str]] = [("dashboard title", dashboard.get("title") or "")]
    for var in templating:
        if isinstance(var.get("query"), str):
            uses.append((f"variable {var.get('name')}", var["query"]))
        if var.get("type") == "query":
            vwhere = f"variable {var.get('name')}"
            problems += _datasource_problems(vwhere, var.get("datasource"), provisioned_uids, uses)

    seen_ids: set[Any] = set()
    placed = []
    top_level = {id(p) for p in dashboard.get("panels") or ()}  # panels inside collapsed rows may overlap
    for panel in iter_panels(dashboard):
        where = f"panel {panel.get('id')!r} {panel.get('title')!r}"
        if not isinstance(panel.get("id"), int):
            problems.append(f"{where}: id missing")
        elif panel["id"] in seen_ids:
            problems.append(f"{where}: id {panel['id']} is used twice")
        seen_ids.add(panel.get("id"))
        if not panel.get("title"):
            problems.append(f"{where}: title is empty")
        if not panel.get("type"):
            problems.append(f"{where}: type is empty")
        grid_problems = _grid_problems(where, panel.get("gridPos"))
        problems += grid_problems
        if not grid_problems and id(panel) in top_level:
            placed.append((where, panel["gridPos"]))
        uses.append((where, panel.get("title") or ""))
        targets = panel.get("targets") or []
        if panel.get("type") != "row" or targets:
            problems += _datasource_problems(where, panel.get("datasource"), provisioned_uids, uses)
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or not all(ref_ids):
            problems.append(f"{where}: target refIds {ref_ids} are not unique and non-empty")
        for target in targets:
            twhere = f"{where} target {target.get('refId')!r}"
            if not target.get("expr"):
                problems.append(f"{twhere}: expr is empty")
            uses.append((twhere, target.get("expr") or ""))
            problems += _datasource_problems(twhere, target.get("datasource"), provisioned_uids, uses)
    problems += _overlaps(placed)

    for where, text in uses:
        for name in variable_names(text):
            if name not in defined and not name.startswith("__"):
                problems.append(f"{where}: uses undefined variable ${name}")
    return problems
