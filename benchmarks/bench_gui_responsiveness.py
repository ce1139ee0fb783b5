"""GUI responsiveness while a volume is scored in napari (issue 4 target: no gap > 100 ms).

Opens the bundled sample volume in a real napari viewer, runs the Score widget with the
bundled model, and records the gaps between ticks of a 10 ms QTimer on the GUI thread over
the whole job, in two phases a user feels alike:

* ``scoring``: from the click until the worker's result reaches the GUI thread (partial
  heatmaps are shown in this phase);
* ``adding results``: from then until every result layer is in the viewer and drawn
  (``--settle-s`` of event loop after the widget's ``finished`` signal).

A gap is counted in the phase of the tick that ends it. Run under a display, e.g.::

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_gui_responsiveness.py

Prints one JSON object per run; with ``--runs N`` (each run a fresh process) a last JSON
object holds the median of each figure and the load averages seen; ``--jobs 2`` scores
twice in the same viewer (``rescoring``: the second job replaces the first's layers).
``--view`` sets napari up as ``napari-anogan view`` does (every widget docked, the
application's objects frozen out of garbage collection before the sample is opened).
``--diagnose`` prints, on stderr, a timeline of the GUI thread's work (each layer step of
the widget, each canvas paint, each garbage collection) beside the gaps over 100 ms;
``--stacks MS`` also samples the GUI thread's Python stack during gaps over MS ms.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback

import numpy as np

TARGET_MS = 100.0


def _gap_stats(ticks: np.ndarray, lo: float, hi: float) -> dict:
    """Longest / p99 gap (ms) and gaps over the target among ticks ending in (lo, hi]."""
    gaps = np.diff(ticks) * 1000.0
    ends = ticks[1:]
    inside = gaps[(ends > lo) & (ends <= hi)]
    if inside.size == 0:
        return {"ticks": 0, "longest_gap_ms": None, "p99_gap_ms": None, "gaps_over_100ms": 0}
    return {
        "ticks": int(inside.size),
        "longest_gap_ms": round(float(inside.max()), 1),
        "p99_gap_ms": round(float(np.percentile(inside, 99)), 1),
        "gaps_over_100ms": int((inside > TARGET_MS).sum()),
    }


class _Watchdog(threading.Thread):
    """Sample the GUI thread's stack while the event loop has not ticked for a while."""

    def __init__(self, last_tick: list[float], after_ms: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.main_id = threading.main_thread().ident
        self.last_tick = last_tick
        self.after_s = after_ms / 1000.0
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            time.sleep(0.005)
            now = time.perf_counter()
            if now - self.last_tick[0] < self.after_s:
                continue
            frame = sys._current_frames().get(self.main_id)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)
            lines = tuple(
                f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                for f in stack
                if "site-packages/pyqt" not in f.filename.lower()
            )
            self.samples.append((now, lines[-14:]))

    def report(self, ticks: np.ndarray, threshold_ms: float) -> None:
        """Print the most frequent stacks sampled inside each gap over ``threshold_ms``."""
        gaps = np.diff(ticks) * 1000.0
        for i in np.flatnonzero(gaps > threshold_ms):
            lo, hi = ticks[i], ticks[i + 1]
            inside = [s for t, s in self.samples if lo < t <= hi]
            print(f"--- gap {gaps[i]:.0f} ms at t={lo - ticks[0]:.2f} s", file=sys.stderr)
            for stack, count in collections.Counter(inside).most_common(4):
                print(f"  {count} samples:", file=sys.stderr)
                for line in stack:
                    print(f"    {line}", file=sys.stderr)


def _trace_gui_work(widget) -> list[tuple[float, str, float]]:
    """Time every layer step of the widget and every canvas paint (for ``--diagnose``)."""
    from vispy.app.backends import _qt

    timeline: list[tuple[float, str, float]] = []

    def timed(what, function):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                timeline.append((t0, what(*a), (time.perf_counter() - t0) * 1000))

        return wrapper

    queue = widget.layer_steps

    queue._step = timed(lambda *_: f"layer step: {queue.last_step}", queue._step)
    backend = _qt.CanvasBackendDesktop
    backend.paintGL = timed(lambda *_: "paint", backend.paintGL)
    widget._on_event = timed(lambda *_: "progress event", widget._on_event)
    collecting: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if phase == "start":
            collecting.append(time.perf_counter())
        elif collecting:
            t0 = collecting.pop()
            what = f"garbage collection (generation {info.get('generation')})"
            timeline.append((t0, what, (time.perf_counter() - t0) * 1000))

    gc.callbacks.append(on_gc)
    return timeline


