"""Where the bundled sample data and model live.

In a wheel, ``sample_data/`` is packaged inside ``napari_anogan/``; in a source or
editable checkout it is the repository's top-level ``sample_data/`` folder.
"""

from __future__ import annotations

from pathlib import Path

from napari_anogan.errors import InputError

_PACKAGE = Path(__file__).resolve().parent
_CANDIDATES = (_PACKAGE / "sample_data", _PACKAGE.parents[1] / "sample_data")

SAMPLE_VOLUME = "sample_volume.ome.tif"
SAMPLE_MASK = "sample_volume_mask.ome.tif"
BUNDLED_MODEL = "anogan_small.pt"
#: Small model trained on the 205 healthy OCTDL training B-scans (Optovue), with a feature bank.
BUNDLED_REAL_MODEL = "anogan_octdl.pt"
#: A real diseased B-scan (OCTDL validation split, DME), not seen in training.
REAL_SAMPLE = "octdl_DME_1188282_1.jpg"


def sample_data_dir() -> Path:
    """Return the folder holding the bundled sample data and model."""
    for folder in _CANDIDATES:
        if folder.is_dir():
            return folder
    raise InputError("bundled sample_data folder not found (broken installation?)", _CANDIDATES[0])


def sample_path(name: str) -> Path:
    """Return the path of a bundled file, e.g. ``sample_path(SAMPLE_VOLUME)``.

    Raises
    ------
    InputError
        If the file is not bundled with this installation.
    """
    path = sample_data_dir() / name
    if not path.exists():
        raise InputError("bundled file is missing (broken installation?)", path)
    return path
