"""Grafana HTTP API: dashboard push and decision annotations (filled in by the Grafana work)."""

from __future__ import annotations

import argparse


def add_grafana_parsers(sub: argparse._SubParsersAction, dashboards_sub: argparse._SubParsersAction) -> None:
    return None
