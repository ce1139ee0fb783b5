"""GUI responsiveness while a volume is scored in napari (issue 4 target: no gap > 100 ms).

Opens the bundled sample volume in a real napari viewer, runs the Score widget with the
bundled model, and records the gaps between ticks of a 10 ms QTimer on the GUI thread
while the worker maps patches, plus the time taken to add the result layers at the end.
Run under a display, e.g.::

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_gui_responsiveness.py

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="iterative mapping steps")
    parser.add_argument("--mode", default="iterative")
    parser.add_argument(
        "--partial-every", type=float, default=None, help="seconds between partial heatmaps"
    )
    args = parser.parse_args()
    if args.partial_every is not None:
        from napari_anogan import pipeline

        pipeline.PARTIAL_EVERY_S = args.partial_every

    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_anogan._widgets.score import ScoreWidget
    from napari_anogan.resources import SAMPLE_VOLUME, sample_path

    viewer = napari.Viewer(show=True)
    viewer.open(str(sample_path(SAMPLE_VOLUME)), plugin="napari-anogan")
    widget = ScoreWidget(viewer)
    widget.mode.setCurrentText(args.mode)
    widget.steps.setValue(args.steps)
    ticks: list[float] = []
    result_at: list[float] = []
    original = widget.job._on_result

    def on_result(result):
        result_at.append(time.perf_counter())
        original(result)

    widget.job._on_result = on_result
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    loop = QEventLoop()
    outcome: list[str] = []
    widget.finished.connect(lambda o: (outcome.append(o), loop.quit()))
    timer.start()
    start = time.perf_counter()
    widget.run_button.click()
    loop.exec()
    timer.stop()
    done = time.perf_counter()
    during = np.array([t for t in ticks if not result_at or t <= result_at[0]])
    gaps = np.diff(during) * 1000 if during.size > 1 else np.array([np.nan])
    print(
        json.dumps(
            {
                "outcome": outcome[0] if outcome else None,
                "mode": args.mode,
                "steps": args.steps,
                "partial_every_s": args.partial_every,
                "scoring_s": round((result_at[0] if result_at else done) - start, 2),
                "ticks_while_scoring": int(during.size),
                "longest_gap_ms": round(float(np.nanmax(gaps)), 1),
                "p99_gap_ms": round(float(np.nanpercentile(gaps, 99)), 1),
                "add_result_layers_ms": round((done - result_at[0]) * 1000, 1)
                if result_at
                else None,
                "target_longest_gap_ms": 100,
                "cpus": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
    )
    viewer.close()


if __name__ == "__main__":
    main()
