"""The worker's garbage-collector set-up (streams.live.worker.tune_gc): run in a child interpreter, so the test
process's own collector is untouched."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import gc
from streams.live.worker import GC_THRESHOLDS, tune_gc
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
