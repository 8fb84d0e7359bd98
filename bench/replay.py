"""Replay throughput benchmark (not a test): ``python bench/replay.py [--events N] [--stages baseline,parse]``.

Generates (once, cached under bench/data/) a scenario of at least N events (default 1,000,000) with incidents, then
measures in this one run, each in a fresh child process:

* baseline: read the same file and ``orjson.loads`` every line (the floor any JSON pipeline pays); run first and
            again last, the ratios taking the faster of the two (the machine's speed drifts within a run);
* parse:    baseline + full validation into events (rules.events), no rules;
* replay:   ``rollguard replay`` with the whole rule catalogue loaded (validation, windows, sketches, drift
            detectors, rule evaluation, output files and report.md);
* light:    the same replay with the light pack of bench/light_rules.yaml (eight typical rules, one ADWIN drift);

and prints events/s, the ratio replay / baseline, and each child's peak RSS. ``--stages`` runs some of them (the
baseline always runs: every ratio is against it, measured in the same run). ``--profile DIR`` samples the replay
stages with py-spy (``bench/profile_kit.py``) and prints where the CPU time per event goes, by component and by
function (start-up included: imports are part of what a replay costs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "data"
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/detectors.py must not shadow the package
import profile_kit  # noqa: E402 - bench/ is not a package

# own time by where the code lives, for a replay (first match wins)
PROFILE_GROUPS = (
    ("reading lines, replay loop, outputs (streams/offline/)", ("/streams/",)),
    ("decoding + validating into rows (or Events) (rules/events.py, decode.py, timestamps.py)",
     ("rules/events.py", "rules/decode.py", "rules/timestamps.py")),
    ("per-event bookkeeping: clocks, late, duplicates, watermarks (rules/engine.py, clock.py)",
     ("rules/engine.py", "rules/clock.py")),
    ("runs: grouping, group counters (rules/batch.py, aggregate.py)", ("rules/batch.py", "rules/aggregate.py")),
    ("drift detectors (detectors/, river)", ("/detectors/", "/river/")),
    ("windows, sketches, rule evaluation, lifecycle, outputs (rules/)", ("/rules/",)),
    ("imports at start-up", ("<frozen importlib", "scipy", "textwrap.py", "inspect.py", "dataclasses.py", "typing.py")),
)  # fmt: skip


def _scenario_file(min_events: int) -> Path:
    from streams.offline.scenario import Incident, generate, scenario_from_args, write_jsonl

    days = 2
    path = DATA / f"scenario-{min_events}.jsonl"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rate = 6.0
    while True:
        base = scenario_from_args("clean", duration_ms=days * 86_400_000, mean_rate_per_s=rate, seed=11)
        incidents = (
            Incident("latency_spike", base.start + 86_400_000 + 14 * 3_600_000, 3_600_000, 3.0),
            Incident("pii_leak", base.start + 30 * 3_600_000, 1_800_000, 0.01),
        )
        scenario = dataclasses.replace(base, incidents=incidents)
        tmp = path.with_suffix(".tmp")
        n = write_jsonl(generate(scenario), tmp)
        if n >= min_events:
            tmp.rename(path)
            return path
        rate *= min_events / n * 1.05


def _child(mode: str, path: str) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    if mode == "baseline":
        import orjson

        with open(path, "rb") as f:
            for line in f:
                orjson.loads(line)
                n += 1
    elif mode == "parse":
        from rules.events import EventParser, Pseudonymizer

        p = EventParser(Pseudonymizer(b"bench"))
        with open(path, "rb") as f:
            for line in f:
                for _ in p.parse_message(line):
                    n += 1
    else:
        from rules.loader import CATALOG, load_rules
        from streams.offline.replay import replay
        from streams.settings import Settings

        from streams.runtime import tune_gc

        rulesets = load_rules([CATALOG] if mode == "replay" else [ROOT / "bench" / "light_rules.yaml"])
        s = Settings()
        tune_gc()  # as `rollguard replay` does (streams.cli.cmd_replay)
        with tempfile.TemporaryDirectory() as out:
            res = replay(rulesets, [path], out, config=s.engine_config(), user_key=b"bench", progress=False)
            n = res.events_read
            extra = dict(res.counts)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"events": n, "seconds": dt, "cpu_seconds": cpu, "rss_mb": rss}
    if mode in ("replay", "light"):
        out["outputs"] = extra
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--stages", default="baseline,parse,replay,light",
                    help="comma-separated: baseline, parse, replay, light")
    ap.add_argument("--profile", metavar="DIR", help="sample the replay stages with py-spy; print CPU us per event "
                    "by component and function")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    asked = set(args.stages.split(","))
    known = {"baseline", "parse", "replay", "light"}
    if asked - known:
        ap.error(f"--stages: unknown {sorted(asked - known)}")
    # the baseline runs first and again last: the machine's speed drifts (orjson ran at 0.59-1.08M lines/s on
    # different runs), and every ratio uses the faster of the two, so a slow spell during the baseline never
    # flatters a ratio
    stages = ["baseline"] + [s for s in ("parse", "replay", "light") if s in asked] + ["baseline again"]
    if args.child:
        _child(*args.child)
        return
    path = _scenario_file(args.events)
    size = os.path.getsize(path)
    print(f"input: {path.relative_to(ROOT)}  ({size / 1e6:.0f} MB)")
    results = {}
    profdir = Path(args.profile) if args.profile else None
    if profdir:
        profdir.mkdir(parents=True, exist_ok=True)
    for mode in stages:
        child = "baseline" if mode == "baseline again" else mode
        proc = subprocess.Popen([sys.executable, __file__, "--child", child, str(path)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        spy = profile_kit.start(proc.pid, profdir / f"{mode}.txt") if profdir and mode in ("replay", "light") else None
        stdout, _ = proc.communicate()
        if spy is not None:
            profile_kit.finish(spy)
        if proc.returncode:
            raise SystemExit(f"stage {mode} failed (exit {proc.returncode})")
        results[mode] = json.loads(stdout.strip().splitlines()[-1])
    bases = [results[b] for b in ("baseline", "baseline again")]
    base = max(r["events"] / r["seconds"] for r in bases)
    base_cpu = max(r["events"] / r["cpu_seconds"] for r in bases)
    # on a shared machine wall time swings with the neighbours' load; CPU time much less (the last two columns)
    print(f"{'stage':<14} {'events':>10} {'seconds':>8} {'events/s':>11} {'vs orjson':>9} {'peak RSS':>9} "
          f"{'CPU s':>7} {'vs orjson (CPU)':>15}")  # fmt: skip
    for mode, r in results.items():
        rate = r["events"] / r["seconds"]
        cpu_rate = r["events"] / r["cpu_seconds"]
        print(f"{mode:<14} {r['events']:>10,} {r['seconds']:>8.2f} {rate:>11,.0f} {rate / base:>9.3f} "
              f"{r['rss_mb']:>7.0f} MB {r['cpu_seconds']:>7.2f} {cpu_rate / base_cpu:>15.3f}")  # fmt: skip
    print(f"vs orjson: over the faster baseline run ({base:,.0f} lines/s; CPU: {base_cpu:,.0f} lines per CPU second)")
    if "replay" in results:
        print(f"replay outputs: {results['replay'].get('outputs')}")
        ratio = (results["replay"]["events"] / results["replay"]["seconds"]) / base
        print(f"ratio replay/orjson = {ratio:.3f} (aim >= 0.25)")
    if "light" in results:
        ratio = (results["light"]["events"] / results["light"]["seconds"]) / base
        print(f"ratio light/orjson = {ratio:.3f} (aim >= 0.5)")
    for mode in ("replay", "light"):
        if profdir and mode in results and (profdir / f"{mode}.txt").exists():
            label = "replay, whole catalogue" if mode == "replay" else "replay, light pack"
            profile_kit.report(profdir / f"{mode}.txt", results[mode]["events"], label, groups_by=PROFILE_GROUPS)


if __name__ == "__main__":
    main()
