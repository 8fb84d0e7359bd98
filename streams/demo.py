"""``rollguard demo``: the embedded default job.

Generates a day of realistic traffic for the AI email-reply feature with an injected incident, replays it through
the bundled rule catalogue, and tells what rollguard decided and where to read the report. No Kafka or Redis needed.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from rules.loader import CATALOG, load_rules
from rules.outputs import iso
from streams.replay import replay
from streams.scenario import generate, scenario_from_args, write_jsonl
from streams.settings import Settings

__all__ = ["run_demo"]


def run_demo(out: Path, preset: str = "latency_spike") -> int:
    out.mkdir(parents=True, exist_ok=True)
    events = out / "events.jsonl.gz"
    scenario = scenario_from_args(preset)
    print(f"1/3 generating scenario {preset!r}: {scenario.feature}/{scenario.phase}, "
          f"{scenario.duration_ms / 3_600_000:.0f} h of traffic, incidents: "
          + (", ".join(f"{i.kind} at {_hm(i.start)}" for i in scenario.incidents) or "none"))  # fmt: skip
    n = write_jsonl(generate(scenario), events)
    print(f"    {n:,} events -> {events}")
    rulesets = load_rules([CATALOG])
    print(f"2/3 replaying through the rule catalogue ({len(rulesets)} rule sets, "
          f"{sum(len(r.rules) for r in rulesets)} rules)")  # fmt: skip
    settings = Settings()
    res = replay(rulesets, [str(events)], out, config=settings.engine_config(), user_key=settings.user_key_bytes(),
                 rule_paths=([str(CATALOG)], None), progress=False)  # fmt: skip
    print("3/3 what rollguard decided:")
    commands = [orjson.loads(line) for line in (out / "commands.jsonl").read_bytes().splitlines()]
    pages = [orjson.loads(line) for line in (out / "pages.jsonl").read_bytes().splitlines()]
    for c in commands:
        print(f"    {c['ts']}  {c['action'].upper():<14} {c['feature']}/{c['phase']}  by {c['ruleset']}/{c['rule_id']}")
        print(f"        reason: {c['reason']}")
    triggers = [p for p in pages if p["event_action"] == "trigger"]
    by_sev: dict[str, int] = {}
    for p in triggers:
        by_sev[p["payload"]["severity"]] = by_sev.get(p["payload"]["severity"], 0) + 1
    print(f"    pages: {len(triggers)} triggered (" + ", ".join(f"{k} {v}" for k, v in sorted(by_sev.items())) + ")")
    print(f"    decisions: {res.counts['decisions.jsonl']:,}   dead letters: {res.counts['deadletter.jsonl']:,}")
    print(f"report: {out / 'report.md'}")
    print(f"outputs: {out}/decisions.jsonl commands.jsonl pages.jsonl deadletter.jsonl")
    return 0


def _hm(ms: int) -> str:
    return iso(ms)[11:16] + "Z"
