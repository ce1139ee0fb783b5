"""A volume's ``score`` outputs as one set: written together, trusted only when complete.

Every file of a set is written to a locked temporary name, the files are renamed
together and ``<stem>_summary.json`` is written last with a manifest of the others (name,
size, SHA-256). The summary declares the set complete: a reader (the skip-done check of
Dask batches, the napari reader) trusts a set only when its files match the manifest
(:func:`verify_output_set`), so a run killed between two renames, or files of two runs
side by side, are never taken for one result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_anogan._atomic import TempFile
from napari_anogan.errors import OutputError
from napari_anogan.io import write_json

logger = logging.getLogger(__name__)

#: Files a complete ``score`` output set must list in its summary's manifest.
REQUIRED_IN_SET = ("residual", "scores")

_HASH_CHUNK = 1 << 20


def describe_file(path: str | Path) -> dict[str, Any]:
    """Manifest entry of a file: its name, size in bytes and SHA-256.

    SHA-256 runs at about 1.1 GiB/s on one CPU core (measured), so hashing a residual
    TIFF costs a fraction of a second next to the minutes of scoring that wrote it.
    """
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


class OutputSet:
    """The output files of one volume, written under temporary names and committed together.

    A set is all-new or untrusted, never silently mixed: every file is first written to a
    locked temporary name (:meth:`stage`); :meth:`commit` renames them to their names and
    writes ``<stem>_summary.json`` last, with a manifest (``files``: name, size and
    SHA-256 of every other file of the set). The summary declares the set complete, and a
    reader trusts the set only when its files still match that manifest
    (:func:`verify_output_set`): a run killed between two renames leaves files that do not
    match the summary beside them (or no summary), and the set counts as not scored. Any
    file staged before the commit (a figure, a table) is listed in the manifest.

    Parameters
    ----------
    name : str
        Volume name (made safe as a file stem,
        :func:`~napari_anogan.pipeline.outputs.output_paths`).
    outdir : str or Path
        Existing folder.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> files = OutputSet("eye", out)
    >>> _ = files.stage("scores").write_text("a,b")
    >>> summary = files.commit({"name": "eye"})
    >>> sorted(p.name for p in out.iterdir())
    ['eye_scores.csv', 'eye_summary.json']
    >>> verify_output_set(summary, required=("scores",))
    []
    """

    def __init__(self, name: str, outdir: str | Path) -> None:
        from napari_anogan.pipeline.outputs import output_paths

        self.outdir = Path(outdir)
        self.paths = output_paths(name, self.outdir)
        self._staged: dict[str, TempFile] = {}

    def stage(self, kind: str, path: str | Path | None = None) -> Path:
        """Return the temporary path to write the file of ``kind`` to.

        ``path`` names a file that is not one of :func:`output_paths` (it must lie in the
        output folder); it then joins the set as ``kind``.
        """
        if kind == "summary":
            raise ValueError("the summary is written by commit()")
        target = Path(path) if path is not None else self.paths[kind]
        if target.resolve().parent != self.outdir.resolve():
            raise ValueError(f"{target} is not in the output folder {self.outdir}")
        if kind in self._staged:
            self._staged.pop(kind).discard()
        self._staged[kind] = TempFile(target)
        return self._staged[kind].path

    def discard(self) -> None:
        """Remove every staged file (the job failed); files already there stay."""
        for tmp in self._staged.values():
            tmp.discard()
        self._staged.clear()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard()  # after commit() nothing is staged any more

    def commit(self, summary: dict) -> Path:
        """Rename the staged files to their names, then write the summary last.

        ``summary["files"]`` becomes the manifest: the staged files, plus any files a
        ``files`` mapping already in ``summary`` names (kind -> file name in the folder,
        written before; they are described as they are on disk).

        Returns
        -------
        Path
            The summary file.
        """
        manifest: dict[str, dict[str, Any]] = {}
        try:
            for kind, name in dict(summary.get("files") or {}).items():
                path = self.outdir / str(name)
                if isinstance(name, str) and Path(name).name == name and path.is_file():
                    manifest[kind] = describe_file(path)
            for kind, tmp in self._staged.items():
                entry = describe_file(tmp.path)
                entry["name"] = tmp.target.name
                manifest[kind] = entry
            for tmp in self._staged.values():
                tmp.commit()
        except (OSError, OutputError) as exc:
            self.discard()  # what is still staged; files already renamed stay
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"could not write file ({exc.strerror or exc})", self.outdir) from exc
        self._staged = {}
        return write_json(self.paths["summary"], {**summary, "files": manifest})


def summary_of(path: str | Path) -> Path | None:
    """Return the summary of the output set ``path`` belongs to, if its name says so.

    ``X_residual.tif`` and ``X_scores.csv`` belong to the set of ``X_summary.json``
    beside them (:func:`~napari_anogan.pipeline.outputs.output_paths`); None for any
    other name.
    """
    path = Path(path)
    for suffix in ("_residual.tif", "_scores.csv"):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)] + "_summary.json")
    return None


def verify_output_set(
    summary_path: str | Path, *, required: Sequence[str] = REQUIRED_IN_SET
) -> list[str]:
    """Check that the files of an output set are the ones its summary declares.

    Parameters
    ----------
    summary_path : str or Path
        ``<stem>_summary.json``.
    required : sequence of str
        Kinds the manifest must list (default: residual and patch table).

    Returns
    -------
    list of str
        What is wrong (missing summary, no manifest, a file missing or not the one the
        summary describes: size or SHA-256 differ); empty for a complete, consistent set.
    """
    summary_path = Path(summary_path)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{summary_path.name} is missing"]
    except (OSError, ValueError) as exc:
        return [f"{summary_path.name} is unreadable ({exc})"]
    files = summary.get("files") if isinstance(summary, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return [f"{summary_path.name} has no manifest of its files (written by an older version)"]
    problems = [
        f"{summary_path.name} does not list the {k} file" for k in required if k not in files
    ]
    for kind, entry in files.items():
        name = str(entry.get("name", ""))
        path = summary_path.parent / name
        if not name or Path(name).name != name or not path.is_file():
            problems.append(f"{name or kind} is missing")
        elif path.stat().st_size != entry.get("bytes"):
            problems.append(f"{name} is not the file {summary_path.name} describes (size differs)")
        elif describe_file(path)["sha256"] != entry.get("sha256"):
            problems.append(
                f"{name} is not the file {summary_path.name} describes (SHA-256 differs)"
            )
    return problems
