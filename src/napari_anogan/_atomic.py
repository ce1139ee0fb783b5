"""Atomic file writing: write to a temporary name in the same folder, then rename.

A reader never sees a half-written output, and a crash or full disk leaves no file
that looks complete (only a ``.tmp-*`` file, removed on error).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from napari_anogan.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    Parameters
    ----------
    path : str or PathLike
        Final destination. Its folder must exist and be writable.

    Yields
    ------
    Path
        Temporary file to write (same folder and suffix, so format detection by suffix
        still works).

    Raises
    ------
    OutputError
        If the folder is missing or not writable, or writing fails (disk full...).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError("output folder does not exist", folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write in this folder ({exc.strerror})", folder) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates the file private (0600); give the output the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise OutputError(f"could not write file ({exc.strerror or exc})", path) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
