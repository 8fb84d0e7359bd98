"""Deployment sizing (not a test): ``./dev bench sizing [--quick]`` measures what a deployment needs per feature.

Redis memory is *measured*: generated traffic (``streams.offline.scenario``, preset ``clean``) goes through the live
worker's own batch path — ``streams.live.processor.Processor``: parse, ``rules.engine.Engine.step`` with the bundled
catalogue, ``streams.live.store.RedisStore.commit`` — into a real ``redis-server`` (the embedded one, AOF on,
``noeviction``), and then every key is weighed with ``MEMORY USAGE key SAMPLES 0`` (exact) next to the server's
``used_memory`` delta. Outputs go to a publisher that drops them: only state is sized here. Five parts:

1. *features*: 1, 10 and 50 features with a few hours of traffic each, in one Redis: is the cost per feature
   constant (no hidden per-key or cross-feature overhead)?
2. *rates*: one feature, one day of traffic, at several rates: what one window bucket of each store weighs (in
   the binary bucket format, ``rules.aggregate.Bucket.to_bytes``). The sketches saturate (a HyperLogLog is exact
   up to 1,024 users at 8 bytes each, then ~1 byte per non-zero register, at most 16 KiB; a DDSketch has one bin
   per 1 % of the latency range actually seen, at most ~1,100 for 1 ms .. 60 s, ~2 bytes each), so a bucket grows
   ever more slowly with the rate.
3. *steady state*: one feature for the catalogue's longest retention plus a day, measured; and the steady state
   projected for every rate of part 2 (measured bucket sizes × the number of buckets the retention keeps), whose
   error against the measured run is printed. *experiment*: the same feature with and without a 10 % model upgrade
   (events tagged ``variant``) for a week and a day: what the ``experiments`` pack's arm stores add while it runs
   (``--only-experiment`` runs just this).
4. *worker heap*: the Python memory (``tracemalloc``) a worker holds per feature once it has loaded the state;
5. *idle worker*: the RSS of a real ``rollguard worker`` on the embedded broker and Redis before it holds a feature
   (``--no-worker`` skips it, ``--only-worker`` runs only it).

Worker throughput is not measured here: ``bench/worker.py`` does that (its latest figures are quoted from the
README, see ``WORKER_EVENTS_PER_S``); partitions guidance follows from it and from co-partitioning.

``--json FILE`` also writes every number. Nothing here touches a configured Kafka or Redis. A full run took ~10 min
on the 2-core development machine in 2026-12 (the 22-day steady run is most of it); ``--quick`` is a 1-minute smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from rules.engine import Engine  # noqa: E402
from rules.events import EventParser, Pseudonymizer  # noqa: E402
from rules.loader import CATALOG, load_rules  # noqa: E402
from rules.plan import Plan, StoreSpec  # noqa: E402
from rules.state import US, FeatureState  # noqa: E402
from streams.live.embedded import EmbeddedStack  # noqa: E402
from streams.live.processor import Message, Processor  # noqa: E402
from streams.offline.scenario import scenario_from_args  # noqa: E402
from streams.offline.scenario import generate as generate_scenario  # noqa: E402
from streams.live.store import RedisStore, redis_client  # noqa: E402
from streams.kafka.topics import Topics  # noqa: E402

DAY_MS = 86_400_000
PHASE = "closed_beta"
PARTITIONS = 4
BATCH = 2000  # messages per processed batch, the worker's ROLLGUARD_BATCH_MAX default
DETECTOR_KEY = b"sizing-state-key-0123456789abcdef"
USER_KEY = b"sizing-user-key-0123456789abcdef"

# Latest bench/worker.py run on the 2-core development machine (README, "Performance", 2026-12-06): events/s one
# worker process sustains with the whole catalogue. Quoted, not re-measured: run `./dev bench worker` on your hardware.
WORKER_EVENTS_PER_S = {"single-event messages": 12_333, "envelopes of 100 events": 88_824}


@dataclass(frozen=True)
class Profile:
    """A kind of feature: which rule sets of the catalogue apply to it decides its stores and rules."""

    name: str
    feature: str  # feature name, or a prefix numbered per feature when several are generated
    treatment_share: float = 0.0  # a model upgrade on this share of traffic (the catalogue's experiments pack)

    def features(self, n: int) -> list[str]:
        if not self.feature.endswith("-"):  # one named feature (its rule sets name it)
            return [self.feature]
        return [f"{self.feature}{i:03d}" for i in range(n)]


GENERIC = Profile("generic (rule sets for every feature)", "feature-")
EXPERIMENT = Profile("generic, running a 10 % model upgrade", "feature-", 0.10)
EMAIL_REPLY = Profile("email-reply closed_beta (+ its launch runbook)", "email-reply")


# --- pure: what a steady state holds ---------------------------------------------------------------------------


def steady_buckets(spec: StoreSpec) -> int:
    """Buckets one series of a store holds once traffic has run longer than its retention: the engine keeps every
    bucket starting at or after ``watermark - retention - every`` (``Engine._expire``), plus the open one."""
    return spec.retention_ms // spec.every_ms + 1


@dataclass
class StoreSize:
    name: str  # the store's persisted name: "every_ms:segment keys"
    series: int = 0  # (phase, segment values) combinations seen
    buckets: int = 0
    value_bytes: int = 0  # serialised bucket values (HSTRLEN)

    @property
    def per_bucket(self) -> float:
        return self.value_bytes / self.buckets if self.buckets else 0.0


@dataclass
class Footprint:
    """What one Redis holds for the features of a run."""

    key_bytes: int  # sum of MEMORY USAGE over every key of the namespace
    used_memory_delta: int  # INFO memory used_memory after - before (adds allocator and server overhead)
    core_key_bytes: int  # MEMORY USAGE of the features' core hashes
    bucket_key_bytes: int  # MEMORY USAGE of the features' bucket hashes
    stores: dict[str, StoreSize] = field(default_factory=dict)

    def bucket_overhead(self) -> float:
        """MEMORY USAGE of the bucket hashes over their serialised values (field names, hash encoding)."""
        raw = sum(s.value_bytes for s in self.stores.values())
        return self.bucket_key_bytes / raw if raw else 1.0


def project_steady(fp: Footprint, features: int, plan: Plan) -> int:
    """Steady-state bytes per feature: the measured core, plus per store the measured mean bucket (with the
    measured hash overhead) times the buckets its retention keeps, for the series the run saw."""
    by_name = {plan.store_names[s.id]: s for s in plan.stores.values()}
    overhead = fp.bucket_overhead()
    buckets = sum(size.per_bucket * steady_buckets(by_name[name]) * size.series / features
                  for name, size in fp.stores.items())  # fmt: skip
    return round(fp.core_key_bytes / features + buckets * overhead)


def workers_for(events_per_s: float, per_worker: float, headroom: float = 0.5) -> int:
    """Workers to run ``events_per_s`` with each at most ``1 - headroom`` busy (catch-up after a restart or a
    rebalance needs the spare capacity), and never fewer than two (one may be down)."""
    return max(2, math.ceil(events_per_s / (per_worker * (1 - headroom))))


def partitions_for(workers: int, growth: int = 2) -> int:
    """Input partitions: at least the workers planned times ``growth`` (partitions bound the consumer group and
    are not cheaply changed: adding some moves features between partitions), rounded up to a power of two."""
    return 1 << max(0, math.ceil(math.log2(max(1, workers * growth))))


# --- I/O: traffic through the worker's batch path into a real Redis ---------------------------------------------


class _DropPublisher:
    """Outputs are not what is sized here; they go nowhere."""

    async def publish(self, records) -> None:
        return None


def traffic(feature: str, seed: int, rate: float, duration_ms: int, treatment_share: float = 0.0) -> Iterator[dict]:
    return generate_scenario(scenario_from_args("clean", feature=feature, phase=PHASE, seed=seed,
                                                mean_rate_per_s=rate, duration_ms=duration_ms,
                                                treatment_share=treatment_share))  # fmt: skip


async def feed(proc: Processor, features: list[str], rate: float, duration_ms: int,
               treatment_share: float = 0.0) -> int:  # fmt: skip
    """Every feature's traffic through ``proc`` in batches of ``BATCH`` messages (one event per message, keyed by
    feature onto one of ``PARTITIONS`` partitions); returns the events processed."""
    topics = proc.topics
    offsets: dict[tuple[str, int], int] = {}
    n = 0
    for i, feature in enumerate(features):
        events = traffic(feature, 101 + i, rate, duration_ms, treatment_share)
        part = i % PARTITIONS
        while chunk := list(itertools.islice(events, BATCH)):
            msgs = []
            for e in chunk:
                topic = topics.interactions if e["type"] == "interaction" else topics.feedback
                off = offsets[(topic, part)] = offsets.get((topic, part), -1) + 1
                msgs.append(Message(topic, part, off, orjson.dumps(e)))
            await proc.process(msgs)
            n += len(chunk)
    return n


def weigh(r, store: RedisStore, features: list[str], used_before: int) -> Footprint:
    """Every key of the namespace by ``MEMORY USAGE`` (exact), and each bucket field by its value length."""
    key_bytes = sum(r.memory_usage(k, samples=0) or 0 for k in r.scan_iter(match=f"{store.ns}:*", count=1000))
    core = sum(r.memory_usage(store.core_key(f), samples=0) or 0 for f in features)
    buckets = sum(r.memory_usage(store.buckets_key(f), samples=0) or 0 for f in features)
    stores: dict[str, StoreSize] = {}
    for f in features:
        series: dict[str, set] = {}
        for name, value in r.hscan_iter(store.buckets_key(f), count=1000):
            sk, phase, _start, *seg = name.decode().split(US)
            size = stores.setdefault(sk, StoreSize(sk))
            size.buckets += 1
            size.value_bytes += len(value)
            series.setdefault(sk, set()).add((phase, *seg))
        for sk, s in series.items():
            stores[sk].series += len(s)
    used = r.info("memory")["used_memory"] - used_before
    return Footprint(key_bytes, used, core, buckets, dict(sorted(stores.items())))


@dataclass
class Run:
    part: str
    profile: str
    features: int
    rate: float  # mean interactions/s per feature (feedback comes on top)
    days: float
    rules_per_feature: int
    events: int
    seconds: float
    footprint: Footprint
    heap_per_feature: int  # tracemalloc bytes a worker holds per loaded feature

    @property
    def per_feature(self) -> int:
        return round(self.footprint.key_bytes / self.features)

    @property
    def per_feature_rule(self) -> int:
        return round(self.per_feature / self.rules_per_feature)


async def run(redis_url: str, plan: Plan, profile: Profile, part: str, n: int, rate: float, days: float) -> Run:
    import redis

    sync = redis.Redis.from_url(redis_url)
    sync.flushall()
    gc.collect()
    used_before = sync.info("memory")["used_memory"]
    client = redis_client(redis_url)
    store = RedisStore(client, f"sizing{n}")
    try:
        await store.check()  # the worker's own refusal of an evicting Redis
        engine = Engine(plan)
        proc = Processor(engine, store, EventParser(Pseudonymizer(USER_KEY)), _DropPublisher(), topics=Topics(),
                         detector_key=DETECTOR_KEY, clock=lambda: 0.0)  # fmt: skip
        features = profile.features(n)
        t0 = time.perf_counter()
        events = await feed(proc, features, rate, int(days * DAY_MS), profile.treatment_share)
        seconds = time.perf_counter() - t0
        fp = weigh(sync, store, features, used_before)
        proc.forget(set(features))
        del proc, engine
        heap = await loaded_heap(store, plan, features)
    finally:
        await client.aclose()
        sync.close()
    fplan = plan.for_feature(features[0], PHASE)
    return Run(part, profile.name, n, rate, days, len(fplan.metric_rules) + len(fplan.drift_rules), events, seconds,
               fp, heap)  # fmt: skip


async def loaded_heap(store: RedisStore, plan: Plan, features: list[str]) -> int:
    """Python heap per feature of the state a worker loads on taking a partition over (``Processor._ensure_loaded``)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        records = await store.load(features)
        held = {f: FeatureState.from_parts(r.core, r.buckets, plan, DETECTOR_KEY, r.ids) for f, r in records.items()}
        del records
        gc.collect()
        size = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del held
    return round(size / len(features))


