"""`rollguard dashboards ...` argument parsing: ``build`` writes the Grafana dashboards as JSON files.

``add_dashboards_parsers`` returns the ``dashboards`` subparsers so that other commands (``push``) attach there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_dashboards_parsers", "cmd_build", "DEFAULT_RULES", "DEFAULT_OUT"]

DEFAULT_RULES = ("rules/catalog",)
DEFAULT_OUT = "dashboards"


def cmd_build(args: argparse.Namespace) -> int:
    """Load the rule packs, build every dashboard, write them; exit 2 on invalid rules (like ``replay``)."""
    from dashboards.render import build_dashboards, write_dashboards
    from rules.loader import RulesInvalid, load_rules

    try:
        rulesets = load_rules(args.rules)
    except RulesInvalid as e:
        print(f"rollguard: error: invalid rules:\n{e}", file=sys.stderr)
        return 2
    written, stale = write_dashboards(build_dashboards(rulesets), Path(args.out))
    for path in written:
        print(f"wrote {path}")
    for path in stale:
        print(f"note: {path} was not regenerated (no loaded rule pack has that name); delete it if the pack is gone")
    print(f"{len(written)} dashboard(s) from {len(rulesets)} rule pack(s) in {args.out}")
    return 0


def add_dashboards_parsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    d = sub.add_parser("dashboards", help="Grafana dashboards: build from rule packs, push to Grafana")
    dsub = d.add_subparsers(dest="dashboards_command", required=True)
    b = dsub.add_parser(
        "build",
        help="write the Grafana dashboards (one per rule pack, launch guardrails, operations) as JSON",
        description="Write one dashboard per rule pack (rules-<pack>.json) plus launch-guardrails.json and "
        "operations.json. Output is deterministic: rebuilding unchanged rules gives identical files.",
    )
    b.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES), metavar="PATH",
                   help="rule files or folders (default: rules/catalog)")  # fmt: skip
    b.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="output folder (default: dashboards)")
    b.set_defaults(func=cmd_build)
    return dsub
