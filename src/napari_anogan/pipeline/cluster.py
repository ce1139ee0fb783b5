"""Score many volumes as Dask tasks: one task per volume, on a local or remote cluster.

``napari-anogan score --workers N`` starts a :class:`distributed.LocalCluster` on
loopback (N worker processes, one thread each); ``--scheduler ADDRESS`` uses a running
cluster. Each task reads one volume, scores it and writes its outputs in the output
folder (``<stem>_residual.tif``, ``<stem>_scores.csv``, then ``<stem>_summary.json``
last, each atomically), so a volume's results are complete as soon as its summary exists.

The summary records a *fingerprint*: SHA-256 of the model file's bytes and of the
scoring settings (device excluded: it does not change what is computed beyond float
rounding). A re-run skips a volume whose summary has the same fingerprint and whose
other outputs exist, so an interrupted batch resumes where it stopped.

A worker dying while it scores a volume (out of memory, killed) makes the scheduler run
the task again on another worker; a volume that keeps killing workers ends as
``failed`` (``KilledWorker``) after the scheduler's ``allowed-failures``, and a volume
that raises is retried ``retries`` times then reported as ``failed``; the other volumes
complete either way. No Qt here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_anogan.errors import AnoganError, InputError, OutputError
from napari_anogan.settings import WRITE_FIGURES

logger = logging.getLogger(__name__)

#: Settings left out of the fingerprint (they do not change the scores).
_NOT_FINGERPRINTED = ("device",)


@dataclass
class VolumeStatus:
    """Outcome of one volume of a batch.

    Attributes
    ----------
    path : str
        The input.
    name : str
        Output stem.
    status : str
        ``scored``, ``skipped`` (already scored with the same model and settings) or
        ``failed``.
    volume_score : float or None
        The volume's score (from the summary when skipped).
    error : str
        Why it failed ('' otherwise).
    outputs : dict of str to str
        Output files by kind.
    """

    path: str
    name: str
    status: str
    volume_score: float | None = None
    error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """One human-readable line."""
        if self.status == "failed":
            return f"{self.name}: FAILED: {self.error}"
        score = "n/a" if self.volume_score is None else f"{self.volume_score:.4g}"
        return f"{self.name}: {self.status}, volume score {score}"


def output_name(path: str | os.PathLike) -> str:
    """Return the output stem of an input (file stem without ``.ome``, or folder name)."""
    from napari_anogan.io.readers import volume_name

    return volume_name(Path(path))


def score_fingerprint(model_path: str | os.PathLike, settings) -> str:
    """SHA-256 of the model file's bytes and the scoring settings (device excluded)."""
    h = hashlib.sha256()
    try:
        with open(model_path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        from napari_anogan.errors import ModelError

        raise ModelError(f"cannot read model ({exc.strerror})", model_path) from exc
    sdict = {k: v for k, v in settings.to_dict().items() if k not in _NOT_FINGERPRINTED}
    h.update(json.dumps(sdict, sort_keys=True).encode())
    return "sha256:" + h.hexdigest()


def _paths(outdir: Path, name: str) -> dict[str, Path]:
    from napari_anogan.pipeline import output_paths

    return output_paths(name, outdir)


def already_scored(path: str | os.PathLike, outdir: str | os.PathLike, fingerprint: str):
    """Return a ``skipped`` status if the outputs match ``fingerprint``, else None."""
    name = output_name(path)
    paths = _paths(Path(outdir), name)
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        summary = json.loads(paths["summary"].read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("fingerprint") != fingerprint:
        return None
    return VolumeStatus(
        str(path),
        name,
        "skipped",
        volume_score=summary.get("volume_score"),
        outputs={k: str(v) for k, v in paths.items()},
    )


def score_one(
    path: str,
    model_path: str,
    settings,
    outdir: str,
    fingerprint: str,
    *,
    figures: bool = WRITE_FIGURES,
) -> VolumeStatus:
    """Score one volume and write its outputs (the task each worker runs).

    The summary, with ``fingerprint`` added, is written last: its presence marks the
    volume as complete. ``figures``: also write the overview PNG.
    """
    import dask

    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.events import drain
    from napari_anogan.io import read_volume, write_json
    from napari_anogan.pipeline import score_volume, summary_dict
    from napari_anogan.settings import SCORE_CHUNK_SLICES

    model = load_checkpoint(model_path)
    # lazy and chunked: a worker's memory does not grow with the number of B-scans
    volume = read_volume(path, lazy=True)
    out = Path(outdir)
    paths = _paths(out, volume.name)
    # An old summary must not vouch for the new residual/scores while they are written.
    paths["summary"].unlink(missing_ok=True)
    # The lazy reads run here, in this task: inside a worker dask would otherwise send
    # them to the cluster as tasks of their own (where another volume may kill them).
    with dask.config.set(scheduler="synchronous"):
        job = score_volume(
            volume, model, settings, outdir=out, chunk_slices=SCORE_CHUNK_SLICES, figures=figures
        )
        result = drain(job)
    written = result.outputs
    summary = summary_dict(result)
    summary["fingerprint"] = fingerprint
    write_json(written["summary"], summary)
    return VolumeStatus(
        path,
        result.name,
        "scored",
        volume_score=float(result.volume_score),
        outputs={k: str(v) for k, v in written.items()},
    )


def score_paths(
    paths: Sequence[str | os.PathLike],
    model_path: str | os.PathLike,
    settings,
    outdir: str | os.PathLike,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 1,
    force: bool = False,
    on_result: Callable[[VolumeStatus, int, int], Any] | None = None,
    task: Callable[..., VolumeStatus] | None = None,
    figures: bool = WRITE_FIGURES,
) -> list[VolumeStatus]:
    """Score volumes as Dask tasks; skip those already scored with the same model/settings.

    Parameters
    ----------
    paths : sequence of path
        One volume each (a file, or a folder of B-scans).
    model_path : path
        Model checkpoint; every worker must be able to read it (shared file system).
    settings : ScoreSettings
        Scoring settings.
    outdir : path
        Output folder (created; must be shared with the workers).
    workers : int, optional
        Start a local cluster of this many worker processes on loopback.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); wins over ``workers``.
    retries : int
        Extra attempts of a task that raised an unexpected error.
    force : bool
        Score even volumes whose outputs match the fingerprint.
    on_result : callable, optional
        Called ``on_result(status, done, total)`` as each volume finishes (progress).
    task : callable, optional
        Replaces :func:`score_one` (tests).
    figures : bool
        Also write each volume's overview PNG (:func:`score_one`).

    Returns
    -------
    list of VolumeStatus
        In the order of ``paths``.

    Raises
    ------
    InputError, ModelError, OutputError
        Bad arguments, unreadable model, output folder not writable. Failures of single
        volumes are reported in their status instead.
    """
    if not paths:
        raise InputError("no volumes given")
    if scheduler is None and (workers is None or workers < 1):
        raise InputError(f"--workers must be >= 1, got {workers}")
    out = Path(outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder ({exc.strerror})", out) from exc
    if not os.access(out, os.W_OK):
        raise OutputError("output folder is not writable", out)
    model_path = str(Path(model_path).resolve())
    from napari_anogan.checkpoint import load_checkpoint

    load_checkpoint(model_path)  # fail early, once, with a clear ModelError
    fingerprint = score_fingerprint(model_path, settings)
    names = [output_name(p) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"several inputs would write the same outputs: {', '.join(dupes)}")

    total = len(paths)
    results: dict[int, VolumeStatus] = {}
    todo: list[int] = []
    for i, p in enumerate(paths):
        done = None if force else already_scored(p, out, fingerprint)
        if done is None:
            todo.append(i)
        else:
            results[i] = done
            if on_result:
                on_result(done, len(results), total)
    if todo:
        _run_on_cluster(
            [str(Path(paths[i]).resolve()) for i in todo],
            todo,
            model_path,
            settings,
            str(out.resolve()),
            fingerprint,
            results,
            total,
            workers=workers,
            scheduler=scheduler,
            retries=retries,
            on_result=on_result,
            task=task or (score_one if figures else functools.partial(score_one, figures=False)),
        )
    return [results[i] for i in range(total)]


def _run_on_cluster(
    inputs, indices, model_path, settings, outdir, fingerprint, results, total, **kw
) -> None:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise InputError(
            "--workers/--scheduler need Dask's scheduler: pip install distributed"
        ) from exc

    cluster = None
    if kw["scheduler"]:
        try:
            client = Client(kw["scheduler"], timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                f"cannot connect to the Dask scheduler at {kw['scheduler']} ({exc})"
            ) from exc
    else:
        import dask

        # One volume in flight per worker thread: a worker that dies then takes the
        # blame (and a retry) for its own volume only, not for queued ones.
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(
                n_workers=kw["workers"],
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
        client = Client(cluster)
    try:
        futures = {}
        for idx, path in zip(indices, inputs, strict=True):
            fut = client.submit(
                kw["task"],
                path,
                model_path,
                settings,
                outdir,
                fingerprint,
                key=f"score-{idx}-{fingerprint[7:19]}-{os.getpid()}",
                retries=kw["retries"],
                pure=False,
            )
            futures[fut] = (idx, path)
        for fut in as_completed(list(futures)):
            idx, path = futures[fut]
            try:
                status = fut.result()
            except AnoganError as exc:
                status = VolumeStatus(path, output_name(path), "failed", error=str(exc))
            except Exception as exc:  # KilledWorker, a bug in one volume: report, go on
                status = VolumeStatus(
                    path, output_name(path), "failed", error=f"{type(exc).__name__}: {exc}"
                )
            results[idx] = status
            logger.info("[%d/%d] %s", len(results), total, status.line())
            if kw["on_result"]:
                kw["on_result"](status, len(results), total)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
