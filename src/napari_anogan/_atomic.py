"""Atomic file writing: write to a temporary name in the same folder, then rename.

A reader never sees a half-written output, and a crash or full disk leaves no file
that looks complete: only a ``.tmp-*`` file, removed on error. A process killed while
writing (SIGKILL, power loss) cannot remove its ``.tmp-*`` files; the next run that
writes into the folder does (:func:`remove_stale_temporaries`). A writer holds an
exclusive lock (``flock``) on its temporary file for as long as it writes, and the lock
goes with the process, so a temporary file that can be locked belongs to no live writer
and is removed, while one still being written (another task, another run) is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from napari_anogan.errors import OutputError

try:  # POSIX; elsewhere stale temporary files are left for the user to remove
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: Name prefix of every temporary file this package writes.
TEMP_PREFIX = ".tmp-"


class TempFile:
    """A new, locked temporary file beside ``path``: ``.tmp-<stem>-XXXX<suffix>``.

    The lock is held until :meth:`commit` or :meth:`discard`, so
    :func:`remove_stale_temporaries` never removes it while it is written.

    Parameters
    ----------
    path : str or PathLike
        Final destination. Its folder must exist and be writable.

    Raises
    ------
    OutputError
        If the folder is missing or not writable.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.target = Path(path)
        folder = self.target.parent if str(self.target.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError("output folder does not exist", folder)
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f"{TEMP_PREFIX}{self.target.stem}-", suffix=self.target.suffix, dir=folder
            )
        except OSError as exc:
            raise OutputError(f"cannot write in this folder ({exc.strerror})", folder) from exc
        self._fd: int | None = fd
        self.path = Path(tmp)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # mkstemp creates the file private (0600); give the output the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o666 & ~umask)

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def commit(self) -> Path:
        """Rename the temporary file to its destination; return the destination.

        Raises
        ------
        OutputError
            If the rename fails (the temporary file is then removed).
        """
        try:
            os.replace(self.path, self.target)
        except OSError as exc:
            self.discard()
            raise OutputError(f"could not write file ({exc.strerror or exc})", self.target) from exc
        self._release()
        return self.target

    def discard(self) -> None:
        """Remove the temporary file (if still there) and release its lock."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        self._release()

    def __del__(self) -> None:  # a forgotten TempFile does not keep its descriptor open
        with contextlib.suppress(Exception):
            self._release()


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
        still works), locked against :func:`remove_stale_temporaries` while written.

    Raises
    ------
    OutputError
        If the folder is missing or not writable, or writing fails (disk full...).
    """
    tmp = TempFile(path)
    try:
        yield tmp.path
    except OSError as exc:
        tmp.discard()
        raise OutputError(f"could not write file ({exc.strerror or exc})", path) from exc
    except BaseException:
        tmp.discard()
        raise
    tmp.commit()


@contextlib.contextmanager
def written_path(path: str | os.PathLike, *, atomic: bool = True) -> Iterator[Path]:
    """Yield where to write ``path``: :func:`atomic_path`, or ``path`` itself.

    ``atomic=False`` is for a file that is already a temporary one (a staged file of an
    output set, renamed later by its owner); an ``OSError`` still becomes an
    :class:`OutputError` naming the file.
    """
    if atomic:
        with atomic_path(path) as tmp:
            yield tmp
        return
    try:
        yield Path(path)
    except OSError as exc:
        raise OutputError(f"could not write file ({exc.strerror or exc})", path) from exc


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.tmp-*`` files of ``folder`` that no live writer holds.

    A writer killed before it could rename or remove its temporary file leaves it
    behind; every writer holds a lock on its own, so a file that can be locked now is
    such a leftover. Files still being written (another task or run writing into the
    same folder) are locked and kept. Without ``flock`` (Windows) nothing is removed.

    Parameters
    ----------
    folder : str or PathLike

    Returns
    -------
    list of Path
        The files removed.
    """
    if fcntl is None:
        return []
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(TEMP_PREFIX)]
    except OSError:
        return []
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held by a live writer
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed:
        logger.info(
            "removed %d temporary file(s) a killed run left in %s: %s",
            len(removed),
            folder,
            ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""),
        )
    return removed
