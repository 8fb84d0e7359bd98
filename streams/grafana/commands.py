"""Grafana commands: ``rollguard dashboards push`` and ``rollguard annotate``.

``dashboards push`` uploads the dashboard JSON files (streams.grafana.dashboard_push); ``annotate`` consumes the
decisions and commands topics and posts Grafana annotations (streams.grafana.annotator). Both take the Grafana root URL
from ``--url`` or ``GRAFANA_URL`` and a service account token from ``GRAFANA_TOKEN`` (or ``--token``, which ``ps``
shows: prefer the variable). The token is never printed or logged. Grafana errors exit with code 2 and say the
HTTP status, Grafana's message and what to check.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
from collections import Counter
from pathlib import Path

__all__ = ["add_grafana_parsers", "cmd_push", "cmd_annotate"]

_UID = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _grafana_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="Grafana root URL, e.g. https://grafana.example.com (default: $GRAFANA_URL)")
    p.add_argument("--token", help="service account token (default: $GRAFANA_TOKEN, preferred: ps shows arguments)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per request (default 10)")


def add_grafana_parsers(sub: argparse._SubParsersAction, dashboards_sub: argparse._SubParsersAction) -> None:
    p = dashboards_sub.add_parser("push", help="upload dashboard JSON files to Grafana (idempotent)")
    _grafana_args(p)
    p.add_argument("--folder", default="rollguard", metavar="TITLE", help="Grafana folder (created if missing)")
    p.add_argument("--folder-uid", metavar="UID", help="the folder's uid (default: derived from the title)")
    p.add_argument("--dir", default="dashboards", metavar="DIR", help="folder of *.json dashboards")
    p.add_argument("--dry-run", action="store_true", help="read Grafana, report what would change, write nothing")
    p.set_defaults(func=cmd_push)

    a = sub.add_parser("annotate", help="post decisions and commands to Grafana as annotations (Kafka consumer)")
    _grafana_args(a)
    a.add_argument("--config", metavar="FILE", help="settings file (KEY=VALUE lines, ROLLGUARD_ prefix); env wins")
    a.add_argument("--dashboard-uid", metavar="UID", help="attach annotations to this dashboard (default: "
                   "organisation annotations, shown by any dashboard querying the tag rollguard)")  # fmt: skip
    a.add_argument("--once", action="store_true", help="post what the topics hold now, then exit")
    a.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    a.set_defaults(func=cmd_annotate)


def cmd_push(args: argparse.Namespace) -> int:
    from streams.grafana.dashboard_push import folder_uid, load_dashboards, push
    from streams.grafana.api import Grafana, GrafanaError, resolve_token, resolve_url

    url, token = resolve_url(args.url), resolve_token(args.token)
    uid = args.folder_uid or folder_uid(args.folder)
    if not _UID.fullmatch(uid):
        raise GrafanaError(f"--folder-uid {uid!r}: use 1-40 characters of [A-Za-z0-9_-]")
    dashboards = load_dashboards(Path(args.dir))
    grafana = Grafana(url, token, timeout=args.timeout)
    counts: Counter[str] = Counter()
    for step in push(grafana, dashboards, title=args.folder, uid=uid, dry_run=args.dry_run):
        if step.what == "folder":
            print(f"folder     {step.title!r} (uid {step.uid}): {step.action}")
            continue
        counts[step.action] += 1
        print(f"{step.action:<12} {step.uid:<32} {step.title}  ({step.source})")
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
    print(f"{len(dashboards)} dashboard(s) at {grafana.url}: {summary}" + ("  (dry run: nothing written)"
                                                                         if args.dry_run else ""))  # fmt: skip
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from streams.grafana.api import AsyncGrafana, GrafanaError, resolve_token, resolve_url
    from streams.subcommand import fail as _fail
    from streams.subcommand import settings_from_args as _settings

    url, token = resolve_url(args.url), resolve_token(args.token)
    if args.dashboard_uid is not None and not _UID.fullmatch(args.dashboard_uid):
        raise GrafanaError(f"--dashboard-uid {args.dashboard_uid!r}: use 1-40 characters of [A-Za-z0-9_-]")
    try:
        settings = _settings(args)
    except ValidationError as e:
        return _fail(f"invalid settings:\n{e}")
    if not settings.kafka_bootstrap:
        return _fail("set ROLLGUARD_KAFKA_BOOTSTRAP (environment or --config FILE) to the broker the worker uses")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stats = asyncio.run(_annotate(settings, AsyncGrafana(url, token, timeout=args.timeout), args))
    print(stats.line())
    return 0


async def _annotate(settings, grafana, args: argparse.Namespace):
    from streams.grafana.annotations import AnnotationPlanner
    from streams.grafana.annotator import Annotator, grafana_poster
    from streams.grafana.api import GrafanaError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.dashboard_uid:
            try:
                await grafana.call(f"GET /api/dashboards/uid/{args.dashboard_uid}",
                                   grafana.api.dashboard.get_dashboard, args.dashboard_uid)  # fmt: skip
            except GrafanaError as e:
                if e.status == 404:
                    raise GrafanaError(f"no dashboard with uid {args.dashboard_uid!r} in Grafana at {grafana.url} "
                                       "(--dashboard-uid; `rollguard dashboards push` uploads them)", 404) from None
                raise
        annotator = Annotator(settings, grafana_poster(grafana), AnnotationPlanner(args.dashboard_uid),
                              once=args.once)  # fmt: skip
        try:
            return await annotator.run(stop)
        except GrafanaError:
            print(annotator.stats.line() + " before the error")
            raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await grafana.close()
