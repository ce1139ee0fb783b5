"""Score many volumes as Dask tasks: one task per volume, on a local or remote cluster.

``napari-anogan score --workers N`` starts a :class:`distributed.LocalCluster` on
loopback (N worker processes, one thread each); ``--scheduler ADDRESS`` uses a running
cluster. Each task reads one volume, scores it and writes its outputs in the output
folder as one set (:class:`~napari_anogan.pipeline.outputs.OutputSet`): temporary
names renamed together, then ``<stem>_summary.json`` last, with the size and SHA-256 of
every other file, so a volume is complete when its summary exists and matches its files.

The summary records a *fingerprint*: SHA-256 of the model file's bytes and of the
scoring settings (device excluded: it does not change what is computed beyond float
rounding). A re-run skips a volume whose summary has the same fingerprint and whose
files match it, so an interrupted batch resumes where it stopped; it first removes the
temporary files a killed run left.

A worker dying while it scores a volume (out of memory, killed) makes the scheduler run
the task again on another worker; a volume that keeps killing workers ends as
``failed`` (``KilledWorker``) after the scheduler's ``allowed-failures``. A bad input
(an :class:`~napari_anogan.errors.AnoganError`) fails at once, with its message; another
exception is retried ``retries`` times then reported as ``failed``; the other volumes
complete either way. A finished volume is never scored again by the same batch (its
task is released as soon as its status is in, and a task finds a complete set of its
volume already written), and nothing of an earlier set is deleted before a new one is
complete. The batch ends by checking every volume's set on disk: a volume counts as done
only if it is complete. No Qt here.

Over 500 lines on purpose: what a batch guarantees (skip, release, the end check, quiet
logs, a clear refusal when the cluster cannot start) is one protocol, kept in one place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_anogan.errors import AnoganError, ClusterError, InputError, OutputError
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
    model_fit : dict
        The volume's model-fit verdict (:func:`~napari_anogan.scoring.fit.model_fit`).
    """

    path: str
    name: str
    status: str
    volume_score: float | None = None
    error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    model_fit: dict = field(default_factory=dict)

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
    """Return a ``skipped`` status if a complete output set matches ``fingerprint``, else None.

    Complete: the summary is there, has the same fingerprint, and every file its manifest
    lists is on disk, the same size and SHA-256
    (:func:`~napari_anogan.pipeline.outputs.verify_output_set`). A set mixed by a killed
    run, or written by an older version without a manifest, is scored again.
    """
    from napari_anogan.pipeline.output_set import verify_output_set

    name = output_name(path)
    paths = _paths(Path(outdir), name)
    try:
        summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("fingerprint") != fingerprint:
        return None
    problems = verify_output_set(paths["summary"])
    if problems:
        logger.info("%s: scoring again: %s", name, "; ".join(problems))
        return None
    return VolumeStatus(
        str(path),
        name,
        "skipped",
        volume_score=summary.get("volume_score"),
        outputs={k: str(v) for k, v in paths.items()},
        model_fit=summary.get("model_fit") or {},
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

    The outputs are written as one set (:class:`~napari_anogan.pipeline.outputs.OutputSet`):
    temporary names renamed together, then the summary with ``fingerprint`` and the
    manifest. Nothing of an earlier set is removed first, so a task killed halfway (a
    worker lost, the run stopped) leaves the earlier files as they were, plus temporary
    files the next run removes. ``figures``: also write the overview PNG into the set.
    """
    import dask

    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.events import drain
    from napari_anogan.io import read_volume
    from napari_anogan.pipeline import score_volume
    from napari_anogan.settings import SCORE_CHUNK_SLICES

    model = load_checkpoint(model_path)
    # lazy and chunked: a worker's memory does not grow with the number of B-scans
    volume = read_volume(path, lazy=True)
    # The lazy reads run here, in this task: inside a worker dask would otherwise send
    # them to the cluster as tasks of their own (where another volume may kill them).
    with dask.config.set(scheduler="synchronous"):
        job = score_volume(
            volume,
            model,
            settings,
            outdir=Path(outdir),
            chunk_slices=SCORE_CHUNK_SLICES,
            summary_extra={"fingerprint": fingerprint},
            figures=figures,
        )
        result = drain(job)
    return VolumeStatus(
        path,
        result.name,
        "scored",
        volume_score=float(result.volume_score),
        outputs={k: str(v) for k, v in result.outputs.items()},
        model_fit=result.model_fit,
    )


_score_one_without_figures = functools.partial(score_one, figures=False)


def run_task(
    task: Callable[..., VolumeStatus],
    path: str,
    model_path: str,
    settings,
    outdir: str,
    fingerprint: str,
    force: bool,
    log_level: int = logging.WARNING,
) -> VolumeStatus:
    """Run ``task`` for one volume on a worker; return errors of the input as a status.

    Unless ``force``, a volume whose complete output set is already there (an earlier
    attempt of this task finished before its worker was lost) is not scored again. A
    :class:`~napari_anogan.errors.AnoganError` (a bad input, an unusable model) comes
    back as a ``failed`` status instead of an exception, so Dask neither retries it nor
    logs its traceback: it fails once, with its one-line message. This package's log
    records of ``log_level`` and above are printed as the command line prints them.
    """
    _worker_logging(log_level)
    if not force:
        done = already_scored(path, outdir, fingerprint)
        if done is not None:
            # The batch only sends volumes that were not complete when it started: this
            # set was written during it (by an earlier attempt), so the volume is scored.
            logger.info("%s: complete output set already written by this batch", done.name)
            done.status = "scored"
            return done
    try:
        return task(path, model_path, settings, outdir, fingerprint)
    except AnoganError as exc:
        return VolumeStatus(path, output_name(path), "failed", error=str(exc))


def _worker_logging(level: int) -> None:
    """Print this package's log records in a worker as the command line does (once)."""
    log = logging.getLogger("napari_anogan")
    log.setLevel(level)
    if not any(getattr(h, "_napari_anogan", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._napari_anogan = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False


def check_outputs(statuses: Sequence[VolumeStatus], outdir: str | os.PathLike) -> None:
    """Mark ``failed`` every volume whose complete output set is not on disk.

    The last check of a batch: a ``scored`` or ``skipped`` status counts only if the
    volume's summary and the files of its manifest are there and match; otherwise the
    status says what is missing.
    """
    from napari_anogan.pipeline.output_set import verify_output_set

    for status in statuses:
        if status.status == "failed":
            continue
        problems = verify_output_set(_paths(Path(outdir), status.name)["summary"])
        if problems:
            status.status = "failed"
            status.error = "output set incomplete after the run: " + "; ".join(problems)


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
    show_dask_logs: bool = False,
) -> list[VolumeStatus]:
    """Score volumes as Dask tasks; skip those already scored with the same model/settings.

    When every task has ended, each volume's output set is checked on disk
    (:func:`check_outputs`): a volume counts as done only if its complete set is there.

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
        Extra attempts of a task that raised an unexpected error (a bad input, an
        :class:`~napari_anogan.errors.AnoganError`, fails at once).
    force : bool
        Score even volumes whose outputs match the fingerprint.
    on_result : callable, optional
        Called ``on_result(status, done, total)`` as each volume finishes (progress).
    task : callable, optional
        Replaces :func:`score_one` (tests).
    figures : bool
        Also write each volume's overview PNG (:func:`score_one`).
    show_dask_logs : bool
        Let Dask's own log lines (scheduler, workers, nannies) through; off, only errors
        of this package reach the terminal.

    Returns
    -------
    list of VolumeStatus
        In the order of ``paths``.

    Raises
    ------
    InputError, ModelError, OutputError
        Bad arguments, unreadable model, output folder not writable.
    ClusterError
        The local cluster cannot start (loopback network down) or the scheduler cannot
        be reached. Failures of single volumes are reported in their status instead.
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
    from napari_anogan._atomic import remove_stale_temporaries
    from napari_anogan.checkpoint import load_checkpoint

    load_checkpoint(model_path)  # fail early, once, with a clear ModelError
    fingerprint = score_fingerprint(model_path, settings)
    names = [output_name(p) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"several inputs would write the same outputs: {', '.join(dupes)}")
    remove_stale_temporaries(out)

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
        try:
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
                force=force,
                on_result=on_result,
                task=task or (score_one if figures else _score_one_without_figures),
                show_dask_logs=show_dask_logs,
            )
        except ClusterError as exc:  # no volume was scored: say which have no outputs
            missing = [names[i] for i in todo if i not in results]
            raise ClusterError(
                f"{exc}; {len(missing)} of {total} volumes have no complete outputs in "
                f"{out}: {', '.join(missing)}"
            ) from exc
    statuses = [results[i] for i in range(total)]
    check_outputs(statuses, out)
    return statuses


#: Loggers of Dask's scheduler, workers and nannies and of the libraries under them.
DASK_LOGGERS = ("distributed", "dask", "tornado", "asyncio", "bokeh")


@contextlib.contextmanager
def _dask_logs(show: bool):
    """Silence Dask's own log lines unless ``show``, here and in the worker processes.

    Worker processes configure their logging when they import ``distributed``, from
    Dask's configuration, which they also read from ``DASK_*`` environment variables:
    those are set while the cluster starts, so the workers inherit them.
    """
    if show:
        yield
        return
    loggers = [logging.getLogger(n) for n in DASK_LOGGERS]
    levels = [lg.level for lg in loggers]
    env = {"DASK_LOGGING__DISTRIBUTED": "critical", "DASK_LOGGING__TORNADO": "critical"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Seconds to wait for a connection to this machine's own loopback address.
LOOPBACK_TIMEOUT_S = 2.0


def check_loopback(host: str = "127.0.0.1", timeout: float = LOOPBACK_TIMEOUT_S) -> None:
    """Refuse quickly when the loopback network does not work (a local cluster needs it).

    Opens a listening socket on ``host`` and connects to it. Without this, Dask waits
    for its workers until its own timeout (a minute) and ends with a traceback.

    Raises
    ------
    ClusterError
        If the socket cannot be opened or the connection fails.
    """
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.settimeout(timeout)
            server.bind((host, 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=timeout):
                conn, _ = server.accept()
                conn.close()
    except OSError as exc:
        raise ClusterError(
            f"cannot start a local Dask cluster: the loopback network ({host}) does not "
            f"work ({exc.strerror or exc}); score without --workers, or use --scheduler"
        ) from exc


def _run_on_cluster(
    inputs, indices, model_path, settings, outdir, fingerprint, results, total, **kw
) -> None:
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError(
            "--workers/--scheduler need Dask's scheduler: pip install distributed"
        ) from exc

    with _dask_logs(kw["show_dask_logs"]):
        cluster = None
        if kw["scheduler"]:
            try:
                client = Client(kw["scheduler"], timeout="30s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ClusterError(
                    f"cannot connect to the Dask scheduler at {kw['scheduler']} ({exc})"
                ) from exc
        else:
            import dask

            check_loopback()
            # One volume in flight per worker thread: a worker that dies then takes the
            # blame (and a retry) for its own volume only, not for queued ones.
            try:
                with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
                    cluster = LocalCluster(
                        n_workers=kw["workers"],
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                    )
                client = Client(cluster)
            except Exception as exc:  # any failure to start is one line
                if cluster is not None:
                    cluster.close()
                raise ClusterError(
                    f"cannot start a local Dask cluster of {kw['workers']} workers "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        try:
            _collect(
                client,
                inputs,
                indices,
                model_path,
                settings,
                outdir,
                fingerprint,
                results,
                total,
                **kw,
            )
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def _collect(
    client, inputs, indices, model_path, settings, outdir, fingerprint, results, total, **kw
) -> None:
    """Submit one task per volume and gather the statuses as they finish."""
    from distributed import as_completed

    futures = {}
    for idx, path in zip(indices, inputs, strict=True):
        fut = client.submit(
            run_task,
            kw["task"],
            path,
            model_path,
            settings,
            outdir,
            fingerprint,
            kw["force"],
            logging.DEBUG if kw["show_dask_logs"] else logging.WARNING,
            key=f"score-{idx}-{fingerprint[7:19]}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            retries=kw["retries"],
            pure=False,
        )
        futures[fut] = (idx, path)
    for fut in as_completed(list(futures)):
        idx, path = futures.pop(fut)
        try:
            status = fut.result()
        except AnoganError as exc:
            status = VolumeStatus(path, output_name(path), "failed", error=str(exc))
        except Exception as exc:  # KilledWorker, a bug in one volume: report, go on
            status = VolumeStatus(
                path, output_name(path), "failed", error=f"{type(exc).__name__}: {exc}"
            )
        # Forget the finished task at once: if the worker holding its result is lost
        # later, the scheduler has no reason to run it again.
        fut.release()
        del fut
        results[idx] = status
        logger.info("[%d/%d] %s", len(results), total, status.line())
        if kw["on_result"]:
            kw["on_result"](status, len(results), total)
