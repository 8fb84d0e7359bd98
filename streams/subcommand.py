"""What every ``rollguard`` subcommand shares: the error line with its exit code, and the settings it runs with.

Kept below :mod:`streams.cli` so that command modules that live with their concern (``rollguard annotate`` in
:mod:`streams.grafana.commands`) use them without importing the CLI, which imports them (no import circle).
"""

from __future__ import annotations

import argparse
import os
import sys

from rules.exceptions import RollguardError
from streams.settings import Settings

__all__ = ["fail", "settings_from_args"]


def fail(msg: str, code: int = 2) -> int:
    print(f"rollguard: error: {msg}", file=sys.stderr)
    return code


def settings_from_args(args: argparse.Namespace) -> Settings:
    cfg = getattr(args, "config", None)
    if cfg and not os.path.isfile(cfg):
        raise RollguardError(f"settings file not found: {cfg}")
    return Settings(_env_file=cfg) if cfg else Settings()
