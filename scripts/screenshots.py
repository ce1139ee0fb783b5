"""Screenshots of napari with each plugin widget in use on the bundled sample.

Run under a display (or Xvfb)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py

Writes ``docs/screenshot_*.png``: the sample with the widgets docked, scoring results,
the candidate table with a region selected, the export, training in progress, the real
OCTDL sample scored by the bundled real model (``real``), and ``docs/overview_sample.png``,
the quick-look figure ``napari-anogan score`` writes for the sample (``overview``).

Every path the widgets show is one a reader can use: the script runs in a scratch folder
holding a link ``sample_data`` to the bundled files, so the model field reads
``sample_data/anogan_small.pt`` and the export folder ``results``, as if napari had been
started from a checkout of this repository.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
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


def zoom_to_retina(viewer, image) -> None:
    """Fill the canvas with the retina of the B-scan shown (rows 130-400, every column)."""
    import numpy as np

    from napari_anogan._widgets._common import zoom_to_box

    width = image.data.shape[-1]  # zoom_to_box shows 1.6 x the box: the whole width
    lo = image.data_to_world(np.array([0.0, 130.0, 0.19 * width])[-image.ndim :])
    hi = image.data_to_world(np.array([0.0, 400.0, 0.81 * width])[-image.ndim :])
    zoom_to_box(viewer, lo, hi)


def show_dock(viewer, title: str) -> None:
    """Bring a docked plugin widget's tab to the front."""
    widget = viewer.window.dock_widgets[f"{title} (napari-anogan)"]
    widget.parent().raise_()


@contextlib.contextmanager
def reader_folder() -> Iterator[Path]:
    """Work in a scratch folder with a link ``sample_data`` to the bundled files."""
    from napari_anogan.resources import sample_data_dir

    before = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sample_data").symlink_to(sample_data_dir(), target_is_directory=True)
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(before)


def relative(path: str | Path) -> str:
    """``path`` as the scratch folder sees it (``sample_data/...``)."""
    from napari_anogan.resources import sample_data_dir

    path = Path(path)
    try:
        return str(Path("sample_data") / path.resolve().relative_to(sample_data_dir().resolve()))
    except ValueError:
        return str(path)


def shoot_overview(out: Path) -> None:
    """The quick-look PNG of ``napari-anogan score`` for the bundled sample (no model given)."""
    from napari_anogan.cli import main as cli

    with reader_folder() as folder:
        status = cli(["-q", "score", "sample_data/sample_volume.ome.tif", "-o", "results"])
        if status != 0:
            raise SystemExit(f"napari-anogan score ended with {status}")
        shutil.copyfile(
            folder / "results" / "sample_volume_overview.png", out / "overview_sample.png"
        )
    logger.info("wrote %s", out / "overview_sample.png")


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

    from napari_anogan._widgets._common import bundled_model_path

    model = Path(args.model).resolve() if args.model else bundled_model_path()
    if model is None:
        parser.error("no bundled model yet: pass --model")
    args.out = args.out.resolve()  # the shots are taken in a scratch folder
    args.out.mkdir(parents=True, exist_ok=True)
    every = ["sample", "score", "candidates", "export", "train", "real", "overview", "misfit"]
    every += ["adapted"] if KERMANY.is_dir() else []
    wanted = set(args.only or every)
    if "overview" in wanted:
        shoot_overview(args.out)
        wanted.discard("overview")
    standalone = {"real": shoot_real, "misfit": shoot_misfit, "adapted": shoot_adapted}
    for name, shoot_one in standalone.items():  # each in a viewer of its own
        if name in wanted:
            with reader_folder():
                shoot_one(args.out)
            wanted.discard(name)
    if not wanted:
        return 0
    with reader_folder():
        return shoot_widgets(args, wanted, model)


def docked_viewer():
    """A 1600 x 1000 napari window with the plugin's widgets docked; (viewer, widgets)."""
    import napari

    from napari_anogan._widgets.viewer import dock_widgets

    viewer = napari.Viewer(title="napari-anogan")
    viewer.window.resize(1600, 1000)
    return viewer, dock_widgets(viewer)


def _score_and_wait(score) -> None:
    """Click Score and wait for the result; stop unless it is done."""
    outcome: list[str] = []
    score.finished.connect(outcome.append)
    score.run_button.click()
    wait_until(lambda: bool(outcome))
    if outcome != ["done"]:
        raise SystemExit(f"scoring ended with {outcome[0]}")


