"""Faults: training SIGKILLed mid-epoch then resumed; unwritable outputs.

The training test runs the real ``napari-anogan`` CLI in a subprocess, kills it with
SIGKILL while it is in the middle of epoch 2 (seen on its progress output), runs it again
with ``--resume`` and checks that the result is bitwise equal to an uninterrupted run
with the same seed: resuming restarts from the checkpoint written after epoch 1, and
every random draw of an epoch is derived from ``(seed, epoch)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from napari_anogan.checkpoint import load_checkpoint, read_checkpoint

TRAIN_ARGS = [
    "--preset",
    "tiny",
    "--epochs",
    "3",
    "--patches-per-scan",
    "16",
    "--batch-size",
    "4",
    "--seed",
    "7",
    "--device",
    "cpu",
]


def _cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from napari_anogan.cli import main; sys.exit(main())",
        *args,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _train(inputs: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cli("train", *inputs, "-o", str(out), *TRAIN_ARGS, *extra),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )


def _kill_mid_epoch(inputs: list[str], out: Path, marker: str) -> str:
    """Start training; SIGKILL it as soon as ``marker`` shows on its progress output."""
    proc = subprocess.Popen(
        _cli("train", *inputs, "-o", str(out), *TRAIN_ARGS),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen = threading.Event()
    log: list[bytes] = []

    def watch() -> None:
        buf = b""
        while True:
            chunk = proc.stderr.read1(4096)
            if not chunk:
                return
            log.append(chunk)
            buf = (buf + chunk)[-4096:]
            if marker.encode() in buf:
                os.kill(proc.pid, signal.SIGKILL)
                seen.set()
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t.join(timeout=5)
    text = b"".join(log).decode(errors="replace")
    assert seen.is_set(), f"never saw {marker!r}; rc {proc.returncode}: {text[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    return text


def _states(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    data = read_checkpoint(path)
    return {k: data[k] for k in ("generator", "discriminator")}


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(synthetic_dir, tmp_path):
    inputs = [str(p) for p in sorted(synthetic_dir.glob("healthy_*.ome.tif"))]
    killed = tmp_path / "killed.pt"
    t0 = time.monotonic()
    _kill_mid_epoch(inputs, killed, "epoch 2, batch 3/")
    # The checkpoint left behind is the complete one of epoch 1, never a partial file.
    training = json.loads(read_checkpoint(killed)["training"])
    assert training["epochs_done"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "killed.pt"]
    assert all(name.startswith(".tmp-") for name in leftovers), leftovers

    resumed = _train(inputs, killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "3 epochs" in resumed.stdout
    model = load_checkpoint(killed)  # valid and loadable
    assert model is not None

    clean = tmp_path / "clean.pt"
    full = _train(inputs, clean)
    assert full.returncode == 0, full.stderr[-2000:]

    a, b = _states(killed), _states(clean)
    for net in a:
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs"
    ra, rb = read_checkpoint(killed)["reference"], read_checkpoint(clean)["reference"]
    assert ra.keys() == rb.keys()
    for key in ra:
        if isinstance(ra[key], torch.Tensor):
            assert torch.equal(ra[key], rb[key]), f"reference {key} differs"
    print(f"kill/resume/clean runs took {time.monotonic() - t0:.1f} s")


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions"
)
def test_score_into_unwritable_folder_is_a_clear_error(synthetic_dir, tiny_model_path, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        proc = subprocess.run(
            _cli(
                "-q",
                "score",
                str(synthetic_dir / "normal.ome.tif"),
                "-m",
                str(tiny_model_path),
                "-o",
                str(out),
                "--mapping",
                "iterative",
                "--steps",
                "2",
                "--device",
                "cpu",
            ),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        out.chmod(0o700)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "cannot write" in proc.stderr, proc.stderr
    assert str(out) in proc.stderr
    assert list(out.iterdir()) == []


def test_score_into_folder_under_a_file_is_a_clear_error(synthetic_dir, tiny_model_path, tmp_path):
    """Also runs as root (which ignores permissions): the output folder cannot be created."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run(
        _cli(
            "-q",
            "score",
            str(synthetic_dir / "normal.ome.tif"),
            "-m",
            str(tiny_model_path),
            "-o",
            str(blocker / "out"),
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "cannot create output folder" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_failure_leaves_no_complete_looking_file(
    synthetic_dir, tiny_model_path, tmp_path, monkeypatch, capsys
):
    """A full disk while writing the summary: OutputError, no summary file at all."""
    from napari_anogan import _atomic
    from napari_anogan.cli import main

    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):
        if str(dst).endswith("_summary.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(_atomic.os, "replace", failing_replace)
    assert (
        main(
            [
                "-q",
                "score",
                str(synthetic_dir / "normal.ome.tif"),
                "-m",
                str(tiny_model_path),
                "-o",
                str(tmp_path),
                "--mapping",
                "iterative",
                "--steps",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "No space left" in err, err
    assert "normal_summary.json" in err, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "normal_summary.json" not in names
    assert not [n for n in names if n.startswith(".tmp-")], names