def run_once(args: argparse.Namespace) -> dict:
    """Score the sample ``--jobs`` times in one fresh viewer and measure the gaps."""
    if args.partial_every is not None:
        from napari_anogan import pipeline

        pipeline.PARTIAL_EVERY_S = args.partial_every
    if args.torch_threads_leave is not None:
        from napari_anogan._widgets import _results

        _results.GUI_TORCH_THREADS_LEAVE = args.torch_threads_leave

    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_anogan._widgets.score import ScoreWidget
    from napari_anogan._widgets.viewer import open_viewer
    from napari_anogan.resources import SAMPLE_VOLUME, sample_path

    viewer = open_viewer(block=False) if args.view else napari.Viewer(show=True)
    viewer.open(str(sample_path(SAMPLE_VOLUME)), plugin="napari-anogan")
    if args.view:
        docked = viewer.window.dock_widgets
        widget = next(w for name, w in docked.items() if name.startswith("Score volume"))
    else:
        widget = ScoreWidget(viewer)
    widget.mode.setCurrentText(args.mode)
    widget.steps.setValue(args.steps)
    # Let the viewer draw the sample first: its first paint is not part of the job.
    settle = QEventLoop()
    QTimer.singleShot(500, settle.quit)
    settle.exec()
    timeline = _trace_gui_work(widget) if args.diagnose else None
    jobs = []
    for _ in range(args.jobs):
        jobs.append(measure_job(args, widget, timeline))
        if timeline is not None:
            timeline.clear()
    out = {**jobs[0], "rescoring": jobs[1:]} if len(jobs) > 1 else jobs[0]
    print(json.dumps(out), flush=True)
    viewer.close()
    return out


