"""The package as users get it: core without Qt, manifest found editable and from a wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE_MODULES = (
    "napari_anogan",
    "napari_anogan.settings",
    "napari_anogan.cli",
    "napari_anogan.io",
    "napari_anogan.preprocess",
    "napari_anogan.models",
    "napari_anogan.models.folding",
    "napari_anogan.mapping",
    "napari_anogan.scoring",
    "napari_anogan.scoring.display",
    "napari_anogan.progress",
    "napari_anogan.training",
    "napari_anogan.training.ddp",
    "napari_anogan.checkpoint",
    "napari_anogan.pipeline",
    "napari_anogan.pipeline.cluster",
    "napari_anogan.pipeline.overview",
    "napari_anogan.evaluation.experiment",
    "napari_anogan.evaluation.figures",
    "napari_anogan.evaluation.acae",
    "napari_anogan.datasets.synthetic",
    "napari_anogan.resources",
)

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'napari', 'qtpy', 'magicgui', 'superqt', 'PyQt5', 'PyQt6',
                                  'PySide2', 'PySide6', 'vispy'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for name in %r:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'napari', 'qtpy', 'magicgui'})
assert not loaded, loaded
print('ok')
"""


def test_core_imports_with_napari_and_qt_blocked():
    out = subprocess.run(
        [sys.executable, "-c", BLOCKER % (CORE_MODULES,)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_runs_without_qt():
    code = BLOCKER % (("napari_anogan.cli",),) + (
        "\nfrom napari_anogan.cli import main\n"
        "raise SystemExit(main(['-q', 'preprocess', '--help']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--margin-above" in out.stdout


def test_editable_install_exposes_the_manifest():
    from importlib.metadata import entry_points

    import npe2

    (ep,) = [e for e in entry_points(group="napari.manifest") if e.name == "napari-anogan"]
    assert ep.value == "napari_anogan:napari.yaml"
    import napari_anogan

    manifest = Path(napari_anogan.__file__).parent / "napari.yaml"
    assert manifest.read_text() == (ROOT / "napari.yaml").read_text()
    assert npe2.PluginManifest.from_file(manifest).name == "napari-anogan"


@pytest.mark.slow
def test_wheel_contains_manifest_sample_data_and_entry_point(tmp_path):
    pytest.importorskip("hatchling")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("napari_anogan-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        manifest = zf.read("napari_anogan/napari.yaml").decode()
        (ep_name,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points_txt = zf.read(ep_name).decode()
    # The symlinked manifest is stored as a real file with the top-level content.
    assert manifest == (ROOT / "napari.yaml").read_text()
    assert "napari-anogan = napari_anogan:napari.yaml" in entry_points_txt
    assert "napari-anogan = napari_anogan.cli:main" in entry_points_txt
    assert "napari_anogan/sample_data/sample_volume.ome.tif" in names

    # Installed from the wheel (unpacked on sys.path), npe2 reads the manifest from it.
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = (
        "import napari_anogan, npe2, pathlib;"
        "p = pathlib.Path(napari_anogan.__file__).parent;"
        f"assert str(p).startswith({str(site)!r}), p;"
        "print(npe2.PluginManifest.from_file(p / 'napari.yaml').name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "napari-anogan"
