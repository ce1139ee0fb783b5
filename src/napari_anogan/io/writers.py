"""Write outputs atomically: OME-TIFF images, CSV tables, JSON summaries.

Every writer goes through :func:`napari_anogan._atomic.atomic_path`, so a reader never
sees a half-written file and a failed write leaves nothing behind. A missing or
unwritable folder raises :class:`~napari_anogan.errors.OutputError`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from napari_anogan._atomic import written_path
from napari_anogan.errors import OutputError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def write_tiff(
    path: PathLike,
    data: np.ndarray,
    spacing: Sequence[float | None] | None = None,
    *,
    atomic: bool = True,
) -> Path:
    """Write an image or volume as a zlib-compressed OME-TIFF.

    The file reads back through :func:`~napari_anogan.io.read_volume` with the same
    data, dtype and spacing.

    Parameters
    ----------
    path : str or PathLike
        Destination (``.tif`` / ``.ome.tif``); its folder must exist.
    data : (H, W) or (S, H, W) ndarray
        Grey values, axes (depth, width) or (slice, depth, width); any integer or
        float dtype tifffile can store (uint8, uint16, float32...).
    spacing : sequence of 3 (float or None), optional
        Micrometres along (slice, depth, width), written as OME ``PhysicalSizeZ/Y/X``
        in µm; None entries (or ``spacing=None``) are left out.
    atomic : bool
        Write to a temporary name renamed when complete (default); False writes ``path``
        itself (already a temporary file of an output set).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        If ``data`` is not 2-D or 3-D, or ``spacing`` does not have 3 entries.
    OutputError
        If the folder is missing or not writable, or writing fails.
    """
    import tifffile

    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (S, H, W) data, got shape {data.shape}")
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    metadata = _ome_metadata("YX" if data.ndim == 2 else "ZYX", spacing)
    path = Path(path)
    with written_path(path, atomic=atomic) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            ome=True,
            photometric="minisblack",
            compression="zlib",
            metadata=metadata,
        )
    logger.debug("wrote %s: shape %s %s, spacing %s", path, data.shape, data.dtype, spacing)
    return path


def _ome_metadata(axes: str, spacing: Sequence[float | None] | None) -> dict[str, Any]:
    """OME metadata for tifffile: axes and PhysicalSizeZ/Y/X in µm where known."""
    metadata: dict[str, Any] = {"axes": axes}
    if spacing is not None:
        if len(spacing) != 3:
            raise ValueError(f"spacing must be (slice, depth, width), got {spacing!r}")
        for axis, value in zip("ZYX", spacing, strict=True):
            if value is not None:
                metadata[f"PhysicalSize{axis}"] = float(value)
                metadata[f"PhysicalSize{axis}Unit"] = "µm"
    return metadata


_END = object()


class _Aborted(Exception):
    """The producer gave up; the partial file is removed."""


class TiffSliceWriter:
    """Write an (S, H, W) volume as one OME-TIFF, a chunk of B-scans at a time, atomically.

    The file is the same as :func:`write_tiff` would write for the whole array (zlib,
    OME axes ZYX, spacing), but the volume never has to be in memory: tifffile pulls
    the pages from a bounded queue in a writer thread while the caller computes the
    next chunk. The data goes to a temporary name that is renamed to ``path`` only when
    all S B-scans are written; on any error (or leaving the ``with`` block early) the
    temporary file is removed, so no complete-looking file is left behind.

    Parameters
    ----------
    path : str or PathLike
        Destination; its folder must exist.
    shape : tuple of int
        ``(S, H, W)`` of the whole volume.
    dtype : dtype
        Stored type (chunks are cast to it).
    spacing : sequence of 3 (float or None), optional
        Micrometres along (slice, depth, width).
    max_chunks : int
        Chunks waiting in the queue at most (bounds memory).
    atomic : bool
        Write to a temporary name renamed when complete (default); False writes ``path``
        itself (already a temporary file of an output set; removed if incomplete).

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "v.ome.tif")
    >>> with TiffSliceWriter(out, (4, 3, 2)) as w:
    ...     w.write(np.zeros((3, 3, 2)))
    ...     w.write(np.ones((1, 3, 2)))
    >>> import tifffile
    >>> float(tifffile.imread(out).sum())
    6.0
    """

    def __init__(
        self,
        path: PathLike,
        shape: Sequence[int],
        dtype: Any = np.float32,
        spacing: Sequence[float | None] | None = None,
        *,
        max_chunks: int = 2,
        atomic: bool = True,
    ) -> None:
        import queue

        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"expected a non-empty (S, H, W) shape, got {shape}")
        self.dtype = np.dtype(dtype)
        self.metadata = _ome_metadata("ZYX", spacing)
        self.written = 0
        self.atomic = atomic
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_chunks)))
        self._error: BaseException | None = None
        self._ended = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TiffSliceWriter:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError("output folder does not exist", folder)
        self._thread = threading.Thread(target=self._run, name="tiff-writer", daemon=True)
        self._thread.start()
        return self

    def _pages(self) -> Iterator[np.ndarray]:
        while True:
            item = self._queue.get()
            if item is _END:
                self._ended = True
                return
            if isinstance(item, _Aborted):
                raise item
            yield from item

    def _run(self) -> None:
        import tifffile

        try:
            with written_path(self.path, atomic=self.atomic) as tmp:
                tifffile.imwrite(
                    tmp,
                    data=self._pages(),
                    shape=self.shape,
                    dtype=self.dtype,
                    ome=True,
                    photometric="minisblack",
                    compression="zlib",
                    metadata=self.metadata,
                )
                # the file gets its name only when the producer says it is complete
                if not self._ended and self._queue.get() is not _END:
                    raise _Aborted()
        except BaseException as exc:  # reported to the producer thread
            self._error = exc
            if not self.atomic:  # no complete-looking file either way
                self.path.unlink(missing_ok=True)

    def _put(self, item: Any) -> None:
        import queue

        assert self._thread is not None
        while True:
            if self._error is not None:
                self._raise()
            if not self._thread.is_alive():
                return  # finished: it had all its pages and the end mark
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        exc = self._error
        if isinstance(exc, OutputError):
            raise exc
        raise OutputError(f"could not write file ({exc})", self.path) from exc

    def write(self, chunk: np.ndarray) -> None:
        """Append the next B-scans, (n, H, W) (or one (H, W) B-scan)."""
        chunk = np.asarray(chunk)
        if chunk.ndim == 2:
            chunk = chunk[None]
        if chunk.shape[1:] != self.shape[1:]:
            raise ValueError(f"expected B-scans of shape {self.shape[1:]}, got {chunk.shape[1:]}")
        if self.written + chunk.shape[0] > self.shape[0]:
            raise ValueError(f"more than the {self.shape[0]} B-scans declared")
        self._put(np.ascontiguousarray(chunk, dtype=self.dtype))
        self.written += chunk.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._thread is not None
        complete = exc_type is None and self.written == self.shape[0]
        try:
            self._put(_END if complete else _Aborted())
        except OutputError:
            if exc_type is None:
                raise
        self._thread.join()
        if exc_type is not None:
            return  # the caller's exception goes on; the partial file is gone
        if not complete:
            raise OutputError(
                f"only {self.written} of {self.shape[0]} B-scans were written", self.path
            )
        if self._error is not None:
            self._raise()
        logger.debug("wrote %s: shape %s %s", self.path, self.shape, self.dtype)


def _csv_value(value: Any) -> Any:
    """Convert a cell: numpy scalars to Python, floats with shortest round-trip repr."""
    if value is None:
        return ""
    if isinstance(value, np.generic):
        if isinstance(value, np.floating):
            # numpy's str is the shortest repr that round-trips in the value's own dtype
            return str(value)
        return value.item()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, PurePath):
        return str(value)
    return value


def write_csv(
    path: PathLike,
    rows: Iterable[Mapping[str, object]],
    columns: Sequence[str] | None = None,
    *,
    atomic: bool = True,
) -> Path:
    """Write a table as UTF-8 CSV with a header row.

    Parameters
    ----------
    path : str or PathLike
        Destination; its folder must exist.
    rows : iterable of mapping
        One mapping per row, column name -> value. Floats are written with ``repr``
        precision (they read back exactly), numpy scalars as Python values, None and
        missing keys as empty cells. With ``columns`` given, an iterator is consumed
        once, row by row (a big table never has to be built in memory).
    columns : sequence of str, optional
        Column order. Keys not listed are left out. Default: keys in order of first
        appearance over all rows.
    atomic : bool
        Write to a temporary name renamed when complete (default); False writes ``path``
        itself (already a temporary file of an output set).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    OutputError
        If the folder is missing or not writable, or writing fails.
    """
    if columns is None:
        rows = list(rows)
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    columns = list(columns)
    path = Path(path)
    n = 0
    with (
        written_path(path, atomic=atomic) as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items() if k in columns})
            n += 1
    logger.debug("wrote %s: %d rows x %d columns", path, n, len(columns))
    return path


def _json_default(obj: Any) -> Any:
    """Convert what :mod:`json` cannot encode natively."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (numpy ones too) replaced by None."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite_or_none(obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _finite_or_none(dataclasses.asdict(obj))
    return obj


def write_json(path: PathLike, obj: Any, *, atomic: bool = True) -> Path:
    """Write ``obj`` as JSON (UTF-8, indent 2, trailing newline).

    Parameters
    ----------
    path : str or PathLike
        Destination; its folder must exist.
    obj : object
        JSON-compatible data; numpy arrays and scalars, paths, sets and dataclass
        instances are converted. Non-finite floats (NaN, infinity: a missing value)
        are written as ``null``: the file is always standard JSON.
    atomic : bool
        Write to a temporary name renamed when complete (default); False writes ``path``
        itself.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    TypeError
        If ``obj`` holds something that cannot be converted (no file is left behind).
    OutputError
        If the folder is missing or not writable, or writing fails.
    """
    text = json.dumps(
        _finite_or_none(obj),
        indent=2,
        ensure_ascii=False,
        default=_json_default,
        allow_nan=False,
    )
    path = Path(path)
    with written_path(path, atomic=atomic) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    logger.debug("wrote %s", path)
    return path


__all__ = ["TiffSliceWriter", "safe_stem", "write_csv", "write_json", "write_tiff"]


_UNSAFE = re.compile(r"[/\\:\x00-\x1f]")


def safe_stem(name: str) -> str:
    """Make a volume name safe to use as a file name inside an output folder.

    Names come from file names and (vendor) metadata. Whatever they hold, outputs must
    land in the output folder: path separators, drive colons and control characters are
    replaced by ``_``, and a name that is empty, ``.`` or ``..`` becomes ``volume``. The
    result is one file name component, so ``outdir / f"{stem}_x.tif"`` is always inside
    ``outdir``.

    Parameters
    ----------
    name : str
        The volume name (e.g. :attr:`Volume.name`).

    Returns
    -------
    str

    Examples
    --------
    >>> safe_stem("../../etc/passwd"), safe_stem("scan 1"), safe_stem("..")
    ('.._.._etc_passwd', 'scan 1', 'volume')
    """
    stem = _UNSAFE.sub("_", str(name)).strip()
    return "volume" if stem in ("", ".", "..") else stem
