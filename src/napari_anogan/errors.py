"""Project exceptions: errors a user can cause, with a message that names the file."""

from __future__ import annotations

from os import PathLike


class AnoganError(Exception):
    """Base class of every error napari-anogan raises on purpose.

    The CLI prints ``str(error)`` on one line and exits non-zero; the GUI shows it as a
    notification. Anything else escaping is a bug.
    """


class InputError(AnoganError):
    """Input data is unusable: corrupt, empty, wrong shape, NaN, unknown format...

    Parameters
    ----------
    message : str
        What is wrong and what was expected.
    path : str or PathLike, optional
        The offending file or folder; prefixed to the message when given.
    """

    def __init__(self, message: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ModelError(AnoganError):
    """A checkpoint cannot be used: unreadable, needs pickle, or does not match the input."""

    def __init__(self, message: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class OutputError(AnoganError):
    """An output cannot be written: folder not writable, disk full..."""

    def __init__(self, message: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ClusterError(AnoganError):
    """Dask cannot run the batch: the local cluster does not start, the scheduler is unreachable."""
