"""Screenshots of napari with each plugin widget in use on the bundled sample.

Run under a display (or Xvfb)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py

Writes ``docs/screenshot_*.png``: the sample with the widgets docked, scoring results,
the candidate table with a region selected, the export, training in progress, and the real
OCTDL sample scored by the bundled real model (``real``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("screenshots")


def wait_until(condition: Callable[[], bool], timeout: float = 3600.0) -> None:
    """Run the Qt event loop until ``condition()`` is true."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("timed out waiting for the GUI")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.5) -> None:
    """Let the GUI repaint."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() > end)


def shoot(viewer, name: str, out: Path) -> None:
    """Save a screenshot of the whole window."""
    settle()
    path = out / f"screenshot_{name}.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    logger.info("wrote %s", path)


def show_dock(viewer, title: str) -> None:
    """Bring a docked plugin widget's tab to the front."""
    widget = viewer.window.dock_widgets[f"{title} (napari-anogan)"]
    widget.parent().raise_()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="healthy model (default: the bundled one)")
    parser.add_argument(
        "--steps", type=int, default=None, help="mapping steps (default: the widget's, hybrid K)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--only", nargs="*", help="screenshot names to take (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    import napari

    from napari_anogan._widgets._common import bundled_model_path
    from napari_anogan._widgets.viewer import dock_widgets

    model = args.model or bundled_model_path()
    if model is None:
        parser.error("no bundled model yet: pass --model")
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or ["sample", "score", "candidates", "export", "train", "real"])
    if "real" in wanted:
        shoot_real(args.out)
        wanted.discard("real")
        if not wanted:
            return 0

    viewer = napari.Viewer(title="napari-anogan")
    viewer.window.resize(1600, 1000)
    widgets = dock_widgets(viewer)
    viewer.open_sample("napari-anogan", "synthetic_volume")
    image = viewer.layers[0]
    viewer.dims.set_point(0, 8 * image.scale[0])
    viewer.layers.selection.active = image
    viewer.reset_view()
    if "sample" in wanted:
        shoot(viewer, "sample", args.out)
    if not wanted - {"sample"}:
        viewer.close()
        return 0

    score = widgets["Score volume"]
    score.model_path.setText(str(model))
    if args.steps is not None:
        score.steps.setValue(args.steps)
    outcome: list[str] = []
    score.finished.connect(outcome.append)
    score.run_button.click()
    wait_until(lambda: bool(outcome))
    if outcome != ["done"]:
        raise SystemExit(f"scoring ended with {outcome[0]}")
    viewer.reset_view()
    if "score" in wanted:
        shoot(viewer, "score", args.out)

    candidates = widgets["Candidate markers"]
    show_dock(viewer, "Candidate markers")
    if candidates.table.rowCount():
        candidates.select(0)
        candidates.decide("keep")
    if "candidates" in wanted:
        shoot(viewer, "candidates", args.out)

    export = widgets["Export"]
    show_dock(viewer, "Export")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sample_volume_results"
        folder.mkdir()
        export.folder.setText(str(folder))
        export.export()
        if "export" in wanted:
            shoot(viewer, "export", args.out)

    if "train" in wanted:
        train = widgets["Train healthy model"]
        show_dock(viewer, "Train healthy model")
        for layer in viewer.layers:  # only the scan and, soon, the samples
            layer.visible = layer is image
        with tempfile.TemporaryDirectory() as folder:
            from napari_anogan.resources import SAMPLE_VOLUME, sample_path

            train.set_paths([sample_path(SAMPLE_VOLUME)])
            train.preset.setCurrentText("small")
            train.epochs.setValue(20)
            train.patches_per_scan.setValue(32)
            train.output.setText(str(Path(folder) / "model.pt"))
            ended: list[str] = []
            train.finished.connect(ended.append)
            train.train_button.click()
            wait_until(lambda: len(train.plot.values["d_loss"]) >= 40 or bool(ended))
            viewer.reset_view()
            shoot(viewer, "train", args.out)
            train.cancel_button.click()
            wait_until(lambda: bool(ended))
    viewer.close()
    return 0


def shoot_real(out: Path) -> None:
    """The real OCTDL sample, scored with the model its layer names (the bundled real one)."""
    import napari

    from napari_anogan._widgets.viewer import dock_widgets

    viewer = napari.Viewer(title="napari-anogan")
    viewer.window.resize(1600, 1000)
    widgets = dock_widgets(viewer)
    viewer.open_sample("napari-anogan", "octdl_bscan")
    score = widgets["Score volume"]
    outcome: list[str] = []
    score.finished.connect(outcome.append)
    score.run_button.click()
    wait_until(lambda: bool(outcome))
    if outcome != ["done"]:
        raise SystemExit(f"scoring ended with {outcome[0]}")
    show_dock(viewer, "Candidate markers")
    viewer.reset_view()
    shoot(viewer, "real", out)
    viewer.close()


if __name__ == "__main__":
    raise SystemExit(main())
