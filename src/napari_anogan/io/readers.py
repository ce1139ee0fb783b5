"""Read OCT data from files and folders into a :class:`Volume`.

One entry point, :func:`read_volume`, dispatches on what the path is:

* a TIFF / OME-TIFF / ImageJ TIFF (tifffile), 2-D or multi-page;
* a PNG, JPEG or BMP B-scan (Pillow);
* a ``.npy`` array (never unpickled);
* a folder of B-scans, or a list of B-scan files (stacked in natural order);
* a vendor file (``.vol``, ``.e2e``, ``.fds``, ``.fda``, ``.img``, ``.dcm``) through the
  optional ``vendor`` extra (see :mod:`napari_anogan.io.vendor`).

Every format reader returns a :class:`_RawRead` (array + spacing + metadata) and
:func:`read_volume` alone validates and builds the :class:`Volume`. With ``lazy=True``
(or ``lazy=None`` and a big file) a grey TIFF series or a ``.npy`` comes back as a dask
array that reads B-scans only when they are used (one TIFF page or ``.npy`` slice range
per chunk, by ordinary file reads, so the memory of a chunk is freed once it is used);
the NaN check then happens where the values are read (preprocessing), still as an
:class:`InputError` naming the file.

Anything wrong with the input (missing, empty, corrupt, wrong dimensions, NaN...)
raises :class:`~napari_anogan.errors.InputError` naming the file and what was expected;
no tifffile / Pillow / numpy exception escapes.

Over 500 lines on purpose: the format readers share the validation, spacing and lazy
(dask) helpers here, and every format must fail the same way, so they are kept together.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_anogan.errors import InputError
from napari_anogan.io.vendor import VENDOR_SUFFIXES, read_vendor
from napari_anogan.io.volume import Volume, plausible_spacing

logger = logging.getLogger(__name__)

Spacing = tuple[float | None, float | None, float | None]
PathLike = str | os.PathLike

#: TIFF suffixes (OME-TIFF ``.ome.tif`` included).
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
#: Single-image suffixes read with Pillow.
PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
#: Suffixes of B-scan images picked up from a folder.
IMAGE_SUFFIXES: tuple[str, ...] = TIFF_SUFFIXES + PIL_SUFFIXES
#: Every file suffix :func:`read_volume` accepts (vendor ones need the ``vendor`` extra).
SUPPORTED_SUFFIXES: tuple[str, ...] = (*IMAGE_SUFFIXES, ".npy", *VENDOR_SUFFIXES)

_NO_SPACING: Spacing = (None, None, None)
_MASK_NAME = re.compile(r"[_-]mask(\.ome)?\.[^.]+$", re.IGNORECASE)
# ITU-R BT.709 luma, the weights of skimage.color.rgb2gray.
_LUMA = np.array([0.2125, 0.7154, 0.0721])
# Length units of OME / ImageJ / TIFF metadata, in micrometres.
_UNIT_UM: dict[str, float] = {
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00b5m": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
}
_TIFF_RESUNIT_UM = {2: 25400.0, 3: 1e4}  # ResolutionUnit tag: 2 inch, 3 centimetre
# Below this many pixels per inch a TIFF resolution is a screen/print default (72, 96,
# 300 dpi...), not a physical OCT pixel size (OCT pixels are a few micrometres, i.e.
# thousands of dpi).
_MIN_PHYSICAL_DPI = 1000.0


@dataclass
class _RawRead:
    """What a format reader found, before validation."""

    data: np.ndarray
    spacing: Spacing = _NO_SPACING
    metadata: dict[str, Any] = field(default_factory=dict)
    # Axis holding colour samples (RGB/RGBA...), or None for grey data.
    channel_axis: int | None = None
    # Already checked by _finish (B-scans of a folder are checked one by one).
    validated: bool = False


# ---------------------------------------------------------------------- memory checks


def available_memory() -> int | None:
    """Bytes this process can still allocate (None when unknown).

    The system's available memory (``MemAvailable`` of ``/proc/meminfo``, else free
    pages), and below it the room left under this process's address-space limit
    (``ulimit -v``), if one is set.
    """
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            avail = None
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/statm", encoding="ascii") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            room = max(0, limit - used)
            avail = room if avail is None else min(avail, room)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return avail


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_fits_in_memory(
    shape: Sequence[int], dtype: Any, path: PathLike, what: str = "image"
) -> None:
    """Refuse, before reading, data whose declared size exceeds the memory available.

    A tiny file can declare a huge image (a TIFF or ``.npy`` header says 100000 x 100000
    float64: 75 GiB); reading it would end in a ``MemoryError`` deep inside the reader.

    Raises
    ------
    InputError
        Naming the file, the declared shape, type and size, and the memory available.
    """
    nbytes = int(np.prod([int(v) for v in shape], dtype=object)) * np.dtype(dtype).itemsize
    avail = available_memory()
    if avail is not None and nbytes > avail:
        dims = "x".join(str(int(v)) for v in shape)
        raise InputError(
            f"declares a {dims} {np.dtype(dtype)} {what} ({_gib(nbytes)}), more than the "
            f"{_gib(avail)} of memory available; expected an OCT scan that fits in memory "
            "(a damaged header?)",
            path,
        )


# --------------------------------------------------------------------------- public API


def is_supported(path: PathLike | Sequence[PathLike]) -> bool:
    """Cheaply tell whether :func:`read_volume` would try to read ``path``.

    Looks only at suffixes (and lists a folder); never opens a file and never raises,
    so a napari reader can call it on anything.

    Parameters
    ----------
    path : str, PathLike or sequence of them
        A file, a folder of B-scans or a list of B-scan files.

    Returns
    -------
    bool
        True for a supported suffix, a folder holding at least one B-scan image, or a
        non-empty list of supported files.
    """
    try:
        if isinstance(path, str | os.PathLike):
            p = Path(path)
            if p.is_dir():
                return bool(_folder_images(p))
            return p.suffix.lower() in SUPPORTED_SUFFIXES
        paths = list(path)
        return bool(paths) and all(
            isinstance(p, str | os.PathLike) and Path(p).suffix.lower() in SUPPORTED_SUFFIXES
            for p in paths
        )
    except Exception:  # a reader probe must never raise
        return False


#: ``lazy=None`` reads a file lazily when its uncompressed data is at least this big.
LAZY_MIN_BYTES = 512 * 2**20
#: B-scans per chunk of a lazy volume's dask array (at most; about 16 MiB per chunk).
LAZY_CHUNK_BYTES = 16 * 2**20


def read_volume(path: PathLike | Sequence[PathLike], *, lazy: bool | None = False) -> Volume:
    """Read an OCT volume or B-scan(s) into a :class:`Volume`.

    Parameters
    ----------
    path : str, PathLike or sequence of them
        One of:

        * a multi-page TIFF / OME-TIFF / ImageJ TIFF: (H, W) -> (1, H, W), (S, H, W)
          kept; a trailing colour axis of 3 or 4 samples is an RGB(A) B-scan;
        * a PNG / JPEG / BMP / TIFF B-scan: (1, H, W);
        * a ``.npy`` array, (H, W) or (S, H, W), loaded with ``allow_pickle=False``;
        * a folder of B-scan images, stacked in natural order (``scan2`` before
          ``scan10``); hidden files and masks (``*_mask.*``, ``*-mask.*``) are skipped;
        * a list of B-scan files, stacked in the given order (a one-item list is read
          like that file);
        * a vendor file (``.vol``, ``.e2e``, ``.fds``, ``.fda``, ``.img``, ``.dcm``),
          which needs ``pip install "napari-anogan[vendor]"``.
    lazy : bool or None
        False (default): read everything now. True: a grey TIFF series whose pages are
        the B-scans, or a ``.npy``, becomes a dask array read chunk by chunk when used
        (other inputs are read now); NaN/inf are then reported when the values are
        read. None: lazy when the uncompressed data is at least :data:`LAZY_MIN_BYTES`.

    Returns
    -------
    Volume
        ``data`` is (S, H, W) in the file's dtype (bool becomes uint8 0/1); colour is
        converted to grey luminance with a warning. ``spacing`` is micrometres along
        (slice, depth, width) from OME or ImageJ metadata or TIFF resolution tags, None
        where unknown. ``name`` is the file stem (without ``.ome``) or folder name.

    Raises
    ------
    InputError
        If the path does not exist, is empty, corrupt, of an unknown type, not 2-D or
        3-D, has a zero-size axis or NaN/inf values, or a folder holds no images or
        images of different shapes. The message names the file and what was expected.

    Warns
    -----
    UserWarning
        When colour (RGB/RGBA) images were converted to grey (also logged).
    """
    if isinstance(path, str | os.PathLike):
        p = Path(path)
        lazy_volume = _read_lazy(p, lazy) if lazy is not False else None
        if lazy_volume is not None:
            return lazy_volume
        raw = _read_path(p)
        source, name = str(p), volume_name(p)
    else:
        paths = [Path(x) for x in path]
        if not paths:
            raise InputError("no files given; expected at least one B-scan file")
        if len(paths) == 1:
            return read_volume(paths[0])
        raw = _read_stack(paths, kind="list")
        parents = {q.parent for q in paths}
        common = parents.pop() if len(parents) == 1 else None
        source = str(common) if common is not None else str(paths[0])
        name = volume_name(common) if common is not None else volume_name(paths[0])

    data = _finish(raw, Path(source))
    grey_from = raw.metadata.get("converted_from_rgb")
    if grey_from:
        msg = f"{grey_from}: colour image converted to grey (luminance, ITU-R BT.709)"
        logger.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    logger.info("read %s: shape %s, dtype %s", source, data.shape, data.dtype)
    spacing = plausible_spacing(raw.spacing, source)
    return Volume(data=data, spacing=spacing, source=source, name=name, metadata=raw.metadata)


# --------------------------------------------------------------------------- lazy reads


class _LazySlices:
    """Array-like over the B-scans of a file, reading only the slices asked for.

    ``dask.array.from_array`` calls ``__getitem__`` with one chunk's slices; every call
    opens the file, reads those B-scans with ordinary reads (no memory map, so nothing
    stays resident) and closes it again, so it is safe from several threads.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype, kind: str):
        self.path, self.shape, self.dtype, self.kind = path, shape, np.dtype(dtype), kind
        self.ndim = 3

    def _read(self, start: int, stop: int, step: int) -> np.ndarray:
        if self.kind == "tiff":
            import tifffile

            # tifffile logs (and patches over) some corruptions
            with _tifffile_errors() as errors, tifffile.TiffFile(self.path) as tif:
                out = tif.asarray(key=list(range(start, stop, step)), series=0)
            if errors.messages:
                raise ValueError("; ".join(errors.messages[:3]))
        else:
            mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
            try:
                out = np.array(mapped[start:stop:step])
            finally:
                del mapped  # unmap: the pages read do not stay in this process
        return out.reshape(-1, *self.shape[1:])

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0] if key else slice(None), key[1:]
        if isinstance(first, int | np.integer):
            rows = slice(int(first), int(first) + 1 if int(first) != -1 else None)
            start, stop, step = rows.indices(self.shape[0])
            squeeze = True
        elif isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            squeeze = False
        else:  # an index array: read the range it spans, then pick
            idx = np.arange(self.shape[0])[first]
            if idx.size == 0:
                return np.zeros((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
            block = self[int(idx.min()) : int(idx.max()) + 1]
            return block[(idx - int(idx.min()), *rest)]
        if stop <= start and step > 0:
            data = np.zeros((0, *self.shape[1:]), self.dtype)
        else:
            try:
                data = self._read(start, stop, step)
            except Exception as exc:
                raise InputError(
                    f"cannot read B-scans {start}-{stop - 1} (corrupt or truncated?): "
                    f"{type(exc).__name__}: {exc}",
                    self.path,
                ) from exc
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        data = data.astype(self.dtype, copy=False)
        if squeeze:
            return data[0][rest] if rest else data[0]
        return data[(slice(None), *rest)] if rest else data


def _lazy_header(path: Path) -> tuple[str, tuple[int, ...], np.dtype, _RawRead] | None:
    """Shape and dtype of a file that can be read lazily, with its metadata; else None."""
    suffix = _check_file(path)
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            with _tifffile_errors(), tifffile.TiffFile(path) as tif:
                if not tif.series:
                    return None
                series = tif.series[0]
                shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
                if len(shape) != 3 or "S" in axes or len(series.pages) != shape[0]:
                    return None  # colour, 2-D or pages that are not the B-scans: read now
                if tuple(series.keyframe.shape) != shape[1:]:
                    return None
                check_fits_in_memory(shape[1:], dtype, path, "B-scan")
                spacing, fmt = _NO_SPACING, "tiff"
                if tif.is_ome and tif.ome_metadata:
                    fmt, spacing = "ome-tiff", _ome_spacing(tif.ome_metadata)
                elif tif.is_imagej:
                    fmt = "imagej-tiff"
                    spacing = _imagej_spacing(tif.imagej_metadata or {}, tif.pages[0])
                else:
                    spacing = _tag_spacing(tif.pages[0])
        except InputError:
            raise
        except Exception:
            return None  # let the eager reader give its precise error
        return "tiff", shape, dtype, _RawRead(np.empty(0), spacing, {"format": fmt, "axes": axes})
    if suffix == ".npy":
        header = _npy_header(path)
        if header is None:
            return None  # not a plain .npy: the eager reader says what it is
        shape, dtype = header
        if dtype.hasobject or dtype.kind not in "biuf":
            return None
        if len(shape) != 3 or _guess_channel_axis(shape) is not None:
            return None
        check_fits_in_memory(shape[1:], dtype, path, "B-scan")
        return "npy", shape, dtype, _RawRead(np.empty(0), _NO_SPACING, {"format": "npy"})
    return None


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype a ``.npy`` file declares, checked against its size.

    None if it is not a ``.npy`` file (a renamed ``.npz``, garbage): the eager reader
    then says what it is.

    Raises
    ------
    InputError
        If the file is shorter than its header says (truncated, or a damaged header).
    """
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = npy_format.read_array_header_2_0(fh)
            else:
                return None
            offset = fh.tell()
    except Exception:
        return None
    if dtype.hasobject:
        return tuple(shape), dtype
    declared = int(np.prod([int(v) for v in shape], dtype=object)) * dtype.itemsize
    size = path.stat().st_size - offset
    if size < declared:
        dims = "x".join(str(int(v)) for v in shape) or "scalar"
        raise InputError(
            f"declares a {dims} {dtype} array ({declared} bytes of data) but holds "
            f"{size}; expected a complete .npy file (truncated, or a damaged header?)",
            path,
        )
    return tuple(int(v) for v in shape), dtype


def _read_lazy(path: Path, lazy: bool | None) -> Volume | None:
    """Return a :class:`Volume` over a dask array (big file, or ``lazy=True``), or None."""
    if path.is_dir() or not path.exists():
        return None
    header = _lazy_header(path)
    if header is None:
        return None
    kind, shape, dtype, raw = header
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif" or 0 in shape:
        return None  # the eager reader converts bool and reports odd dtypes and sizes
    if lazy is None and int(np.prod(shape)) * dtype.itemsize < LAZY_MIN_BYTES:
        return None
    import dask.array as da

    native = dtype.newbyteorder("=")
    chunk = max(1, min(shape[0], LAZY_CHUNK_BYTES // max(1, shape[1] * shape[2] * dtype.itemsize)))
    source = _LazySlices(path, shape, native, kind)
    data = da.from_array(
        source,
        chunks=(chunk, shape[1], shape[2]),
        name=f"napari-anogan-{kind}-{path.resolve()}-{path.stat().st_mtime_ns}",
        meta=np.empty((0, 0, 0), native),
        lock=False,
        asarray=False,
    )
    raw.metadata["lazy"] = True
    logger.info("read %s lazily: shape %s, dtype %s, chunks of %d", path, shape, dtype, chunk)
    return Volume(
        data=data,
        spacing=plausible_spacing(raw.spacing, str(path)),
        source=str(path),
        name=volume_name(path),
        metadata=raw.metadata,
    )


# ------------------------------------------------------------------------- dispatching


def volume_name(path: Path) -> str:
    """File stem without ``.ome``, or folder name."""
    if path.is_dir() or not path.suffix:
        return path.resolve().name or "volume"
    stem = path.stem
    if stem.lower().endswith(".ome"):
        stem = stem[:-4]
    return stem or "volume"


def _read_path(path: Path) -> _RawRead:
    """Read one file or folder (no validation of the array yet)."""
    if path.is_dir():
        files = _folder_images(path)
        if not files:
            raise InputError(
                "folder holds no B-scan images; expected files ending in "
                + ", ".join(IMAGE_SUFFIXES)
                + " (masks named *_mask.* / *-mask.* are skipped)",
                path,
            )
        raw = _read_stack(files, kind="folder")
        raw.metadata["format"] = "folder"
        return raw
    return _read_file(path)


def _check_file(path: Path) -> str:
    """Check that ``path`` is a readable, non-empty file of a known type; return suffix."""
    if not path.exists():
        raise InputError("file or folder not found", path)
    if not path.is_file():
        raise InputError("not a regular file or folder", path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"unsupported file type {suffix or '(no suffix)'!r}; expected one of "
            + ", ".join(SUPPORTED_SUFFIXES)
            + " or a folder of B-scans",
            path,
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot access file ({exc.strerror})", path) from exc
    if size == 0:
        raise InputError("file is empty (0 bytes); expected an image or volume", path)
    return suffix


def _read_file(path: Path) -> _RawRead:
    """Read one file by suffix, turning any library error into :class:`InputError`."""
    suffix = _check_file(path)
    if suffix in VENDOR_SUFFIXES:
        data, spacing, metadata = read_vendor(path)
        return _RawRead(np.asarray(data), spacing, metadata)
    if suffix in TIFF_SUFFIXES:
        reader, kind = _read_tiff, "TIFF"
    elif suffix in PIL_SUFFIXES:
        reader, kind = _read_pil, suffix.lstrip(".").upper()
    else:
        reader, kind = _read_npy, "NumPy .npy"
    try:
        return reader(path)
    except InputError:
        raise
    except MemoryError as exc:  # the image fits (checked): the file's own sizes are absurd
        raise InputError(
            f"cannot read as {kind}: reading it needs more memory than available (a "
            "damaged header declaring huge strips or chunks?)",
            path,
        ) from exc
    except Exception as exc:  # tifffile, imagecodecs, Pillow, numpy: all mean "bad file"
        raise InputError(
            f"cannot read as {kind} (corrupt or truncated?): {type(exc).__name__}: {exc}",
            path,
        ) from exc


# ----------------------------------------------------------------------------- formats


class _ErrorLog(logging.Handler):
    """Collect the records tifffile logs (in this thread) instead of raising.

    tifffile recovers from a broken page chain or a series that does not match its
    declared shape by logging an error and returning *part* of the data; for us that is
    a corrupt file (``messages``). Its warnings (``warnings``) explain a file in which it
    found no image at all; otherwise they are logged at debug level.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        if record.levelno >= logging.ERROR:
            self.messages.append(record.getMessage())
        else:
            self.warnings.append(record.getMessage())
            logger.debug("tifffile: %s", record.getMessage())


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[_ErrorLog]:
    """Collect the errors tifffile logs in this thread instead of printing them.

    They are reported once, in the :class:`InputError` of the file, not also as log
    lines of their own (in a Dask worker, bare lines on stderr).
    """
    errors = _ErrorLog()
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(errors)
    propagate, level = tiff_logger.propagate, tiff_logger.level
    tiff_logger.propagate = False
    # whatever level an application set, corruption must reach this handler
    tiff_logger.setLevel(logging.WARNING)
    try:
        yield errors
    finally:
        tiff_logger.removeHandler(errors)
        tiff_logger.propagate = propagate
        tiff_logger.setLevel(level)


def _read_tiff(path: Path) -> _RawRead:
    """Read the first series of a TIFF with tifffile, with its physical pixel size."""
    import tifffile

    def corrupt(messages: list[str]) -> InputError:
        return InputError(
            "cannot read as TIFF (corrupt or truncated?): " + "; ".join(messages[:3]), path
        )

    with _tifffile_errors() as errors, tifffile.TiffFile(path) as tif:
        if not tif.series:
            if errors.messages or errors.warnings:
                raise corrupt(errors.messages + errors.warnings)
            raise InputError("TIFF holds no image data", path)
        if len(tif.series) > 1:
            logger.info("%s holds %d image series; reading the first", path, len(tif.series))
        series = tif.series[0]
        check_fits_in_memory(series.shape, series.dtype, path)
        data = series.asarray()
        axes = series.axes
        spacing = _NO_SPACING
        fmt = "tiff"
        if tif.is_ome and tif.ome_metadata:
            fmt = "ome-tiff"
            spacing = _ome_spacing(tif.ome_metadata)
        elif tif.is_imagej:
            fmt = "imagej-tiff"
            spacing = _imagej_spacing(tif.imagej_metadata or {}, tif.pages[0])
        else:
            spacing = _tag_spacing(tif.pages[0])
    if errors.messages:
        raise corrupt(errors.messages)
    channel_axis = axes.index("S") if "S" in axes and len(axes) == data.ndim else None
    if channel_axis is None and not fmt.startswith(("ome", "imagej")):
        channel_axis = _guess_channel_axis(data.shape)
    logger.debug("%s: TIFF series axes %s shape %s", path, axes, data.shape)
    return _RawRead(data, spacing, {"format": fmt, "axes": axes}, channel_axis)


def _read_pil(path: Path) -> _RawRead:
    """Read a PNG / JPEG / BMP B-scan with Pillow (truncated files raise)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if getattr(img, "n_frames", 1) > 1:
            logger.info("%s has %d frames; reading the first", path, img.n_frames)
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode == "PA":
            img = img.convert("RGBA")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        data = np.array(img)
    channel_axis = 2 if data.ndim == 3 else None
    return _RawRead(data, _NO_SPACING, {"format": path.suffix.lower().lstrip(".")}, channel_axis)


def _read_npy(path: Path) -> _RawRead:
    """Load a plain numeric ``.npy`` (never unpickles)."""
    header = _npy_header(path)
    if header is not None and not header[1].hasobject:
        check_fits_in_memory(*header, path)
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise InputError(
                "holds pickled Python objects, which are not loaded for safety; "
                "expected a plain numeric array saved with np.save",
                path,
            ) from exc
        raise
    if not isinstance(data, np.ndarray):  # np.load on a .npz-in-disguise gives NpzFile
        raise InputError("not a single .npy array; expected one array saved with np.save", path)
    return _RawRead(data, _NO_SPACING, {"format": "npy"}, _guess_channel_axis(data.shape))


def _guess_channel_axis(shape: tuple[int, ...]) -> int | None:
    """Last axis if it looks like RGB(A) samples of a B-scan (H, W, 3|4) or volume."""
    if len(shape) in (3, 4) and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4:
        return len(shape) - 1
    return None


# -------------------------------------------------------------------- folders & lists


def _natural_key(path: Path) -> list[Any]:
    """Sort key putting ``scan2`` before ``scan10``."""
    parts = re.split(r"(\d+)", path.name.lower())
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def _folder_images(folder: Path) -> list[Path]:
    """B-scan images of a folder in natural order, without hidden files and masks."""
    files = [
        Path(entry.path)
        for entry in os.scandir(folder)
        if entry.is_file()
        and not entry.name.startswith(".")
        and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        and not _MASK_NAME.search(entry.name)
    ]
    return sorted(files, key=_natural_key)


def _read_stack(files: Sequence[Path], *, kind: str) -> _RawRead:
    """Read single B-scans, validate each, and stack them to (S, H, W)."""
    scans: list[np.ndarray] = []
    colour_files: list[Path] = []
    spacing = _NO_SPACING
    for i, f in enumerate(files):
        raw = _read_file(f)
        scan = _finish(raw, f)
        if raw.metadata.get("converted_from_rgb"):
            colour_files.append(f)
        if scan.shape[0] != 1:
            raise InputError(
                f"holds {scan.shape[0]} B-scans of shape {scan.shape[1:]}; every file of a "
                f"{kind} must be a single 2-D B-scan (H, W)",
                f,
            )
        if i == 0:
            spacing = (None, raw.spacing[1], raw.spacing[2])
        scans.append(scan[0])

    shapes = Counter(s.shape for s in scans)
    usual = max(shapes, key=lambda shp: (shapes[shp], shp == scans[0].shape))
    dtypes = Counter(s.dtype for s in scans)
    usual_dtype = max(dtypes, key=lambda dt: (dtypes[dt], dt == scans[0].dtype))
    for f, s in zip(files, scans, strict=True):
        if s.shape != usual:
            raise InputError(
                f"B-scan has shape {s.shape} but the other B-scans of this {kind} have "
                f"{usual}; expected all B-scans to have the same shape",
                f,
            )
        if s.dtype != usual_dtype:
            raise InputError(
                f"B-scan has dtype {s.dtype} but the other B-scans of this {kind} have "
                f"{usual_dtype}; expected all B-scans to have the same bit depth",
                f,
            )
    metadata: dict[str, Any] = {"format": kind, "files": [str(f) for f in files]}
    if colour_files:
        n = len(colour_files)
        metadata["converted_from_rgb"] = (
            str(colour_files[0]) if n == 1 else f"{colour_files[0]} and {n - 1} other file(s)"
        )
    return _RawRead(np.stack(scans), spacing, metadata, validated=True)


# -------------------------------------------------------------------------- validation


def _to_grey(raw: _RawRead, path: Path) -> np.ndarray:
    """Drop the colour axis: RGB(A) -> luminance, grey+alpha -> grey. Keeps the dtype."""
    data = raw.data
    if raw.channel_axis is None:
        return data
    data = np.moveaxis(data, raw.channel_axis, -1)
    n = data.shape[-1]
    if n == 1:
        return data[..., 0]
    if n == 2:  # grey + alpha
        return data[..., 0]
    if n not in (3, 4):
        raise InputError(f"has {n} samples per pixel; expected grey, RGB or RGBA B-scans", path)
    rgb = data[..., :3]
    if data.dtype.kind == "f":
        grey = (rgb @ _LUMA.astype(data.dtype)).astype(data.dtype, copy=False)
    elif data.dtype.kind in "ui":
        # Grey stored as RGB is returned exactly; true colour is rounded luminance.
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            grey = rgb[..., 0].copy()
        else:
            info = np.iinfo(data.dtype)
            grey = np.clip(np.rint(rgb @ _LUMA), info.min, info.max).astype(data.dtype)
    else:
        raise InputError(f"colour image of unsupported dtype {data.dtype}", path)
    raw.metadata["converted_from_rgb"] = str(path)
    return grey


def _finish(raw: _RawRead, path: Path) -> np.ndarray:
    """Validate and shape the array to (S, H, W); raise InputError naming ``path``."""
    if raw.validated:
        return raw.data
    data = _to_grey(raw, path) if raw.channel_axis is not None else raw.data
    raw.channel_axis = None
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind in "uif" and not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if data.dtype.kind not in "uif":
        raise InputError(
            f"has data type {data.dtype}; expected integer or floating-point grey values",
            path,
        )
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise InputError(
            f"has {data.ndim}-D data of shape {data.shape}; expected a 2-D B-scan (H, W) "
            "or a 3-D volume (slices, H, W)",
            path,
        )
    if 0 in data.shape:
        raise InputError(
            f"has an axis of size 0 (shape {data.shape}); expected a non-empty image", path
        )
    if data.dtype.kind == "f":
        bad = data.size - int(np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(
                f"contains {bad} NaN or infinite value(s); expected finite grey values",
                path,
            )
    return data


# ------------------------------------------------------------------------------ spacing


def _to_um(value: Any, unit: str | None) -> float | None:
    """Return a positive finite length in micrometres, or None."""
    if value is None:
        return None
    factor = _UNIT_UM.get((unit or "µm").strip().lower().replace("\u03bc", "\u00b5"))
    if factor is None:
        return None
    try:
        v = float(value) * factor
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _ome_spacing(ome_xml: str) -> Spacing:
    """PhysicalSizeZ/Y/X (with units, default µm) of the first OME Pixels element."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        logger.debug("unparsable OME-XML; no spacing")
        return _NO_SPACING
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return _NO_SPACING
    z, y, x = (
        _to_um(pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit")) for a in "ZYX"
    )
    return (z, y, x)


def _resolution_um(tag: Any, unit_um: float) -> float | None:
    """Pixel size from an X/YResolution tag (pixels per unit) given the unit in µm."""
    if tag is None:
        return None
    value = tag.value
    try:
        num, den = value if isinstance(value, tuple) else (value, 1)
        per_unit = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not np.isfinite(per_unit) or per_unit <= 0:
        return None
    return unit_um / per_unit


def _imagej_spacing(meta: dict[str, Any], page: Any) -> Spacing:
    """ImageJ ``unit`` + ``spacing`` (z) and X/YResolution (pixels per unit)."""
    unit = meta.get("unit")
    unit_um = _to_um(1.0, str(unit)) if unit else None
    if unit_um is None:  # no unit, or 'pixel': no physical size
        return _NO_SPACING
    x = _resolution_um(page.tags.get("XResolution"), unit_um)
    y = _resolution_um(page.tags.get("YResolution"), unit_um)
    z = _to_um(meta.get("spacing"), str(unit))
    return (z, y, x)


def _tag_spacing(page: Any) -> Spacing:
    """Baseline TIFF X/YResolution with ResolutionUnit inch or centimetre."""
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
    unit_um = _TIFF_RESUNIT_UM.get(unit)
    if unit_um is None:
        return _NO_SPACING
    x = _resolution_um(page.tags.get("XResolution"), unit_um)
    y = _resolution_um(page.tags.get("YResolution"), unit_um)
    limit = 25400.0 / _MIN_PHYSICAL_DPI
    if (x is not None and x > limit) or (y is not None and y > limit):
        logger.debug("ignoring TIFF resolution (%s, %s) µm: a screen/print default", x, y)
        return _NO_SPACING
    return (None, y, x)