def idle_worker_rss(timeout_s: float = 120.0) -> int:
    """RSS of a real ``rollguard worker`` (catalogue loaded, Faust started, partitions assigned, no traffic) on the
    embedded broker and Redis: the memory a worker needs before it holds any feature."""
    import os
    import signal
    import subprocess
    import urllib.error
    import urllib.request

    from streams.live.embedded import free_port

    tmp = Path(tempfile.mkdtemp(prefix="rollguard-sizing-worker-"))
    stack = EmbeddedStack(workdir=tmp)
    port = free_port()
    proc = None
    try:
        stack.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
        env |= {"ROLLGUARD_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "ROLLGUARD_REDIS_URL": stack.redis_url,
                "ROLLGUARD_METRICS_PORT": str(port), "ROLLGUARD_USER_KEY": USER_KEY.decode()}  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--create-topics"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        else:
            raise RuntimeError("the worker did not become ready")
        time.sleep(5)  # settle after the first assignment
        with open(f"/proc/{proc.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# --- report ------------------------------------------------------------------------------------------------------


def kb(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def duration(ms: int) -> str:
    for unit, n in (("d", DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"


def store_label(spec: StoreSpec) -> str:
    return f"every {duration(spec.every_ms)}" + (f" by {', '.join(spec.keys)}" if spec.keys else "")


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report(runs: list[Run], plan: Plan, redis_version: str, worker_rss: int | None = None) -> str:
    out = [f"rollguard sizing — {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, redis-server "
           f"{redis_version}, catalogue {len(plan.rules)} rules, phase {PHASE}"]  # fmt: skip
    rows = [[r.part, r.profile, str(r.features), f"{r.rate:g}", f"{r.days:g}", str(r.rules_per_feature),
             f"{r.events:,}", f"{r.events / r.seconds:,.0f}", kb(r.footprint.key_bytes), kb(r.footprint.used_memory_delta),
             kb(r.per_feature), kb(r.per_feature_rule), kb(r.heap_per_feature)] for r in runs]  # fmt: skip
    if rows:
        out += ["", "Measured (MEMORY USAGE of every key; used_memory delta for comparison):", "", table(["part", "profile", "features", "interactions/s per feature", "days", "rules per feature", "events",
                "events/s (this bench)", "Redis keys", "used_memory delta", "per feature", "per feature × rule",
                "worker heap per feature"], rows)]  # fmt: skip
    exp = {r.profile: r for r in runs if r.part == "experiment"}
    if EXPERIMENT.name in exp and GENERIC.name in exp:
        with_, without = exp[EXPERIMENT.name], exp[GENERIC.name]
        extra = with_.per_feature - without.per_feature
        arms = {name: size for name, size in with_.footprint.stores.items() if "arm" in name}
        out += ["", f"An experiment's cost ({with_.days:g} days at {with_.rate:g} interactions/s, 10 % on the upgrade):"
                f" {kb(with_.per_feature)} per feature against {kb(without.per_feature)} without, {kb(extra)} more;"
                " arm stores: " + ", ".join(f"{n} {s.buckets} buckets, {kb(s.value_bytes)}" for n, s in arms.items())]
    steady = [r for r in runs if r.part == "steady"]
    if steady:
        s = steady[0]
        names = {plan.store_names[x.id]: x for x in plan.stores.values()}
        rows = [[store_label(names[name]), duration(names[name].retention_ms), str(size.series // s.features),
                 str(size.buckets // s.features), str(steady_buckets(names[name]) * size.series // s.features),
                 f"{size.per_bucket:,.0f} B", kb(size.value_bytes / s.features)]
                for name, size in s.footprint.stores.items()]  # fmt: skip
        out += ["", f"Steady state by store ({s.profile}, {s.rate:g} interactions/s, {s.days:g} days; a store's "
                "retention is the longest window + baseline of any rule in any rule set that shares its `every` "
                "and group keys):", "",
                table(["store", "retention", "series", "buckets held", "expected",
                       "mean bucket", "values per feature"], rows)]  # fmt: skip
    proj = []
    for r in runs:
        if r.part != "rates":
            continue
        p = project_steady(r.footprint, r.features, plan)
        check = next((s for s in steady if s.profile == r.profile and s.rate == r.rate
                      and s.days * DAY_MS > longest_retention(plan)), None)  # fmt: skip
        err = f"{(p - check.per_feature) / check.per_feature:+.1%} vs measured {kb(check.per_feature)}" if check else ""
        proj.append([r.profile, f"{r.rate:g}", str(r.rules_per_feature), kb(p), kb(p / r.rules_per_feature), err])
    if proj:
        out += ["", "Steady state per feature, projected from part 'rates' (measured bucket sizes × buckets kept):", "",
                table(["profile", "interactions/s per feature", "rules", "Redis per feature", "per feature × rule",
                       "projection check"], proj)]  # fmt: skip
    if worker_rss is not None:
        out += ["", f"Idle worker (catalogue loaded, partitions assigned, no feature held): RSS {kb(worker_rss)}. "
                "A worker needs that plus 'worker heap per feature' for each feature of its partitions."]
    rows = []
    for kind, per in WORKER_EVENTS_PER_S.items():
        for load in (1_000, 5_000, 20_000):
            w = workers_for(load, per)
            rows.append([kind, f"{per:,}", f"{load:,}", str(w), str(partitions_for(w))])
    out += ["", "Workers and input partitions (events/s per worker quoted from bench/worker.py, README; 50% headroom,"
            " at least 2 workers; partitions = power of two ≥ 2 × workers, the same for interactions and feedback):",
            "",
            table(["messages", "events/s per worker", "peak events/s", "workers", "partitions"], rows)]  # fmt: skip
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------------------------------


def longest_retention(plan: Plan) -> int:
    return max(s.retention_ms for s in plan.stores.values())


def plan_runs(args: argparse.Namespace, plan: Plan) -> list[tuple[str, Profile, int, float, float]]:
    steady_days = args.steady_days or math.ceil(longest_retention(plan) / DAY_MS) + 1
    runs = [("features", GENERIC, n, args.sweep_rate, args.sweep_days) for n in args.features]
    runs += [("rates", GENERIC, 1, r, args.rate_days) for r in args.rates]
    runs += [("rates", EMAIL_REPLY, 1, r, args.rate_days) for r in args.email_reply_rates]
    runs += [("steady", GENERIC, 1, args.steady_rate, steady_days)]
    if args.experiment_days:  # the same feature with and without an experiment, over the experiment's week + 1 day
        runs += [("experiment", p, 1, args.steady_rate, args.experiment_days) for p in (GENERIC, EXPERIMENT)]
    if args.only_experiment:
        runs = [r for r in runs if r[0] == "experiment"]
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 50])
    ap.add_argument("--sweep-rate", type=float, default=0.2, help="interactions/s per feature in part 'features'")
    ap.add_argument("--sweep-days", type=float, default=0.25)
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[0.2, 1.0, 5.0])
    ap.add_argument("--email-reply-rates", type=lambda s: [float(x) for x in s.split(",") if x], default=[5.0])
    ap.add_argument("--rate-days", type=float, default=1.0)
    ap.add_argument("--steady-rate", type=float, default=1.0)
    ap.add_argument("--steady-days", type=float, default=0, help="default: the longest store retention + 1 day")
    ap.add_argument("--experiment-days", type=float, default=8.0,
                    help="part 'experiment': a feature with and without a 10 %% model upgrade this long (0: skip)")
    ap.add_argument("--only-experiment", action="store_true", help="only part 'experiment' (implies --no-worker)")
    ap.add_argument("--no-worker", action="store_true", help="skip the idle worker's RSS (starts broker + worker)")
    ap.add_argument("--only-worker", action="store_true", help="only the idle worker's RSS")
    ap.add_argument("--quick", action="store_true", help="a smoke run (~1 min): small sweep, short steady run")
    ap.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.features, args.sweep_days, args.rates, args.email_reply_rates = [1, 10], 0.1, [0.2], []
        args.steady_rate, args.steady_days, args.experiment_days = 0.2, 2, 1
    if args.only_experiment:
        args.no_worker = True
    plan = Plan(tuple(load_rules([str(CATALOG)])))
    tmp = Path(tempfile.mkdtemp(prefix="rollguard-sizing-"))
    stack = EmbeddedStack(workdir=tmp)
    runs: list[Run] = []
    rss = None if args.no_worker else idle_worker_rss()
    try:
        stack.start_redis()
        import redis

        version = redis.Redis.from_url(stack.redis_url).info("server")["redis_version"]
        for part, profile, n, rate, days in [] if args.only_worker else plan_runs(args, plan):
            print(f"sizing: {part}: {n} × {profile.feature}, {rate:g} interactions/s, {days:g} days …",
                  file=sys.stderr, flush=True)  # fmt: skip
            runs.append(asyncio.run(run(stack.redis_url, plan, profile, part, n, rate, days)))
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(runs, plan, version, rss))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": [asdict(r) | {"per_feature": r.per_feature} for r in runs],
                                               "idle_worker_rss": rss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
