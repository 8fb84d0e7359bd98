"""The garbage-collector set-up of the long-running commands (streams.runtime.tune_gc): run in a child interpreter,
so the test process's own collector is untouched; the worker and `rollguard replay` call it, `main()` called with
arguments by other code does not."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import gc
from streams.runtime import GC_THRESHOLDS, tune_gc
kept = [[i] for i in range(1000)]  # alive at start-up: frozen
assert gc.get_freeze_count() == 0
tune_gc()
assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()
assert gc.get_freeze_count() >= len(kept), gc.get_freeze_count()
a = []; a.append(a); del a  # a cycle made after start-up is still collected
assert gc.collect() >= 1
print("ok")
"""


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_worker_tunes_the_collector_after_start_up_and_before_it_runs(monkeypatch):
    import streams.live.app as app
    import streams.live.startup as startup
    import streams.live.worker as worker
    from streams.settings import Settings

    calls = []

    class FakeWorker:  # the real one connects to Kafka and Redis; only the order of start-up steps is checked
        def __init__(self, settings):
            calls.append("build")
            self.app = object()

    class FakeFaust:
        def execute_from_commandline(self):
            calls.append("run")

    monkeypatch.setattr(app, "Worker", FakeWorker)
    monkeypatch.setattr(startup, "wait_for_dependencies", lambda settings, check: settings)
    monkeypatch.setattr(worker, "tune_gc", lambda: calls.append("tune_gc"))
    monkeypatch.setattr(worker, "faust_worker", lambda app, level: FakeFaust())
    assert worker.run_worker(Settings()) == 0
    assert calls == ["build", "tune_gc", "run"]


def _replay_args(tmp_path) -> list[str]:
    rules = tmp_path / "r.yaml"
    rules.write_text("version: 1\nname: r\nfeatures: ['*']\nrules:\n  - {id: e, tier: pause, metric: error_rate, "
                     "op: '>', threshold: 0.5, window: 5m, every: 1m}\n")
    events = tmp_path / "e.jsonl"
    events.write_text("")
    return ["replay", "--rules", str(rules), "--events", str(events), "--out", str(tmp_path / "o"), "--no-progress"]


def test_replay_tunes_the_collector_only_when_it_is_the_program(tmp_path, monkeypatch):
    import streams.runtime as runtime
    from streams.cli import main

    calls = []
    monkeypatch.setattr(runtime, "tune_gc", lambda: calls.append("tune_gc"))
    assert main(_replay_args(tmp_path)) == 0  # called by other code (this test): the process is not replay's
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["rollguard", *_replay_args(tmp_path)])
    assert main() == 0  # the program itself
    assert calls == ["tune_gc"]