def measure_job(args: argparse.Namespace, widget, timeline: list | None) -> dict:
    """Click Score once and record event-loop ticks until the layers are in place."""
    from qtpy.QtCore import QEventLoop, QTimer

    load_before = os.getloadavg()
    ticks: list[float] = []
    last_tick = [time.perf_counter()]
    result_at: list[float] = []
    original = widget.job._on_result

    def on_result(result):
        result_at.append(time.perf_counter())
        original(result)

    widget.job._on_result = on_result

    def tick() -> None:
        now = time.perf_counter()
        ticks.append(now)
        last_tick[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    loop = QEventLoop()
    outcome: list[str] = []
    finished_at: list[float] = []

    def on_finished(value: str) -> None:
        outcome.append(value)
        finished_at.append(time.perf_counter())
        QTimer.singleShot(int(args.settle_s * 1000), loop.quit)

    widget.finished.connect(on_finished)
    objects_before = len(gc.get_objects())
    watchdog = _Watchdog(last_tick) if args.stacks else None
    timer.start()
    tick()
    start = ticks[0]
    if watchdog is not None:
        watchdog.start()
    widget.run_button.click()
    loop.exec()
    timer.stop()
    end = time.perf_counter()
    widget.finished.disconnect(on_finished)
    widget.job._on_result = original
    if watchdog is not None:
        watchdog.stop = True
        watchdog.join()
    t = np.asarray(ticks)
    scored_at = result_at[0] if result_at else end
    out = {
        "outcome": outcome[0] if outcome else None,
        "mode": args.mode,
        "steps": args.steps,
        "partial_every_s": args.partial_every,
        "torch_threads_leave": _torch_threads_leave(),
        "scoring_s": round(scored_at - start, 2),
        "adding_results_ms": round((finished_at[0] - scored_at) * 1000, 1)
        if result_at and finished_at
        else None,
        "while_scoring": _gap_stats(t, start, scored_at),
        "adding_results": _gap_stats(t, scored_at, end),
        "whole_job": _gap_stats(t, start, end),
        "target_longest_gap_ms": TARGET_MS,
        "gc_objects_before_after": [objects_before, len(gc.get_objects())],
        "cpus": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "torch_threads_while_scoring": _threads_while_scoring(load_before[0]),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    if watchdog is not None:
        watchdog.report(t, args.stacks)
    if timeline is not None:
        gaps = np.diff(t) * 1000.0
        timeline += [(t[i], "EVENT-LOOP GAP", gaps[i]) for i in np.flatnonzero(gaps > TARGET_MS)]
        print("--- GUI work over 20 ms and gaps over 100 ms (t from the click):", file=sys.stderr)
        for at, what, ms in sorted(timeline):
            if ms > 20.0:
                print(f"  t={at - start:7.2f}s {ms:6.0f} ms  {what}", file=sys.stderr)
    return out


def _torch_threads_leave() -> int | None:
    try:
        from napari_anogan._widgets import _results

        return int(_results.GUI_TORCH_THREADS_LEAVE)
    except (ImportError, AttributeError):
        return None


def _threads_while_scoring(load: float) -> int | None:
    """Torch threads the widget's job used (it chooses from the load at its start)."""
    try:
        from napari_anogan._widgets._results import torch_threads_for_gui
    except ImportError:
        return _torch_threads()
    threads = _torch_threads()
    return None if threads is None else torch_threads_for_gui(threads, os.cpu_count() or 1, load)


def _torch_threads() -> int | None:
    try:
        import torch

        return int(torch.get_num_threads())
    except ImportError:
        return None


def summarise(runs: list[dict]) -> dict:
    """Median of each figure over runs, and the load averages seen."""

    def median(get) -> float | None:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return round(statistics.median(values), 1) if values else None

    summary: dict = {"runs": len(runs), "outcomes": [r["outcome"] for r in runs]}
    summary["median_scoring_s"] = median(lambda r: r["scoring_s"])
    summary["median_adding_results_ms"] = median(lambda r: r["adding_results_ms"])
    for phase in ("while_scoring", "adding_results", "whole_job"):
        summary[phase] = {
            "median_longest_gap_ms": median(lambda r, p=phase: r[p]["longest_gap_ms"]),
            "max_longest_gap_ms": max((r[phase]["longest_gap_ms"] or 0.0) for r in runs),
            "median_p99_gap_ms": median(lambda r, p=phase: r[p]["p99_gap_ms"]),
            "runs_meeting_target": sum(
                1
                for r in runs
                if r[phase]["longest_gap_ms"] is not None
                and r[phase]["longest_gap_ms"] <= TARGET_MS
            ),
        }
    summary["load_average_1min"] = [r["load_average_before"][0] for r in runs]
    summary["target_longest_gap_ms"] = TARGET_MS
    later = [r["rescoring"][0] for r in runs if r.get("rescoring")]
    if later:
        summary["rescoring"] = summarise(later)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="iterative mapping steps")
    parser.add_argument("--mode", default="iterative")
    parser.add_argument(
        "--partial-every", type=float, default=None, help="seconds between partial heatmaps"
    )
    parser.add_argument(
        "--torch-threads-leave",
        type=int,
        default=None,
        metavar="N",
        help="cores left to the GUI thread while scoring on a busy machine "
        "(default: the widget's setting)",
    )
    parser.add_argument(
        "--settle-s", type=float, default=1.0, help="event loop kept ticking after the job"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="score this many times in the same viewer (later jobs replace the layers)",
    )
    parser.add_argument(
        "--view",
        action="store_true",
        help="set napari up as `napari-anogan view` does (all widgets docked, startup objects "
        "frozen out of garbage collection) instead of a bare viewer with the Score widget",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs, each in a fresh process")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="print a timeline of the GUI thread's layer steps, paints and collections",
    )
    parser.add_argument(
        "--stacks",
        type=float,
        default=None,
        metavar="MS",
        help="also sample the GUI thread's stack during gaps longer than MS (reads another "
        "thread's frames: has crashed CPython 3.11 now and then)",
    )
    args = parser.parse_args()
    if args.runs <= 1:
        run_once(args)
        return
    forwarded = [*sys.argv[1:]]
    if "--runs" in forwarded:  # "--runs N"; "--runs=N" is dropped below
        i = forwarded.index("--runs")
        del forwarded[i : i + 2]
    forwarded = [a for a in forwarded if not a.startswith("--runs=")]
    runs = []
    for _ in range(args.runs):
        proc = subprocess.run(
            [sys.executable, __file__, *forwarded],
            capture_output=True,
            text=True,
            check=False,
        )
        sys.stderr.write(proc.stderr if args.diagnose or args.stacks else "")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"run failed with status {proc.returncode}")
        runs.append(json.loads(lines[-1]))
        print(lines[-1], flush=True)
    print(json.dumps({"summary": summarise(runs)}), flush=True)


if __name__ == "__main__":
    main()
