"""Sampling profile of a worker process over a timed span, with py-spy (``pip install py-spy``), for
``bench/worker.py --profile DIR``: where the CPU time per event goes, by component and by function.

py-spy samples the running process from outside (``--nonblocking``: the worker is never paused), so the profiled
span costs the worker little; only samples of running (not idle) code are kept.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 200  # samples per second

# own time grouped by where the code lives (first match wins)
GROUPS = (
    ("drift detectors (detectors/, river)", ("/detectors/", "/river/")),
    ("event parsing (rules/events.py)", ("rules/events.py",)),
    ("engine: windows, aggregates, sketches, rules", ("/rules/",)),
    ("processor, Redis store (streams/)", ("/streams/",)),
    ("Faust, mode, aiokafka (consumer, streams, acks)", ("/faust/", "/mode/", "/aiokafka/", "/kafka/")),
    ("redis client", ("/redis/",)),
    ("asyncio event loop", ("/asyncio/", "selectors.py")),
)


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/python -m pip install py-spy")
    return exe


def start(pid: int, out: Path) -> subprocess.Popen:
    argv = [py_spy(), "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--function",
            "--full-filenames", "--nonblocking", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _where(frame: str) -> str:
    return frame[frame.rfind("(") + 1:].rstrip(")")


def report(path: Path, events: float, label: str, top: int = 20, groups_by: tuple = GROUPS) -> None:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
        total += count
    if not total:
        print(f"\nprofile {path}: no samples")
        return
    per = 1e6 / RATE / events  # microseconds per event of one sample

    def row(n: int, name: str) -> str:
        return f"{n * per:>9.1f} {n / total:>6.1%}  {name}"

    print(f"\nprofile of the {label} (py-spy, {total:,} samples at {RATE}/s = {total / RATE:.1f} CPU-s over "
          f"{events:,.0f} events; CPU microseconds per event)")  # fmt: skip
    groups: Counter[str] = Counter()
    for frame, n in own.items():
        where = _where(frame)
        groups[next((g for g, keys in groups_by if any(k in where for k in keys)), "other (stdlib, orjson, ...)")] += n
    print(f"{'us/event':>9} {'share':>6}  own time by component")
    for g, n in groups.most_common():
        print(row(n, g))
    print(f"{'us/event':>9} {'share':>6}  own time, top {top} functions")
    for f, n in own.most_common(top):
        print(row(n, f.replace(str(Path(__file__).resolve().parent.parent) + "/", "")))
    print(f"{'us/event':>9} {'share':>6}  inclusive time, top {top} rollguard functions")
    shown = 0
    for f, n in incl.most_common():
        where = _where(f)
        if any(k in where for k in ("rules/", "streams/", "detectors/")) and "site-packages" not in where:
            print(row(n, f.replace(str(Path(__file__).resolve().parent.parent) + "/", "")))
            shown += 1
            if shown >= top:
                break
