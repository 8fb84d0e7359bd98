"""A recording stand-in for the few Grafana HTTP API endpoints rollguard uses, for tests.

It serves on a loopback port in a thread (stdlib ``http.server``), keeps folders, dashboards and annotations in
memory, records every request, and checks each one against the documented shape (Grafana HTTP API: folders,
dashboards ``POST /api/dashboards/db``, annotations ``POST /api/annotations``): method and path, the
``Authorization: Bearer`` header, and the JSON body's keys and types. A request of the wrong shape gets the 400
Grafana would give and lands in ``violations``, which tests assert is empty.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_UID = re.compile(r"[A-Za-z0-9_-]{1,40}")
_FOLDER_KEYS = {"uid", "title", "parentUid", "description"}
_DASHBOARD_DB_KEYS = {"dashboard", "folderUid", "folderId", "overwrite", "message"}
_ANNOTATION_KEYS = {"dashboardUID", "dashboardId", "panelId", "time", "timeEnd", "tags", "text"}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    authorization: str | None
    body: Any
    status: int


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class FakeGrafana:
    def __init__(self, token: str = "glsa_fake_0123456789abcdef", unique_folder_titles: bool = False) -> None:
        self.token = token
        self.unique_folder_titles = unique_folder_titles
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.annotations: list[dict] = []
        self._failures: dict[tuple[str, str], list[tuple[int, str]]] = {}
        self._lock = threading.Lock()
        self._next_id = 1

    # --- test controls ------------------------------------------------------------------------------------------

    def fail_next(self, method: str, path: str, status: int, message: str = "injected failure", times: int = 1) -> None:
        """The next ``times`` requests to ``method path`` get ``status`` with Grafana's error body."""
        self._failures.setdefault((method, path), []).extend([(status, message)] * times)

    def add_dashboard(self, uid: str, title: str, folder_uid: str = "") -> None:
        self.dashboards[uid] = {"dashboard": {"id": self._id(), "uid": uid, "title": title, "version": 1},
                                "meta": {"folderUid": folder_uid}}  # fmt: skip

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeGrafana:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake._serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._serve(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- serving ------------------------------------------------------------------------------------------------

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        auth = h.headers.get("Authorization")
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        body: Any = None
        with self._lock:
            status, answer = self._answer(h, method, path, auth, raw)
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
            self.requests.append(Recorded(method, path, auth, body, status))
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, h, method: str, path: str, auth: str | None, raw: bytes) -> tuple[int, Any]:
        if auth != f"Bearer {self.token}":
            return 401, {"message": "invalid API key", "messageId": "api-key.invalid"}
        queue = self._failures.get((method, path))
        if queue:
            status, message = queue.pop(0)
            return status, {"message": message}
        body: Any = None
        if method == "POST":
            if not (h.headers.get("Content-Type") or "").startswith("application/json"):
                return self._violation(f"{method} {path}: Content-Type is not application/json")
            try:
                body = json.loads(raw)
            except ValueError:
                return self._violation(f"{method} {path}: body is not JSON")
            if not isinstance(body, dict):
                return self._violation(f"{method} {path}: body is not a JSON object")
        route = (method, path)
        if route == ("GET", "/api/folders"):
            return 200, [{"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in self.folders.values()]
        if method == "GET" and path.startswith("/api/folders/"):
            found = self.folders.get(path.rsplit("/", 1)[1])
            return (200, found) if found else (404, {"message": "folder not found", "status": "not-found"})
        if route == ("POST", "/api/folders"):
            return self._create_folder(body)
        if method == "GET" and path.startswith("/api/dashboards/uid/"):
            found = self.dashboards.get(path.rsplit("/", 1)[1])
            return (200, found) if found else (404, {"message": "Dashboard not found"})
        if route == ("POST", "/api/dashboards/db"):
            return self._save_dashboard(body)
        if route == ("POST", "/api/annotations"):
            return self._add_annotation(body)
        return 404, {"message": "Not found"}

    def _violation(self, what: str) -> tuple[int, Any]:
        self.violations.append(what)
        return 400, {"message": f"bad request: {what}"}

    def _create_folder(self, body: dict) -> tuple[int, Any]:
        if set(body) - _FOLDER_KEYS:
            return self._violation(f"POST /api/folders: unknown keys {sorted(set(body) - _FOLDER_KEYS)}")
        uid, title = body.get("uid"), body.get("title")
        if not isinstance(uid, str) or not _UID.fullmatch(uid):
            return self._violation("POST /api/folders: uid must be a string of 1-40 [A-Za-z0-9_-]")
        if not isinstance(title, str) or not title:
            return self._violation("POST /api/folders: title must be a non-empty string")
        if uid in self.folders:
            return 409, {"message": "a folder with the same uid already exists"}
        if self.unique_folder_titles and any(f["title"] == title for f in self.folders.values()):
            return 409, {"message": "a folder with the same name already exists"}
        self.folders[uid] = {"id": self._id(), "uid": uid, "title": title, "version": 1}
        return 200, self.folders[uid]

    def _save_dashboard(self, body: dict) -> tuple[int, Any]:
        where = "POST /api/dashboards/db"
        if set(body) - _DASHBOARD_DB_KEYS:
            return self._violation(f"{where}: unknown keys {sorted(set(body) - _DASHBOARD_DB_KEYS)}")
        d = body.get("dashboard")
        if not isinstance(d, dict) or not isinstance(d.get("uid"), str) or not isinstance(d.get("title"), str):
            return self._violation(f"{where}: dashboard must be an object with string uid and title")
        if d.get("id") is not None and not _is_int(d.get("id")):
            return self._violation(f"{where}: dashboard.id must be null or an integer")
        if not isinstance(body.get("folderUid"), str):
            return self._violation(f"{where}: folderUid must be a string")
        if not isinstance(body.get("overwrite"), bool):
            return self._violation(f"{where}: overwrite must be a boolean")
        if "message" in body and not isinstance(body["message"], str):
            return self._violation(f"{where}: message must be a string")
        if body["folderUid"] not in self.folders:
            return 400, {"message": "folder not found"}
        old = self.dashboards.get(d["uid"])
        if old is not None and not body["overwrite"]:
            return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
        version = old["dashboard"]["version"] + 1 if old else 1
        ident = old["dashboard"]["id"] if old else self._id()
        stored = {**d, "id": ident, "version": version}
        self.dashboards[d["uid"]] = {"dashboard": stored, "meta": {"folderUid": body["folderUid"],
                                                                   "url": f"/d/{d['uid']}/x"}}  # fmt: skip
        return 200, {"id": ident, "uid": d["uid"], "url": f"/d/{d['uid']}/x", "status": "success", "version": version}

    def _add_annotation(self, body: dict) -> tuple[int, Any]:
        where = "POST /api/annotations"
        if set(body) - _ANNOTATION_KEYS:
            return self._violation(f"{where}: unknown keys {sorted(set(body) - _ANNOTATION_KEYS)}")
        if not _is_int(body.get("time")) or body["time"] <= 0:
            return self._violation(f"{where}: time must be a positive integer (epoch ms)")
        if "timeEnd" in body and (not _is_int(body["timeEnd"]) or body["timeEnd"] < body["time"]):
            return self._violation(f"{where}: timeEnd must be an integer >= time")
        tags = body.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            return self._violation(f"{where}: tags must be a list of non-empty strings")
        if not isinstance(body.get("text"), str):
            return self._violation(f"{where}: text must be a string")
        if "dashboardUID" in body:
            if not isinstance(body["dashboardUID"], str):
                return self._violation(f"{where}: dashboardUID must be a string")
            if body["dashboardUID"] not in self.dashboards:
                return 400, {"message": "Invalid dashboard UID in annotation request"}
        self.annotations.append(body)
        return 200, {"message": "Annotation added", "id": self._id()}
