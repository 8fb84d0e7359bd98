"""The ``rollguard`` command line (CONTRACT §5).

Exit codes: 0 success, 1 ``rules validate`` found errors, 2 invalid rules or arguments for other commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rules.durations import parse_duration
from rules.exceptions import RollguardError
from rules.loader import RulesInvalid, load_rules
from rules.outputs import iso
from streams.offline.kafka_source import add_from_kafka_args
from streams.offline.report_format import plural
from streams.settings import Settings, clock_skew_ms
from streams.subcommand import fail as _fail
from streams.subcommand import settings_from_args as _settings

__all__ = ["main"]


def cmd_validate(args: argparse.Namespace) -> int:
    skipped: list[str] = []
    try:
        rulesets = load_rules(args.paths, skipped=skipped)
    except RulesInvalid as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        print(f"{len(e.errors)} error(s)", file=sys.stderr)
        return 1
    n = sum(len(r.rules) for r in rulesets)
    for r in rulesets:
        promotes = f"  promotes {r.phases[0]} -> {r.promotion.to}" if r.promotion is not None else ""
        print(f"ok  {r.name:<36} {len(r.rules):>3} rules  version {r.version[:12]}  ({r.source}){promotes}")
    for path in skipped:
        print(f"skip {path}  (a `rules test` cases file: run it with `rollguard rules test`)")
    skipped_text = f"; skipped {plural(len(skipped), 'rules-test cases file')}" if skipped else ""
    print(f"{len(rulesets)} rule set(s), {n} rules: valid{skipped_text}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.offline.kafka_source import source_from_args
    from streams.offline.replay import replay

    try:
        parse_duration(args.allowed_lateness)
        if args.max_clock_skew is not None:
            clock_skew_ms(args.max_clock_skew)
        rulesets = load_rules(args.rules)
        compare = load_rules(args.compare) if args.compare else None
        settings = Settings()
        source = source_from_args(args, settings.topic_prefix)
    except RulesInvalid as e:
        return _fail(f"invalid rules:\n{e}")
    except (RollguardError, ValidationError, ValueError) as e:
        return _fail(str(e))
    for p in args.events or ():
        if p != "-" and not os.path.isfile(p):
            return _fail(f"events file not found: {p}")
    if args.whole_process:  # the program itself, not main() called by other code: the process is replay's
        from streams.runtime import tune_gc

        tune_gc()
    res = replay(
        rulesets,
        None if source else args.events,
        args.out,
        source=source,
        since_ms=args.since,
        until_ms=args.until,
        config=settings.engine_config(args.allowed_lateness, args.max_clock_skew),
        user_key=settings.user_key_bytes(),
        compare=compare,
        rule_paths=(args.rules, args.compare),
        progress=args.progress,
        allowed_lateness=args.allowed_lateness,
        charts=args.charts,
        operator_keys=settings.operator_keys_map(),
    )
    _print_summary(res)
    return 0


def _print_summary(res) -> None:
    eng = res.engine
    st = eng.stats
    invalid = sum(res.invalid.values())
    outliers = sum(st.outliers.values())
    print(
        f"events: {res.events_read:,} read, {invalid:,} invalid (dead-lettered), {st.late:,} late, "
        f"{st.duplicates:,} duplicate"
        + (f", {outliers:,} clock outliers (ts_outlier, dead-lettered)" if outliers else "")
        + (f", {res.outside_window:,} outside --since/--until" if res.outside_window else "")
    )
    c = res.counts
    print(
        f"decisions: {c['decisions.jsonl']:,}  commands: {c['commands.jsonl']:,}  pages: {c['pages.jsonl']:,}  "
        f"dead letters: {c['deadletter.jsonl']:,}"
    )
    for feature in sorted(eng.features):
        for phase, latch in sorted(eng.features[feature].latches.items()):
            print(f"  {feature}/{phase}: {latch.upper()}")
    if res.compare_engine is not None:
        cc = res.compare_counts
        print(
            f"compare: decisions {cc['decisions.jsonl']:,}  commands {cc['commands.jsonl']:,}  "
            f"pages {cc['pages.jsonl']:,}  (in {res.out_dir / 'compare'})"
        )
    if res.charts:
        print(f"charts: {res.charts_dir}/ ({plural(len(res.charts), 'PNG')}, linked from report.md)")
    print(f"report: {res.out_dir / 'report.md'}")


def cmd_scenario(args: argparse.Namespace) -> int:
    from streams.offline.scenario import PRESETS, generate, scenario_from_args, write_jsonl

    if args.preset not in PRESETS:
        return _fail(f"unknown preset {args.preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    overrides = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.days is not None:
        overrides["duration_ms"] = int(args.days * 86_400_000)
    if args.rate is not None:
        overrides["mean_rate_per_s"] = args.rate
    for name in ("treatment_share", "treatment_accept_delta", "treatment_latency_mult"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    try:
        scenario = scenario_from_args(args.preset, **overrides)
    except (RollguardError, ValueError, TypeError) as e:
        return _fail(str(e))
    n = write_jsonl(generate(scenario), args.out)
    print(f"wrote {n:,} events to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(Path(args.out), preset=args.preset, offline=args.offline, duration=args.duration)


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.live.worker import run_worker

    try:
        settings = _settings(args)
    except ValidationError as e:
        return _fail(f"invalid settings:\n{e}")
    if not settings.kafka_bootstrap or not settings.redis_url:
        return _fail("set ROLLGUARD_KAFKA_BOOTSTRAP and ROLLGUARD_REDIS_URL (or run `rollguard demo`, which starts "
                     "an embedded broker and Redis)")  # fmt: skip
    if settings.profile == "production":
        from streams.security import production_problems

        if problems := production_problems(settings):
            return _fail("the production profile refuses to start:\n" + "\n".join(f"  - {p}" for p in problems))
    if settings.pager_in_worker:
        from streams.pager import pager_problems

        if problems := pager_problems(settings):
            return _fail("ROLLGUARD_PAGER_IN_WORKER: the pager cannot start:\n"
                         + "\n".join(f"  - {p}" for p in problems))
    try:
        load_rules(settings.rule_paths())  # fail before connecting to anything
        return run_worker(settings, create_topics=args.create_topics, log_level=args.log_level)
    except RulesInvalid as e:
        return _fail(f"invalid rules:\n{e}")


def cmd_pager(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from streams.pager import pager_problems, serve

    try:
        settings = _settings(args)
    except ValidationError as e:
        return _fail(f"invalid settings:\n{e}")
    if not settings.kafka_bootstrap:
        return _fail("set ROLLGUARD_KAFKA_BOOTSTRAP (environment or --config FILE) to the broker the workers use")
    if problems := pager_problems(settings):
        return _fail("the pager cannot start:\n" + "\n".join(f"  - {p}" for p in problems))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await serve(settings, once=args.once, stop=stop)

    print(asyncio.run(run()).line())
    return 0


class _Parser(argparse.ArgumentParser):
    """No abbreviated options, in every subcommand (subparsers are built with the parent's class): a typo such as
    ``--from`` must not silently mean ``--from-kafka``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the description's and epilog's line breaks."""


def _add_scenario_parser(sub: Any) -> None:
    from streams.offline.scenario import PRESETS, Scenario
    from streams.offline.scenario_incidents import describe_presets

    d = Scenario()
    days = d.duration_ms / 86_400_000
    s = sub.add_parser(
        "scenario", help="generate a synthetic traffic scenario as JSONL", formatter_class=_HelpWithDefaults,
        description=(
            f"Generate seeded synthetic traffic (docs/contract.md §1 events, JSON Lines) for feature {d.feature!r},\n"
            f"phase {d.phase!r}, from {iso(d.start)} (a Monday): interactions at a diurnal, Poisson rate and\n"
            "the feedback that follows them (suggestion outcomes, thumbs, expert reviews, tickets, surveys), with\n"
            "the preset's incident. Incidents sit at fixed shares of the run, so --days moves and stretches them."),
        epilog="presets (incident, when it happens):\n" + "\n".join(
            "  " + line for line in describe_presets(d.start, d.duration_ms)),
    )  # fmt: skip
    s.add_argument("preset", metavar="PRESET", help="the incident to inject: " + ", ".join(PRESETS) + " (see below)")
    s.add_argument("--out", required=True, metavar="FILE", default=argparse.SUPPRESS, help=".jsonl or .jsonl.gz")
    s.add_argument("--seed", type=int, default=d.seed, help="random seed: the same seed gives the same bytes")
    s.add_argument("--days", type=float, default=days, help="event time the scenario covers, in days")
    s.add_argument("--rate", type=float, default=d.mean_rate_per_s,
                   help="mean interactions per second on weekdays (diurnal: nights ~15%% of the peak)")
    s.add_argument("--treatment-share", dest="treatment_share", type=float, metavar="SHARE",
                   help=f"serve this share of interactions from a treatment arm (model {d.treatment_model_version!r}, "
                        f"variant {d.treatment_variant!r}; the rest variant {d.control_variant!r}) (default: none)")
    s.add_argument("--treatment-accept-delta", dest="treatment_accept_delta", type=float, metavar="DELTA",
                   help="the treatment's suggestions are accepted DELTA more (-0.03: 3 points less) (default: 0)")
    s.add_argument("--treatment-latency-mult", dest="treatment_latency_mult", type=float, metavar="X",
                   help="the treatment's calls take X times as long (default: 1)")
    s.set_defaults(func=cmd_scenario)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rollguard", description="Streaming guardrail monitor for AI feature launches.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="replay JSONL events through rule sets (backtest)")
    r.add_argument("--rules", nargs="+", required=True, metavar="PATH", help="rule files or folders")
    inputs = r.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--events", nargs="+", metavar="PATH", help=".jsonl / .jsonl.gz files, or -")
    add_from_kafka_args(r, inputs)
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--compare", nargs="+", metavar="PATH", help="candidate rule set to compare against --rules")
    r.add_argument("--allowed-lateness", default="30s", metavar="DURATION")
    r.add_argument("--max-clock-skew", default=None, metavar="DURATION|off",
                   help="quarantine (ts_outlier) events further than this from their stream's time "
                        "(default: ROLLGUARD_MAX_CLOCK_SKEW, 10m); off trusts every producer clock")  # fmt: skip
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    r.add_argument("--charts", choices=["active", "all", "none"], default="active",
                   help="PNG charts in OUT/charts/: rules that were pending or firing (default), every rule, or none")
    r.set_defaults(func=cmd_replay)

    rules = sub.add_parser("rules", help="rule file tools")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    v = rsub.add_parser("validate", help="validate rule files; every error at once")
    v.add_argument("paths", nargs="+", metavar="PATH")
    v.set_defaults(func=cmd_validate)

    _add_scenario_parser(sub)

    w = sub.add_parser("worker", help="run a live worker (Faust): Kafka in, Redis state, decisions/commands/pages out")
    w.add_argument("--config", metavar="FILE", help="settings file (KEY=VALUE lines, ROLLGUARD_ prefix); env wins")
    w.add_argument("--create-topics", action=argparse.BooleanOptionalAction, default=True,
                   help="create missing rollguard topics at start")  # fmt: skip
    w.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    w.set_defaults(func=cmd_worker)

    pg = sub.add_parser("pager", help="deliver pages to Alertmanager, PagerDuty or a webhook (Kafka consumer)")
    pg.add_argument("--config", metavar="FILE", help="settings file (KEY=VALUE lines, ROLLGUARD_ prefix); env wins")
    pg.add_argument("--once", action="store_true", help="deliver what the topic holds now, then exit")
    pg.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    pg.set_defaults(func=cmd_pager)

    from streams.audit_cli import add_audit_parsers
    from streams.emitter import add_emit_parser
    from streams.live.ops import add_ops_parsers
    from streams.offline.rule_tests import add_rules_test_parser

    from dashboards.cli import add_dashboards_parsers
    from streams.grafana.commands import add_grafana_parsers

    add_emit_parser(sub)
    add_ops_parsers(sub, rsub)
    add_audit_parsers(sub)
    add_rules_test_parser(rsub)
    add_grafana_parsers(sub, add_dashboards_parsers(sub))

    d = sub.add_parser("demo", help="embedded broker + Redis + worker + traffic with an incident, until the rollback")
    d.add_argument("--out", default="out/demo", metavar="DIR")
    d.add_argument("--preset", default="latency_spike")
    d.add_argument("--duration", default="8h", help="event time the scenario covers (default 8h)")
    d.add_argument("--offline", action="store_true", help="file replay only: no embedded broker, Redis or worker")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad arguments, as the contract wants
        return int(e.code or 0)
    # run as the program (no ``argv``: the console script, ``python -m streams.cli``), a command may set up the
    # process for itself (streams.runtime); called with arguments by other code (tests, scripts), it must not
    args.whole_process = argv is None
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except RollguardError as e:
        return _fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