def shoot_widgets(args: argparse.Namespace, wanted: set[str], model: str | Path) -> int:
    """The sample with the widgets: sample, score, candidates, export, train."""
    viewer, widgets = docked_viewer()
    widgets["Score volume"].model_path.setText(relative(model))
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
    score.model_path.setText(relative(model))
    if args.steps is not None:
        score.steps.setValue(args.steps)
    outcome: list[str] = []
    score.finished.connect(outcome.append)
    score.run_button.click()
    wait_until(lambda: bool(outcome))
    if outcome != ["done"]:
        raise SystemExit(f"scoring ended with {outcome[0]}")
    zoom_to_retina(viewer, image)
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
    Path("results").mkdir(exist_ok=True)
    export.folder.setText("results")
    export.export()
    if "export" in wanted:
        shoot(viewer, "export", args.out)

    if "train" in wanted:
        train = widgets["Train healthy model"]
        show_dock(viewer, "Train healthy model")
        for layer in viewer.layers:  # only the scan and, soon, the samples
            layer.visible = layer is image
        train.set_paths(["sample_data/sample_volume.ome.tif"])
        train.preset.setCurrentText("small")
        train.epochs.setValue(20)
        train.patches_per_scan.setValue(32)
        train.output.setText("healthy_model.pt")
        ended: list[str] = []
        train.finished.connect(ended.append)
        train.train_button.click()
        # past the first epoch, so the bar shows the time left
        wait_until(lambda: len(train.plot.values["d_loss"]) >= 60 or bool(ended))
        viewer.reset_view()
        shoot(viewer, "train", args.out)
        train.cancel_button.click()
        wait_until(lambda: bool(ended))
    viewer.close()
    return 0


def shoot_real(out: Path) -> None:
    """The real OCTDL sample, scored with the model its layer names (the bundled real one)."""
    viewer, widgets = docked_viewer()
    viewer.open_sample("napari-anogan", "octdl_bscan")
    score = widgets["Score volume"]
    score.model_path.setText(relative(score.model_path.text()))
    _score_and_wait(score)
    show_dock(viewer, "Candidate markers")
    viewer.reset_view()
    shoot(viewer, "real", out)
    viewer.close()


#: Kermany (Spectralis) B-scans of the shared data, for the adapted-model screenshot.
KERMANY = ROOT.parent / "shared" / "data" / "real-oct"
#: The healthy B-scans the adapted model is trained on (fold A of benchmarks/adapt_device.py)
#: and the diseased B-scan it scores (CNV with a pigment-epithelium detachment).
ADAPT_HEALTHY = ("1384-1", "33637-1", "4872585-1", "5156112-1", "5171640-1")
ADAPT_SCAN = "kermany2018/CNV-732516-2.jpeg"


def shoot_misfit(out: Path) -> None:
    """A real Kermany B-scan scored with the bundled synthetic model: the model card under
    the model, the model-fit warning beside the results, the candidates marked unreliable."""
    viewer, widgets = docked_viewer()
    viewer.open_sample("napari-anogan", "real_bscan")
    score = widgets["Score volume"]
    score.model_path.setText(relative(score.model_path.text()))
    _score_and_wait(score)
    viewer.reset_view()
    shoot(viewer, "misfit", out)
    viewer.close()


def shoot_adapted(out: Path) -> None:
    """A diseased Spectralis B-scan scored by the OCTDL model adapted to 5 healthy ones."""
    from napari_anogan.events import drain
    from napari_anogan.pipeline import train_from_paths

    healthy = Path("healthy_spectralis")
    healthy.mkdir()
    for name in ADAPT_HEALTHY:
        (healthy / f"NORMAL-{name}.jpeg").symlink_to(
            next(KERMANY.glob(f"kermany2018*/NORMAL-{name}.jpeg"))
        )
    drain(train_from_paths([healthy], "spectralis.pt", init="sample_data/anogan_octdl.pt"))
    scan = Path(ADAPT_SCAN).name
    Path(scan).symlink_to(KERMANY / ADAPT_SCAN)
    viewer, widgets = docked_viewer()
    viewer.open(scan, plugin="napari-anogan")
    score = widgets["Score volume"]
    score.image.setCurrentText(viewer.layers[-1].name)
    score.model_path.setText("spectralis.pt")
    score._show_card()
    _score_and_wait(score)
    show_dock(viewer, "Candidate markers")
    viewer.reset_view()
    shoot(viewer, "adapted", out)
    viewer.close()


if __name__ == "__main__":
    raise SystemExit(main())
