"""`rollguard dashboards ...` argument parsing (filled in by the dashboards work)."""

from __future__ import annotations

import argparse


def add_dashboards_parsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    d = sub.add_parser("dashboards", help="Grafana dashboards: build from rule packs, push to Grafana")
    return d.add_subparsers(dest="dashboards_command", required=True)
