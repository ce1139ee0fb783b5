"""The npe2 manifest: valid, every python_name imports, the reader covers every io format."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

import napari_anogan

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"
PACKAGE_MANIFEST = Path(napari_anogan.__file__).parent / "napari.yaml"


def _manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def test_package_manifest_is_the_top_level_file():
    assert PACKAGE_MANIFEST.is_symlink()
    assert PACKAGE_MANIFEST.resolve() == MANIFEST.resolve()


def test_npe2_validates_the_manifest():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-anogan"
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Train healthy model", "Score volume", "Candidate markers", "Export"}


@pytest.mark.parametrize(
    "python_name", [c["python_name"] for c in _manifest()["contributions"]["commands"]]
)
def test_every_python_name_imports(python_name):
    module_name, _, attribute = python_name.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute))


def test_every_command_is_used_once():
    contributions = _manifest()["contributions"]
    ids = [c["id"] for c in contributions["commands"]]
    assert len(ids) == len(set(ids))
    used = [
        item["command"]
        for kind in ("readers", "writers", "sample_data", "widgets")
        for item in contributions.get(kind, [])
    ]
    assert sorted(used) == sorted(ids)


def test_reader_patterns_cover_every_io_suffix():
    from napari_anogan.io import SUPPORTED_SUFFIXES

    (reader,) = _manifest()["contributions"]["readers"]
    patterns = {p.lower() for p in reader["filename_patterns"]}
    assert reader["accepts_directories"] is True
    missing = [s for s in SUPPORTED_SUFFIXES if f"*{s}" not in patterns]
    assert not missing


def test_napari_discovers_the_plugin():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert pm.get_manifest("napari-anogan").display_name == "napari-anogan"
