"""Live worker benchmark (not a test): ``python bench/worker.py [--events N] [--quick]``.

Runs everything in one go on the local stack (the embedded tansu broker and redis-server, or the Kafka and Redis
of ``ROLLGUARD_KAFKA_BOOTSTRAP`` / ``ROLLGUARD_REDIS_URL`` when both are set) and prints:

* bare Faust:  events/s through a Faust agent that only counts (``bench/bare_agent.py``: same broker, same Faust
               settings, raw serializers, the worker's ``take_events`` batching; also a plain ``async for``);
* worker:      events/s through ``rollguard worker`` (bundled catalogue) on the same single-event messages, and on
               batch envelopes of ``--envelope`` events, with their ratios to the bare agent's message rate; and
               envelopes again with the light pack of ``bench/light_rules.yaml`` (eight typical rules) instead of
               the catalogue; these runs have metrics off (``ROLLGUARD_METRICS_PORT=0``);
* metrics:     the same two worker runs again with Prometheus metrics on and ``/metrics`` scraped every second by
               a thread of this process (``--scrape-every``), and their ratio to the runs without metrics (the
               issue's budget: metrics may cost at most 5 % of throughput); ``--no-metrics`` skips them;
* detection:   end-to-end latency (p50/p99) from producing an event to the rollback command being readable on the
               commands topic, with the worker running and caught up (``bench/latency_probe.py``).

Single-event messages are produced before their consumer starts (fresh topics and consumer group per run), and
the rate counts from the consumer's first processed batch (the bare agent's own clock; the worker's first Redis
commit, polled) to the last, which leaves the ~5 s group join and process start out. Envelopes are few messages (one
batch may hold them all), so the worker first gets the first envelope of every topic/feature and, once it has
committed those (joined, state loaded), the rest is sent at once and timed from the start of sending to the last
commit. ``--profile DIR`` samples the timed spans with py-spy and prints where the CPU time per event goes.
``ROLLGUARD_*`` settings in the environment (e.g. ``ROLLGUARD_BATCH_WITHIN=500ms``) reach every child process.

Other helpers in bench/: ``bare_agent.py`` (the bare Faust agent), ``latency_probe.py`` (detection latency),
``latency_rules.yaml`` (its fast kill rule), ``profile_kit.py`` (py-spy sampling and the per-event breakdown).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH = ROOT / "bench"

import profile_kit  # noqa: E402 - bench/ is the script's folder

# features spread over the 4 input partitions (murmur2 of the key, as every Kafka client partitions)
FEATURES = ("email-reply", "chat-assist", "summarize", "search-answer")
PARTITIONS = 4
USER_KEY = "bench-user-key-0123456789"


# --- input ----------------------------------------------------------------------------------------------------


def generate_events(n: int, rate: float) -> list[dict]:
    """``n`` events of the "clean" scenario for the 4 features (``rate`` interactions/s each, weekday business
    hours), merged in event-time order."""
    from streams.offline.scenario import generate, scenario_from_args

    per = -(-n // len(FEATURES))
    start = 1_793_577_600_000 + 15 * 3_600_000  # 10:00 local time of the scenario: daytime traffic
    streams = [
        itertools.islice(generate(scenario_from_args("clean", feature=f, seed=11 + i, start=start,
                                                     duration_ms=7 * 86_400_000, mean_rate_per_s=rate)), per)
        for i, f in enumerate(FEATURES)
    ]  # fmt: skip
    return list(itertools.islice(heapq.merge(*streams, key=lambda e: e["ts"]), n))


def messages(topics, events: list[dict], envelope: int = 1) -> list[tuple[str, bytes, bytes, int]]:
    """Kafka messages ``(topic, key, value, events in it)`` keyed by feature: one event each, or envelopes of
    ``envelope`` events per topic and feature."""
    import orjson

    out: list[tuple[str, bytes, bytes, int]] = []
    buf: dict[tuple[str, str], list] = {}
    for e in events:
        topic = topics.interactions if e["type"] == "interaction" else topics.feedback  # eval runs: feedback
        if envelope == 1:
            out.append((topic, e["feature"].encode(), orjson.dumps(e), 1))
            continue
        k = (topic, e["feature"])
        buf.setdefault(k, []).append(e)
        if len(buf[k]) >= envelope:
            out.append((topic, e["feature"].encode(), orjson.dumps(buf.pop(k)), envelope))
    for (topic, feature), evs in buf.items():
        out.append((topic, feature.encode(), orjson.dumps(evs), len(evs)))
    return out


def produce(bootstrap: str, msgs: list[tuple[str, bytes, bytes, int]]) -> dict[str, int]:
    """Send ``msgs`` in order and wait for the broker; returns the last offset per "topic:partition"."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, acks=1,
                      max_request_size=8 << 20)  # fmt: skip
    last: dict[str, int] = {}

    def done(md) -> None:
        tp = f"{md.topic}:{md.partition}"
        last[tp] = max(last.get(tp, -1), md.offset)

    for topic, key, value, _ in msgs:
        p.send(topic, key=key, value=value).add_callback(done)
    p.flush()
    p.close()
    return last


