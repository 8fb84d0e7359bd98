"""``rollguard dashboards push``: upload the committed dashboard JSON files to Grafana, idempotently.

Three steps, each a grafana-client call behind :class:`streams.grafana.api.Grafana`:

1. the folder: ``GET /api/folders/:uid``; when missing, ``POST /api/folders`` with a uid fixed by the title
   (:func:`folder_uid`), so every push of every environment lands in the same folder;
2. per dashboard ``GET /api/dashboards/uid/:uid``, and :func:`decide` compares the stored model with the file,
   ignoring what Grafana owns (``id``, ``version``);
3. only a new or changed dashboard is written: ``POST /api/dashboards/db`` with ``overwrite: true`` (the files are
   the source of truth), the folder uid and a version-history message.

A second push of the same files therefore writes nothing and reports every dashboard ``unchanged``.

>>> folder_uid("rollguard")
'rollguard-52b60bb0'
>>> decide({"uid": "a", "title": "A", "version": 3}, {"dashboard": {"uid": "a", "title": "A", "id": 7,
...        "version": 9}, "meta": {"folderUid": "f"}}, "f")
'unchanged'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from streams.grafana.api import Grafana, GrafanaError

__all__ = ["LocalDashboard", "DashboardFilesInvalid", "load_dashboards", "folder_uid", "decide", "push"]

_UID = re.compile(r"[A-Za-z0-9_-]{1,40}")  # Grafana: at most 40 characters
_OWNED_BY_GRAFANA = ("id", "version")


class DashboardFilesInvalid(GrafanaError):
    """Dashboard JSON files that cannot be pushed; carries every problem at once."""


@dataclass(frozen=True)
class LocalDashboard:
    path: Path
    model: dict

    @property
    def uid(self) -> str:
        return self.model["uid"]

    @property
    def title(self) -> str:
        return self.model["title"]


def load_dashboards(folder: Path) -> list[LocalDashboard]:
    """Every ``*.json`` dashboard in ``folder`` (a dashboard model, or Grafana's ``{"dashboard": {...}}``
    wrapper), each with a uid and a title, uids unique; all problems reported at once before anything is sent."""
    if not folder.is_dir():
        raise DashboardFilesInvalid(f"dashboards folder not found: {folder}")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DashboardFilesInvalid(f"no *.json dashboards in {folder}")
    out: list[LocalDashboard] = []
    errors: list[str] = []
    seen: dict[str, Path] = {}
    for path in files:
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as e:
            errors.append(f"{path}: not JSON ({e})")
            continue
        model = doc.get("dashboard") if isinstance(doc, dict) and isinstance(doc.get("dashboard"), dict) else doc
        if not isinstance(model, dict):
            errors.append(f"{path}: not a dashboard object")
            continue
        uid, title = model.get("uid"), model.get("title")
        if not isinstance(uid, str) or not _UID.fullmatch(uid):
            errors.append(f"{path}: uid must be 1-40 characters of [A-Za-z0-9_-] (a fixed uid keeps links stable)")
            continue
        if not isinstance(title, str) or not title.strip():
            errors.append(f"{path}: title missing")
            continue
        if uid in seen:
            errors.append(f"{path}: uid {uid!r} also used by {seen[uid]}")
            continue
        seen[uid] = path
        out.append(LocalDashboard(path, model))
    if errors:
        raise DashboardFilesInvalid("invalid dashboard file(s):\n  " + "\n  ".join(errors))
    return out


def folder_uid(title: str) -> str:
    """A stable folder uid from its title: a readable slug plus a hash (two titles with one slug differ)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:24] or "folder"
    return f"{slug}-{hashlib.sha256(title.encode()).hexdigest()[:8]}"


def _comparable(model: dict) -> dict:
    return {k: v for k, v in model.items() if k not in _OWNED_BY_GRAFANA}


def decide(local: dict, stored: dict | None, folder: str) -> str:
    """``create`` (not in Grafana), ``unchanged`` (same model apart from id/version, same folder) or ``update``."""
    if stored is None:
        return "create"
    model, meta = stored.get("dashboard"), stored.get("meta") or {}
    if isinstance(model, dict) and _comparable(model) == _comparable(local) and meta.get("folderUid") == folder:
        return "unchanged"
    return "update"


@dataclass(frozen=True)
class Step:
    """One line of the push summary: ``what`` is ``folder`` or a dashboard; ``action`` what happened."""

    what: str
    uid: str
    title: str
    action: str  # created | updated | unchanged | exists (folder); "would ..." in a dry run
    source: str = ""


def push(grafana: Grafana, dashboards: list[LocalDashboard], *, title: str, uid: str, dry_run: bool = False,
         message: str = "rollguard dashboards push") -> Iterator[Step]:  # fmt: skip
    """Ensure the folder, then create or update each dashboard that differs; yields a :class:`Step` as each is
    done (so a failure part-way has already reported what succeeded). Raises :class:`GrafanaError`."""
    api = grafana.api
    folder = _get(grafana, f"GET /api/folders/{uid}", api.folder.get_folder, uid)
    if folder is not None:
        yield Step("folder", uid, folder.get("title", title), "exists")
    elif dry_run:
        yield Step("folder", uid, title, "would create")
    else:
        try:
            created = grafana.call("POST /api/folders", api.folder.create_folder, title, uid=uid)
            uid, action = created.get("uid", uid), "created"
        except GrafanaError as e:
            # Grafana versions that keep folder titles unique answer 409 when the title exists under another uid
            # (made by hand, say): use that folder rather than fail; --folder-uid chooses explicitly
            found = _folder_titled(grafana, title) if e.status == 409 else None
            if found is None:
                raise
            uid, action = found, "exists"
        yield Step("folder", uid, title, action)
    for d in dashboards:
        what = f"GET /api/dashboards/uid/{d.uid}"
        action = decide(d.model, _get(grafana, what, api.dashboard.get_dashboard, d.uid), uid)
        if action != "unchanged" and not dry_run:
            body = {"dashboard": {**d.model, "id": None}, "folderUid": uid, "overwrite": True,
                    "message": f"{message} ({d.path.name})"}  # fmt: skip
            grafana.call("POST /api/dashboards/db", api.dashboard.update_dashboard, body)
        done = {"create": "created", "update": "updated", "unchanged": "unchanged"}[action]
        yield Step("dashboard", d.uid, d.title, f"would {action}" if dry_run and action != "unchanged" else done,
                   d.path.name)  # fmt: skip


def _folder_titled(grafana: Grafana, title: str) -> str | None:
    folders = grafana.call("GET /api/folders", grafana.api.folder.get_all_folders)
    for f in folders if isinstance(folders, list) else ():
        if isinstance(f, dict) and f.get("title") == title and isinstance(f.get("uid"), str):
            return f["uid"]
    return None


def _get(grafana: Grafana, what: str, fn, uid: str) -> dict | None:
    """A GET by uid; ``None`` when Grafana says 404 (a wrong base URL also gives 404s, but then the POST that
    follows fails with a 404 and a hint, so the error still surfaces)."""
    try:
        found = grafana.call(what, fn, uid)
    except GrafanaError as e:
        if e.status == 404:
            return None
        raise
    return found if isinstance(found, dict) else None
