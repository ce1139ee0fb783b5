"""What the paths a user gives are: volumes, or collections of independent B-scans.

A folder of B-scan images is either the exported slices of ONE scan (a volume: the
slices are normalised together and the boundary search uses neighbouring B-scans) or a
collection of single B-scans of different eyes (Kermany-style archives, one foveal
B-scan per eye), where each image is a scan of its own. :func:`expand_inputs` turns the
paths into scans; ``folders="auto"`` (the default) decides per folder with
:func:`looks_like_volume`, and says what it decided in the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from napari_anogan import settings as defaults
from napari_anogan.errors import InputError
from napari_anogan.io.readers import PIL_SUFFIXES, TIFF_SUFFIXES, _folder_images

logger = logging.getLogger(__name__)

__all__ = ["FOLDER_MODES", "bscan_count", "expand_inputs", "looks_like_volume"]

#: How a folder of B-scan images is read.
FOLDER_MODES = ("auto", "volume", "collection")

_LAST_NUMBER = re.compile(r"\d+(?=\D*$)")


def _image_shape(path: Path) -> tuple[int, ...] | None:
    """Height and width from the file's header (no pixel data read); None if unknown."""
    suffix = path.suffix.lower()
    try:
        if suffix in PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                return (im.height, im.width)
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tuple(tif.series[0].shape)
    except Exception:  # an unreadable file is reported by the reader, with its name
        return None
    return None


def bscan_count(path: str | Path) -> int:
    """Return how many B-scans a scan holds, reading as little as the format allows.

    A single image is one B-scan and a folder holds one per image (no pixel data read);
    other files are opened lazily (:func:`~napari_anogan.io.read_volume`).
    """
    from napari_anogan.io.readers import read_volume

    path = Path(path)
    if path.is_dir():
        return len(_folder_images(path)) or read_volume(path).shape[0]  # the reader's error
    if path.suffix.lower() in PIL_SUFFIXES:
        return 1
    return int(read_volume(path, lazy=True).shape[0])


def looks_like_volume(files: list[Path]) -> bool:
    """Whether a folder's images look like the exported slices of one scan.

    True when every image has the same size and the file names differ only in their
    last number (``scan_001.png`` ... ``scan_128.png``): how devices and converters
    export one volume. Several numbers that vary (``NORMAL-4872585-1``,
    ``NORMAL-5156112-1``: patient and scan), other names, or images of different sizes
    make a collection of independent B-scans.

    Parameters
    ----------
    files : list of Path
        The folder's B-scan images.

    Returns
    -------
    bool
    """
    if len(files) < 2:
        return False
    stems = {_LAST_NUMBER.sub("#", f.name) for f in files}
    if len(stems) != 1 or "#" not in next(iter(stems)):
        return False
    shapes = {_image_shape(f) for f in files}
    return len(shapes) == 1 and None not in shapes


def expand_inputs(
    paths: Iterable[str | Path], folders: str = defaults.FOLDERS
) -> tuple[list[Path], list[str]]:
    """Return the scans named by files and folders, one path per scan.

    Parameters
    ----------
    paths : iterable of path
        Files (one scan each) and folders of B-scan images.
    folders : {"auto", "volume", "collection"}
        A folder is one volume (``volume``), a collection of single B-scans, each a scan
        of its own (``collection``), or whichever :func:`looks_like_volume` says
        (``auto``).

    Returns
    -------
    scans : list of Path
        Files and volume folders, in the given order (a collection's images in natural
        order).
    notes : list of str
        One line per folder read with ``auto``: what it was taken for and how to ask
        for the other reading (the CLI prints them; they are also logged).

    Raises
    ------
    InputError
        An unknown ``folders`` mode.
    """
    if folders not in FOLDER_MODES:
        raise InputError(f"folders must be one of {', '.join(FOLDER_MODES)}, not {folders!r}")
    scans: list[Path] = []
    notes: list[str] = []
    for path in map(Path, paths):
        if not path.is_dir() or folders == "volume":
            scans.append(path)
            continue
        files = _folder_images(path)
        if not files:
            scans.append(path)  # the reader says what a folder of B-scans must hold
            continue
        volume = folders == "auto" and looks_like_volume(files)
        if folders == "auto":
            notes.append(
                f"{path}: {len(files)} B-scans of one size with numbered names, read as ONE "
                "volume (--folders collection: each image a scan of its own)"
                if volume
                else f"{path}: {len(files)} B-scan images read as a collection, each a scan "
                "of its own (--folders volume: stack them as one scan)"
            )
            logger.info(notes[-1])
        if volume:
            scans.append(path)
        else:
            scans.extend(files)
    return scans, notes
