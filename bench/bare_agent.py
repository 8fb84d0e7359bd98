"""The floor of Faust itself (used by ``bench/worker.py``, not run by hand): one agent that only counts.

Same Faust configuration as the rollguard worker (``streams.live.app.Worker._build_app``: broker, raw serializers, one
agent with concurrency 1 over the interaction and feedback topics, group timeouts, ``stream_wait_empty``), read
from the same ``ROLLGUARD_*`` environment (``streams.settings.Settings``), plus:

* ``BENCH_MODE``   ``take`` (``stream.take_events(batch_max, batch_within)``, as the worker) or ``iter`` (a plain
  ``async for event in stream``);
* ``BENCH_EXPECT`` how many messages the topics hold; once counted, the timing is written and the process stops;
* ``BENCH_OUT``    where to write the timing (JSON: ``t_first``/``n_first`` at the end of the first batch — or the
  first message in ``iter`` mode — and ``t_last``/``n_last`` once every message was counted; wall clock seconds,
  ``cpu_*`` the process CPU time then). ``BENCH_OUT`` with suffix ``.first`` is created at the first batch.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import faust
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rules.durations import parse_duration  # noqa: E402
from streams.live.app import faust_settings  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.kafka.topics import Topics  # noqa: E402


def build(settings: Settings, mode: str, expect: int, out: Path) -> faust.App:
    s = settings
    app = faust.App(s.app_id, **faust_settings(s))  # exactly the worker's Faust configuration
    source = app.topic(*Topics(s.topic_prefix).inputs(), value_serializer="raw", key_serializer="raw",
                       partitions=s.partitions)  # fmt: skip
    batch_max, within = s.batch_max, parse_duration(s.batch_within) / 1000
    timing: dict[str, float] = {}

    def counted(n: int) -> None:
        now, cpu = time.time(), time.process_time()
        if not timing:
            timing.update(t_first=now, n_first=n, cpu_first=cpu)
            out.with_suffix(".first").touch()  # the parent may start a profiler now
        if n >= expect and "t_last" not in timing:
            timing.update(t_last=now, n_last=n, cpu_last=cpu)
            out.write_bytes(orjson.dumps(timing))
            os.kill(os.getpid(), signal.SIGTERM)

    if mode == "take":

        @app.agent(source, name="bare.count", concurrency=1)
        async def count(stream):
            n = 0
            async for events in stream.take_events(batch_max, within):
                n += len(events)
                counted(n)

    else:

        @app.agent(source, name="bare.count", concurrency=1)
        async def count(stream):  # noqa: F811 - one of the two is defined
            n = 0
            async for _ in stream:
                n += 1
                if n == 1 or n >= expect:
                    counted(n)

    return app


def main() -> None:
    from faust.worker import Worker as FaustWorker

    mode = os.environ.get("BENCH_MODE", "take")
    app = build(Settings(), mode, int(os.environ["BENCH_EXPECT"]), Path(os.environ["BENCH_OUT"]))
    FaustWorker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