def split_warmup(msgs: list[tuple[str, bytes, bytes, int]]) -> tuple[list, list]:
    """The first message of every (topic, feature), and the rest."""
    firsts: set[tuple[str, bytes]] = set()
    warm, rest = [], []
    for m in msgs:
        k = (m[0], m[1])
        (rest if k in firsts else warm).append(m)
        firsts.add(k)
    return warm, rest


# --- children -------------------------------------------------------------------------------------------------


def child_env(stack, prefix: str, app_id: str, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        ROLLGUARD_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        ROLLGUARD_REDIS_URL=stack.redis_url,
        ROLLGUARD_TOPIC_PREFIX=prefix,
        ROLLGUARD_APP_ID=app_id,
        ROLLGUARD_STATE_NAMESPACE=app_id,
        ROLLGUARD_IDLE_AFTER="off",
        ROLLGUARD_USER_KEY=USER_KEY,
        ROLLGUARD_SESSION_TIMEOUT_S="6",
        ROLLGUARD_PARTITIONS=str(PARTITIONS),
    )
    if "ROLLGUARD_METRICS_PORT" not in os.environ:  # no endpoint unless a run asks for one (no port clashes)
        env["ROLLGUARD_METRICS_PORT"] = "0"
    env.update({f"ROLLGUARD_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scraper:
    """GET ``/metrics`` every ``every`` seconds from a thread (as Prometheus would), timing each answer."""

    def __init__(self, port: int, every: float) -> None:
        import threading

        self.url, self.every = f"http://127.0.0.1:{port}/metrics", every
        self.durations: list[float] = []
        self.sizes: list[int] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(self.every):
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as r:
                    body = r.read()
            except OSError:  # not listening yet (worker starting)
                self.errors += 1
                continue
            self.durations.append(time.perf_counter() - t0)
            self.sizes.append(len(body))
            self.last = body

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(15)
        series = sum(1 for line in getattr(self, "last", b"").splitlines() if line and not line.startswith(b"#"))
        d = sorted(self.durations)
        return {"scrapes": len(d), "scrape_ms_p50": d[len(d) // 2] * 1000 if d else float("nan"),
                "scrape_ms_max": d[-1] * 1000 if d else float("nan"), "body_kb": (self.sizes[-1] if d else 0) / 1024,
                "series": series}  # fmt: skip


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "streams.cli", "worker"]


def run_bare(stack, prefix: str, messages: int, mode: str, logdir: Path, timeout: float,
             profile: Path | None = None) -> dict:  # fmt: skip
    out = logdir / f"bare-{mode}.json"
    first = out.with_suffix(".first")
    out.unlink(missing_ok=True)
    first.unlink(missing_ok=True)
    env = child_env(stack, prefix, f"{prefix}bare-{mode}")
    env["BENCH_MODE"], env["BENCH_EXPECT"], env["BENCH_OUT"] = mode, str(messages), str(out)
    spy = None
    with open(logdir / f"bare-{mode}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(BENCH / "bare_agent.py")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        t0 = time.time()
        try:
            while not out.exists():
                if proc.poll() is not None or time.time() - t0 > timeout:
                    raise SystemExit(f"bare agent ({mode}) failed or timed out; log: {logdir / log.name}")
                if profile and spy is None and first.exists():
                    spy = profile_kit.start(proc.pid, profile)
                time.sleep(0.01)
        finally:
            if spy is not None:
                profile_kit.finish(spy)
            stop(proc)
    r = json.loads(out.read_text())
    n = r["n_last"] - r["n_first"]
    return {"messages": n, "events": n, "seconds": r["t_last"] - r["t_first"], "startup": r["t_first"] - t0,
            "cpu": r["cpu_last"] - r["cpu_first"]}  # fmt: skip


def batches_so_far(r) -> int:
    """Batches the workers on this Redis processed: the processor reads the kill breaker (one HGETALL) per batch;
    feature state is loaded with HGETALL too, but only on a feature's first batch, before the timed span."""
    return int(r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def run_worker(stack, prefix: str, msgs: list, name: str, logdir: Path, timeout: float, *,
               produced: dict[str, int] | None = None, profile: Path | None = None,
               scrape_every: float | None = None, rules: Path | None = None) -> dict:  # fmt: skip
    """``rollguard worker`` on fresh topics, timed by polling the partition offsets it commits to Redis.
    ``scrape_every``: metrics on, ``/metrics`` scraped at that interval for the whole run (else metrics off).

    ``produced`` (the last offsets): the topics already hold ``msgs``; timed from the worker's first commit to the
    last. Otherwise a burst: the first message of every topic/feature is produced first; once the worker committed
    those (it is up, joined and has loaded its state), the rest is sent at once and timed from the start of sending
    to the last commit — for envelopes, whose few messages may all fit in one batch."""
    import redis

    app_id = f"{prefix}{name}"
    burst = produced is None
    warm, rest = split_warmup(msgs) if burst else ([], msgs)
    last = produce(stack.kafka_bootstrap, warm) if burst else produced
    r = redis.Redis.from_url(stack.redis_url)
    port = free_port() if scrape_every else 0
    env = child_env(stack, prefix, app_id, METRICS_PORT=port, METRICS_HOST="127.0.0.1")
    if rules is not None:
        env["ROLLGUARD_RULES"] = str(rules)

    def poll(goal: dict[str, int]) -> tuple[float, int, list[int]]:
        tps = sorted(goal)
        vals = [int(v) if v is not None else -1 for v in r.mget([f"{app_id}:{{tp:{tp}}}" for tp in tps])]
        return time.time(), sum(v + 1 for v in vals), [v - goal[tp] for v, tp in zip(vals, tps)]

    with open(logdir / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(worker_argv(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.time()

        def wait(goal: dict[str, int], until) -> tuple[float, int, float]:
            while True:
                now, done, behind = poll(goal)
                if until(done, behind):
                    return now, done, cpu_seconds(proc.pid)
                if proc.poll() is not None or now - t0 > timeout:
                    raise SystemExit(f"worker {name} failed or timed out ({done:,} messages done); log: "
                                     f"{logdir / log.name}")  # fmt: skip
                time.sleep(0.01)

        spy = None
        scraper = Scraper(port, scrape_every) if scrape_every else None
        scraped: dict = {}
        try:
            if burst:
                wait(last, lambda done, behind: min(behind) >= 0)
                startup = time.time() - t0
                spy = profile_kit.start(proc.pid, profile) if profile else None
                first = (time.time(), sum(v + 1 for v in last.values()), cpu_seconds(proc.pid))
                b0 = batches_so_far(r)
                last = produce(stack.kafka_bootstrap, rest)
                timed = rest
            else:
                first = wait(last, lambda done, behind: done > 0)
                b0 = batches_so_far(r)
                spy = profile_kit.start(proc.pid, profile) if profile else None
                startup = first[0] - t0
                timed = None
            end = wait(last, lambda done, behind: min(behind) >= 0)
            batches = batches_so_far(r) - b0
        finally:
            if spy is not None:
                profile_kit.finish(spy)
            if scraper is not None:
                scraped = scraper.stop()
            stop(proc)
            r.close()
    n_msgs = end[1] - first[1]
    n_events = sum(m[3] for m in timed) if timed is not None else n_msgs * sum(m[3] for m in msgs) / len(msgs)
    return {"messages": n_msgs, "events": n_events, "seconds": end[0] - first[0], "startup": startup,
            "cpu": end[2] - first[2], "batches": batches, **scraped}  # fmt: skip


# --- report ---------------------------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpus} CPUs ({model or platform.machine()}), Python {platform.python_version()}, {platform.system()}"


def rules_summary() -> str:
    from rules.loader import CATALOG, load_rules
    from rules.plan import Plan

    plan = Plan(load_rules([CATALOG]))
    parts = []
    for f in FEATURES:
        fp = plan.for_feature(f, "closed_beta")
        parts.append(f"{f} {len(fp.metric_rules) + len(fp.drift_rules)} ({len(fp.drift_rules)} drift)")
    return f"catalogue: {len(plan.rules)} rules; applying per feature/closed_beta: " + ", ".join(parts)


def report(res: dict[str, dict], envelope: int) -> None:
    labels = {"bare-take": "bare Faust agent, take_events", "bare-iter": "bare Faust agent, async for",
              "worker-single": "rollguard worker, single events",
              "worker-env": f"rollguard worker, envelopes of {envelope}",
              "light-env": f"  envelopes of {envelope}, light pack",
              "metrics-single": "  same, metrics on + scraped",
              "metrics-env": f"  envelopes of {envelope}, metrics + scraped"}  # fmt: skip
    rate = {k: r["events"] / r["seconds"] for k, r in res.items()}
    cpu_us = {k: r["cpu"] / r["events"] * 1e6 for k, r in res.items()}  # CPU microseconds per event
    bare, bare_cpu = rate["bare-take"], cpu_us["bare-take"]
    print(f"\n{'run':<36} {'messages':>9} {'seconds':>8} {'msg/s':>9} {'events/s':>9} {'vs bare':>8} {'CPU':>5} "
          f"{'CPU us/ev':>9} {'msgs/batch':>10}")  # fmt: skip
    for key, label in labels.items():
        if key not in res:
            continue
        r = res[key]
        batch = f"{r['messages'] / r['batches']:,.0f}" if r.get("batches") else "-"
        print(f"{label:<36} {r['messages']:>9,} {r['seconds']:>8.2f} {r['messages'] / r['seconds']:>9,.0f} "
              f"{rate[key]:>9,.0f} {rate[key] / bare:>7.2f}x {r['cpu'] / r['seconds']:>5.0%} {cpu_us[key]:>9.1f} "
              f"{batch:>10}")  # fmt: skip
    print("vs bare: events/s over the bare take_events agent's messages/s. CPU: the consumer process's CPU time over "
          "the timed span\n(below 100%: it waited — on Redis, broker acks, fetches — or other processes had the "
          "CPU). msgs/batch: from the\nworker's Redis commands (one breaker read per batch).")  # fmt: skip
    print(f"\n{'ratio':<52} {'wall clock':>10} {'CPU time':>9} {'aim':>6}")
    for label, key, aim in (("worker single-event messages / bare agent", "worker-single", 0.85),
                            ("worker envelopes events/s / bare messages/s", "worker-env", 10)):  # fmt: skip
        print(f"{label:<52} {rate[key] / bare:>10.2f} {bare_cpu / cpu_us[key]:>9.2f} {'>= ' + str(aim):>6}")
    for label, key, aim in (("envelopes, whole catalogue: events/s", "worker-env", 60_000),
                            ("envelopes, light pack: events/s", "light-env", 150_000)):  # fmt: skip
        if key in rate:
            print(f"{label:<52} {rate[key]:>10,.0f} {1e6 / cpu_us[key]:>9,.0f} {'>= ' + f'{aim // 1000}k':>6}")
    print("(CPU time: the same ratio from CPU time per event instead of wall-clock rates; steadier on a busy machine)")
    if "metrics-single" in res:
        head = f"metrics on, /metrics scraped every {res['metrics-single']['every']:g} s"
        print(f"\n{head:<52} {'wall clock':>10} {'CPU time':>9} {'aim':>6}   {'scrapes':>7} {'p50 ms':>6} "
              f"{'max ms':>6} {'KB':>5} {'samples':>7}")  # fmt: skip
        for label, key, base in (("single-event messages: metrics / no metrics", "metrics-single", "worker-single"),
                                 ("envelopes: metrics / no metrics", "metrics-env", "worker-env")):  # fmt: skip
            m = res[key]
            print(f"{label:<52} {rate[key] / rate[base]:>10.3f} {cpu_us[base] / cpu_us[key]:>9.3f} {'>= 0.95':>6}   "
                  f"{m['scrapes']:>7} {m['scrape_ms_p50']:>6.1f} {m['scrape_ms_max']:>6.1f} {m['body_kb']:>5.0f} "
                  f"{m['series']:>7}")  # fmt: skip
        wall = (rate["metrics-single"] / rate["worker-single"] * rate["metrics-env"] / rate["worker-env"]) ** 0.5
        cpu = (cpu_us["worker-single"] / cpu_us["metrics-single"]
               * cpu_us["worker-env"] / cpu_us["metrics-env"]) ** 0.5
        label = "both pairs (geometric mean: the A B B A order cancels)"
        print(f"{label:<52} {wall:>10.3f} {cpu:>9.3f} {'>= 0.95':>6}")
        print("(scrapes over the whole run, start-up included; p50/max: the scraper's round trip, which waits for the "
              "batch in progress;\nsamples: lines of the last scrape)")  # fmt: skip
    print(f"not timed: group join + start, bare {res['bare-take']['startup']:.1f}s, worker "
          f"{res['worker-single']['startup']:.1f}s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="events per throughput run (default 100,000)")
    ap.add_argument("--envelope", type=int, default=100, help="events per batch envelope (default 100)")
    ap.add_argument("--rate", type=float, default=10.0, help="mean interactions/s per feature, in event time (default 10)")
    ap.add_argument("--trials", type=int, default=30, help="detection-latency trials (default 30)")
    ap.add_argument("--quick", action="store_true", help="20,000 events, 10 trials, no plain async-for run")
    ap.add_argument("--no-latency", action="store_true", help="skip the detection-latency trials")
    ap.add_argument("--no-metrics", action="store_true", help="skip the two runs with metrics on and scraped")
    ap.add_argument("--scrape-every", type=float, default=1.0, metavar="S", help="scrape interval of the metrics "
                    "runs (default 1 s; Prometheus' usual is 15-60 s)")  # fmt: skip
    ap.add_argument("--profile", metavar="DIR", help="sample the worker runs with py-spy over their timed spans, "
                    "keep the raw stacks in DIR and print the CPU time per event by component and function")
    ap.add_argument("--logs", metavar="DIR", help="keep child logs here (default: a temporary folder)")
    args = ap.parse_args()
    if args.quick:
        args.events, args.trials = min(args.events, 20_000), min(args.trials, 10)
    from latency_probe import measure_latency

    from streams.live.embedded import EmbeddedStack
    from streams.kafka.topics import Topics, ensure_topics

    # the worker puts Faust's (unused) data dir under TMP/rollguard-faust/, but Faust does not create parents
    Path(tempfile.gettempdir(), "rollguard-faust").mkdir(exist_ok=True)
    logdir = Path(args.logs or tempfile.mkdtemp(prefix="rollguard-bench-"))
    logdir.mkdir(parents=True, exist_ok=True)
    profdir = Path(args.profile) if args.profile else None
    if profdir:
        profdir.mkdir(parents=True, exist_ok=True)
    prof = (lambda n: profdir / f"{n}.txt") if profdir else (lambda n: None)
    bootstrap, redis_url = os.environ.get("ROLLGUARD_KAFKA_BOOTSTRAP"), os.environ.get("ROLLGUARD_REDIS_URL")
    if bootstrap and redis_url:
        stack, started = argparse.Namespace(kafka_bootstrap=bootstrap, redis_url=redis_url), None
    else:
        stack = started = EmbeddedStack().start()
    run = f"bw{os.getpid()}-{int(time.time()) % 100_000}"
    timeout = 120 + args.events / 500
    t_start = time.time()
    res: dict[str, dict] = {}
    try:
        print(f"machine: {machine()}")
        print(f"stack:   {'external' if started is None else 'embedded (tansu + redis-server)'} "
              f"{stack.kafka_bootstrap} {stack.redis_url}; logs in {logdir}")  # fmt: skip
        print(rules_summary())
        events = generate_events(args.events, args.rate)
        span = (events[-1]["ts"] - events[0]["ts"]) / 60_000
        single, env, env_m = Topics(f"{run}-s."), Topics(f"{run}-e."), Topics(f"{run}-em.")
        for t in (single, env, env_m):
            ensure_topics(stack.kafka_bootstrap, t, PARTITIONS)
        single_msgs, env_msgs = messages(single, events), messages(env, events, args.envelope)
        t0 = time.time()
        last_single = produce(stack.kafka_bootstrap, single_msgs)
        print(f"input:   {len(events):,} events of {len(FEATURES)} features over {PARTITIONS} partitions, "
              f"{span:.0f} min of event time: {len(single_msgs):,} single-event messages (produced in "
              f"{time.time() - t0:.1f}s before the consumers start), {len(env_msgs):,} envelopes of <= "
              f"{args.envelope}")  # fmt: skip
        for mode in ("take",) if args.quick else ("take", "iter"):
            res[f"bare-{mode}"] = run_bare(stack, single.prefix, len(single_msgs), mode, logdir, timeout,
                                           profile=prof(f"bare-{mode}") if mode == "take" else None)  # fmt: skip
        # order A B B A (no metrics, metrics, metrics, no metrics): whatever drifts during the bench (a warming
        # broker, other load) favours metrics in one pair and its absence in the other
        every = args.scrape_every
        res["worker-single"] = run_worker(stack, single.prefix, single_msgs, "worker-single", logdir, timeout,
                                          produced=last_single, profile=prof("worker-single"))  # fmt: skip
        if not args.no_metrics:
            # a new consumer group on the same single-event topics; new topics for the envelopes (a burst run
            # produces its own input)
            res["metrics-single"] = run_worker(stack, single.prefix, single_msgs, "metrics-single", logdir, timeout,
                                               produced=last_single, scrape_every=every)  # fmt: skip
            res["metrics-env"] = run_worker(stack, env_m.prefix, messages(env_m, events, args.envelope),
                                            "metrics-env", logdir, timeout, scrape_every=every)  # fmt: skip
            for k in ("metrics-single", "metrics-env"):
                res[k]["every"] = every
        res["worker-env"] = run_worker(stack, env.prefix, env_msgs, "worker-env", logdir, timeout,
                                       profile=prof("worker-env"))  # fmt: skip
        env_l = Topics(f"{run}-el.")
        ensure_topics(stack.kafka_bootstrap, env_l, PARTITIONS)
        res["light-env"] = run_worker(stack, env_l.prefix, messages(env_l, events, args.envelope), "light-env", logdir,
                                      timeout, profile=prof("light-env"), rules=BENCH / "light_rules.yaml")  # fmt: skip
        lat = None
        if not args.no_latency:
            lat = measure_latency(stack, Topics(f"{run}-l."), child_env, worker_argv(), logdir, args.trials)
    finally:
        if started is not None:
            started.stop()
        for d in Path(tempfile.gettempdir(), "rollguard-faust").glob(f"{run}-*"):
            shutil.rmtree(d, ignore_errors=True)
    report(res, args.envelope)
    if lat is not None:
        lat.print()
    print(f"\ntotal bench time {time.time() - t_start:.0f}s")
    if profdir:
        profile_kit.report(profdir / "bare-take.txt", res["bare-take"]["events"], "bare agent (take_events)")
        profile_kit.report(profdir / "worker-single.txt", res["worker-single"]["events"], "worker, single events")
        profile_kit.report(profdir / "worker-env.txt", res["worker-env"]["events"], "worker, envelopes")
        profile_kit.report(profdir / "light-env.txt", res["light-env"]["events"], "worker, envelopes, light pack")


if __name__ == "__main__":
    main()
