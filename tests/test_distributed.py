"""Scoring several volumes as Dask tasks on a real LocalCluster (2 worker processes, loopback)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cloudpickle
import dask
import pytest

from napari_anogan.cli import main
from napari_anogan.errors import InputError
from napari_anogan.pipeline import ScoreSettings
from napari_anogan.pipeline.cluster import score_fingerprint, score_one, score_paths

pytestmark = pytest.mark.slow

pytest.importorskip("distributed")

FAST = ["--mapping", "iterative", "--steps", "2", "--device", "cpu", "--batch-size", "64"]
SETTINGS = ScoreSettings(mode="iterative", steps=2, device="cpu", batch_size=64)

# Workers unpickle the crashing task below by value (they cannot import this test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_cli_workers_scores_each_volume_then_rerun_skips(
    synthetic_dir, tiny_model_path, tmp_path, capsys
):
    inputs = [str(synthetic_dir / n) for n in ("normal.ome.tif", "diseased.ome.tif")]
    args = ["score", *inputs, "-m", str(tiny_model_path), "-o", str(tmp_path), *FAST]
    assert main(["-q", *args, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "[2/2]" in out
    assert out.count("scored") == 2
    fp = score_fingerprint(tiny_model_path, SETTINGS)
    for name in ("normal", "diseased"):
        summary = json.loads((tmp_path / f"{name}_summary.json").read_text())
        assert summary["fingerprint"] == fp
        assert (tmp_path / f"{name}_residual.tif").is_file()
        assert (tmp_path / f"{name}_scores.csv").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    # Re-run: same model and settings -> nothing is recomputed (no cluster even starts).
    assert main(["-q", *args, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 2
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps

    # Other settings or another model file -> another fingerprint.
    other = ScoreSettings(mode="iterative", steps=3, device="cpu", batch_size=64)
    assert score_fingerprint(tiny_model_path, other) != fp
    assert (
        score_fingerprint(
            tiny_model_path, ScoreSettings(**{**SETTINGS.to_dict(), "device": "cuda"})
        )
        == fp
    )


def _crashy(path, model_path, settings, outdir, fingerprint):
    """Kill the worker process: always for 'diseased', on the first attempt for 'normal'."""
    name = Path(path).name
    if name.startswith("diseased"):
        os._exit(13)
    if name.startswith("normal"):
        marker = Path(outdir) / ".crashed-once"
        if not marker.exists():
            marker.write_text("x")
            os._exit(13)
    return score_one(path, model_path, settings, outdir, fingerprint)


def test_worker_death_retries_or_fails_one_volume_others_complete(
    synthetic_dir, tiny_model_path, tmp_path
):
    inputs = [
        synthetic_dir / "normal.ome.tif",
        synthetic_dir / "diseased.ome.tif",
        synthetic_dir / "healthy_0.ome.tif",
    ]
    seen = []
    with dask.config.set({"distributed.scheduler.allowed-failures": 2}):
        statuses = score_paths(
            inputs,
            tiny_model_path,
            SETTINGS,
            tmp_path,
            workers=2,
            task=_crashy,
            on_result=lambda s, done, total: seen.append((s.name, s.status, done, total)),
        )
    by_name = {s.name: s for s in statuses}
    assert by_name["normal"].status == "scored"  # its worker died once: retried elsewhere
    assert by_name["healthy_0"].status == "scored"
    assert by_name["diseased"].status == "failed"
    assert "KilledWorker" in by_name["diseased"].error
    assert not (tmp_path / "diseased_summary.json").exists()
    assert sorted(d for _, _, d, _ in seen) == [1, 2, 3]
    assert (tmp_path / "healthy_0_summary.json").is_file()


def test_bad_arguments_are_clear_errors(synthetic_dir, tiny_model_path, tmp_path):
    with pytest.raises(InputError, match="workers"):
        score_paths(
            [synthetic_dir / "normal.ome.tif"], tiny_model_path, SETTINGS, tmp_path, workers=0
        )
    with pytest.raises(InputError, match="same outputs"):
        score_paths(
            [synthetic_dir / "normal.ome.tif", synthetic_dir / "normal.ome.tif"],
            tiny_model_path,
            SETTINGS,
            tmp_path,
            workers=1,
        )


BUNDLED = Path(__file__).resolve().parents[1] / "sample_data" / "anogan_small.pt"
ENCODER = ScoreSettings(mode="encoder", device="cpu", batch_size=64)


def _calls(outdir: Path, name: str) -> int:
    path = outdir.parent / f"calls-{name}"
    return len(path.read_text().split()) if path.exists() else 0


def _kill_finished_holders(path, model_path, settings, outdir, fingerprint):
    """Volume 'c' waits for 'a' and 'b' to finish, kills every other worker (they hold the
    finished results), then takes long enough for the scheduler to run a lost task again."""
    import signal
    import time

    from napari_anogan.pipeline.cluster import score_one

    out = Path(outdir)
    name = Path(path).name.split(".")[0]
    log = out.parent / f"calls-{name}"
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    if name == "c":
        deadline = time.monotonic() + 300
        while not all((out.parent / f"pid-{v}").exists() for v in "ab"):
            if time.monotonic() > deadline:
                raise TimeoutError("a and b never finished")
            time.sleep(0.2)
        time.sleep(2)  # their statuses reach the client
        for v in "ab":
            pid = int((out.parent / f"pid-{v}").read_text())
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
        time.sleep(25)  # a new worker starts meanwhile; a lost task would run there
    status = score_one(path, model_path, settings, outdir, fingerprint)
    if name in "ab":
        (out.parent / f"pid-{name}").write_text(str(os.getpid()))
    return status


def test_a_finished_volume_is_never_scored_again_nor_deleted_when_its_worker_dies(
    synthetic_dir, tmp_path
):
    inputs = []
    for name, source in zip("abc", ("normal", "diseased", "healthy_0"), strict=True):
        inputs.append(tmp_path / f"{name}.ome.tif")
        inputs[-1].write_bytes((synthetic_dir / f"{source}.ome.tif").read_bytes())
    out = tmp_path / "out"
    statuses = score_paths(
        inputs, BUNDLED, ENCODER, out, workers=2, task=_kill_finished_holders, retries=0
    )
    assert (_calls(out, "a"), _calls(out, "b"), _calls(out, "c")) == (1, 1, 1)
    for name in "abc":
        assert (out / f"{name}_summary.json").is_file(), name
    assert [s.status for s in statuses] == ["scored"] * 3, [s.line() for s in statuses]
    from napari_anogan.pipeline.output_set import verify_output_set

    for name in "abc":
        assert verify_output_set(out / f"{name}_summary.json") == [], name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


def _bad_input_counted(path, model_path, settings, outdir, fingerprint):
    from napari_anogan.pipeline.cluster import score_one

    name = Path(path).name.split(".")[0]
    with open(Path(outdir).parent / f"calls-{name}", "a") as fh:
        fh.write("x\n")
    return score_one(path, model_path, settings, outdir, fingerprint)


def test_a_bad_input_fails_once_with_its_message_and_dask_stays_quiet(
    synthetic_dir, tmp_path, capfd
):
    bad = tmp_path / "bad.ome.tif"
    bad.write_bytes(b"II*\x00 this is not a TIFF at all")
    good = tmp_path / "good.ome.tif"
    good.write_bytes((synthetic_dir / "normal.ome.tif").read_bytes())
    out = tmp_path / "out"
    statuses = score_paths([bad, good], BUNDLED, ENCODER, out, workers=1, task=_bad_input_counted)
    by_name = {s.name: s for s in statuses}
    assert by_name["good"].status == "scored"
    assert by_name["bad"].status == "failed"
    assert by_name["bad"].error.startswith(f"{bad}: cannot read as TIFF (corrupt")
    assert (_calls(out, "bad"), _calls(out, "good")) == (1, 1)  # InputError: no retry
    captured = capfd.readouterr()
    logs = captured.err + captured.out
    assert "distributed." not in logs, logs
    assert "Traceback" not in logs, logs


def test_cli_dask_run_prints_only_its_own_lines_with_q_after_the_subcommand(
    synthetic_dir, tmp_path
):
    import subprocess

    bad = tmp_path / "bad.ome.tif"
    bad.write_bytes(b"II*\x00 this is not a TIFF at all")
    args = ["score", str(bad), str(synthetic_dir / "normal.ome.tif"), "-m", str(BUNDLED)]
    args += ["-o", str(tmp_path / "out"), "--workers", "1", "--mapping", "encoder", "-q"]
    code = "import sys; from napari_anogan.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "distributed" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(f"napari-anogan score: bad: FAILED: {bad}: cannot read as TIFF")
    assert lines[1] == (
        f"napari-anogan score: 1 of 2 volumes have no complete outputs in {tmp_path / 'out'}: bad"
    )
    assert "[2/2]" in proc.stdout


LOOPBACK_DOWN = r"""
import socket, sys

def refuse(*args, **kwargs):
    raise OSError(99, "Cannot assign requested address")

socket.socket.bind = refuse
socket.socket.connect = refuse
from napari_anogan.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_local_cluster_without_loopback_is_one_clear_line(synthetic_dir, tmp_path):
    import subprocess

    args = ["-q", "score", str(synthetic_dir / "normal.ome.tif"), "-m", str(BUNDLED)]
    args += ["-o", str(tmp_path / "out"), "--workers", "2"]
    proc = subprocess.run(
        [sys.executable, "-c", LOOPBACK_DOWN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "cannot start a local Dask cluster: the loopback network (127.0.0.1)" in proc.stderr
    assert "Cannot assign requested address" in proc.stderr
