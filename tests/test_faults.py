"""Faults: training SIGKILLed mid-epoch then resumed; unwritable outputs.

The training test runs the real ``napari-anogan`` CLI in a subprocess, kills it with
SIGKILL while it is in the middle of epoch 2 (seen on its progress output), runs it again
with ``--resume`` and checks that the result is bitwise equal to an uninterrupted run
with the same seed: resuming restarts from the checkpoint written after epoch 1, and
every random draw of an epoch is derived from ``(seed, epoch)``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
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


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(synthetic_dir, tmp_path):
    inputs = [str(p) for p in sorted(synthetic_dir.glob("healthy_*.ome.tif"))]
    killed = tmp_path / "killed.pt"
    t0 = time.monotonic()
    _kill_mid_epoch(inputs, killed, "epoch 2/3, batch 3/")
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


# ------------------------------------------------------------------ network and paths

_NET_GUARD = r"""
import ipaddress, json, os, socket, sys

LOG = os.environ["NET_LOG"]
OWN = {socket.gethostname(), "localhost", ""}


def _local(host):
    host = str(host).split("%")[0]
    if host in OWN:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _record(what, target):
    with open(LOG, "a") as fh:
        fh.write(json.dumps([what, str(target)]) + "\n")


def _guard(name, refuse):
    real = getattr(socket.socket, name)

    def guarded(self, address, *args):
        target = args[-1] if name == "sendto" and args else address
        if self.family == socket.AF_UNIX or (isinstance(target, tuple) and _local(target[0])):
            return real(self, address, *args)
        _record(name, target)
        return refuse()

    setattr(socket.socket, name, guarded)


def _off():
    raise OSError(101, "network is off in this test")


for _name in ("connect", "sendto"):
    _guard(_name, _off)
_guard("connect_ex", lambda: 101)
_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if host is None or _local(host):
        return _getaddrinfo(host, *args, **kwargs)
    _record("getaddrinfo", host)
    raise socket.gaierror(socket.EAI_NONAME, "name lookup is off in this test")


socket.getaddrinfo = getaddrinfo
from napari_anogan.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_guard_really_blocks_the_network(tmp_path):
    """Control: the guard used below records and refuses a non-loopback connection."""
    log = tmp_path / "net.log"
    code = (
        _NET_GUARD.split("from napari_anogan.cli")[0]
        + "try:\n    socket.create_connection(('192.0.2.1', 80), timeout=1)\n"
        + "except OSError as e:\n    print('refused', e.errno)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**_env(), "NET_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "refused" in proc.stdout, proc.stderr
    assert "192.0.2.1" in log.read_text()


@pytest.mark.slow
@pytest.mark.slow
def test_train_and_score_open_no_network_connection(synthetic_dir, tmp_path):
    """The CLI (imports included) under a socket guard that allows loopback only."""
    log = tmp_path / "net.log"
    env = {**_env(), "NET_LOG": str(log)}
    inputs = [str(p) for p in sorted(synthetic_dir.glob("healthy_*.ome.tif"))]
    model = tmp_path / "m.pt"
    small = ["--epochs", "1", "--patches-per-scan", "8", "--batch-size", "8", "--device", "cpu"]
    scored = ["-o", str(tmp_path / "out"), "--mapping", "iterative", "--steps", "2"]
    runs = [
        ["-q", "train", *inputs, "-o", str(model), *TRAIN_ARGS[:2], *small],
        ["-q", "score", str(synthetic_dir / "diseased.ome.tif"), "-m", str(model), *scored],
    ]
    for args in runs:
        proc = subprocess.run(
            [sys.executable, "-c", _NET_GUARD, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "diseased_summary.json").is_file()
    assert not log.exists() or log.read_text() == "", log.read_text()


@pytest.mark.parametrize(
    "name", ["../../escaped", "..", "a/../../b", "/abs/x", "c:\\evil", "t\x00x"]
)
def test_volume_names_never_write_outside_the_output_folder(tiny_model_path, tmp_path, name):
    """A name from metadata, a layer or a caller: every output lands in ``-o``."""
    from napari_anogan.datasets.synthetic import make_volume
    from napari_anogan.events import drain
    from napari_anogan.io import Volume
    from napari_anogan.pipeline import ScoreSettings, score_volume, write_score_outputs
    from napari_anogan.preprocess import preprocess_volume, write_preprocess_outputs

    syn = make_volume(n_slices=1, height=200, width=256, seed=1)
    volume = Volume(syn.data, spacing=syn.spacing, name=name, source="scan.tif")
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    settings = ScoreSettings(mode="iterative", steps=1, device="cpu")
    streamed = drain(score_volume(volume, tiny_model_path, settings, outdir=out)).outputs
    result = drain(score_volume(volume, tiny_model_path, settings))
    (out / "mem").mkdir()
    in_memory = write_score_outputs(result, out / "mem")
    (out / "pre").mkdir()
    pre = write_preprocess_outputs(volume, preprocess_volume(volume), out / "pre")
    for path in [*streamed.values(), *in_memory.values(), *pre.values()]:
        assert path.resolve().parent in {
            out.resolve(),
            (out / "mem").resolve(),
            (out / "pre").resolve(),
        }
        assert path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]


def test_file_names_are_data_not_commands(synthetic_dir, tiny_model_path, tmp_path):
    """Shell metacharacters in an input name are only ever a file name."""
    from napari_anogan.cli import main

    weird = tmp_path / "in" / "a;touch pwned;$(touch pwned2).ome.tif"
    weird.parent.mkdir()
    weird.write_bytes((synthetic_dir / "normal.ome.tif").read_bytes())
    out = tmp_path / "out"
    args = ["-q", "score", str(weird), "-m", str(tiny_model_path), "-o", str(out)]
    assert main([*args, "--mapping", "iterative", "--steps", "1"]) == 0
    assert (out / "a;touch pwned;$(touch pwned2)_summary.json").is_file()
    for place in (tmp_path, tmp_path / "in", out, Path.cwd()):
        assert not (place / "pwned").exists()
        assert not (place / "pwned2").exists()


def _crafted(tiny_model_path: Path, tmp_path: Path, name: str, **changes) -> Path:
    import json as _json

    from napari_anogan.checkpoint import save_checkpoint
    from napari_anogan.models import Discriminator, Generator, ModelConfig

    data = read_checkpoint(tiny_model_path)
    if "model" in changes:
        cfg = ModelConfig.from_json(data["model_config"])
        cfg = ModelConfig(**{**cfg.to_dict(), **changes["model"]})
        data["model_config"] = cfg.to_json()
        data["generator"] = Generator(cfg).state_dict()
        data["discriminator"] = Discriminator(cfg).state_dict()
        data.pop("optimizers", None)
    if "preprocess" in changes:
        pre = _json.loads(data["preprocess_config"])
        data["preprocess_config"] = _json.dumps({**pre, **changes["preprocess"]})
    return save_checkpoint(tmp_path / name, data)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": {"channels": 2}}, "channels: model 2, input 1"),
        ({"preprocess": {"patch_size": 32}}, "patch_size: model 64, input 32"),
    ],
)
def test_model_not_matching_the_input_is_refused_saying_what_differs(
    synthetic_dir, tiny_model_path, tmp_path, capsys, changes, expected
):
    from napari_anogan.cli import main

    model = _crafted(tiny_model_path, tmp_path, "crafted.pt", **changes)
    args = ["-q", "score", str(synthetic_dir / "normal.ome.tif"), "-m", str(model)]
    assert main([*args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert "crafted.pt" in err
    assert err.count("\n") == 0
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_resume_with_other_data_or_preprocessing_is_refused(tmp_path):
    from napari_anogan.errors import ModelError
    from napari_anogan.events import drain
    from napari_anogan.models import get_preset
    from napari_anogan.training import TrainConfig, train_gan

    patches = np.random.default_rng(0).uniform(-1, 1, (20, 1, 32, 32)).astype(np.float32)
    cfg = get_preset("tiny", patch_size=32)
    tc = TrainConfig(epochs=1, batch_size=8, device="cpu", reference_steps=0)
    path = tmp_path / "m.pt"
    extra = {"preprocess_config": {"patch_size": 32, "target_width": 256}, "data_fingerprint": "a"}
    drain(train_gan(patches, cfg, tc, path, extra=dict(extra)))
    more = TrainConfig(**{**tc.to_dict(), "epochs": 2})
    with pytest.raises(ModelError, match="not the checkpoint's training patches") as info:
        drain(
            train_gan(
                patches, cfg, more, path, resume=True, extra={**extra, "data_fingerprint": "b"}
            )
        )
    assert "m.pt" in str(info.value)
    other = {**extra, "preprocess_config": {"patch_size": 32, "target_width": 128}}
    with pytest.raises(
        ModelError, match=r"preprocessing differs \(target_width: checkpoint 256, requested 128\)"
    ):
        drain(train_gan(patches, cfg, more, path, resume=True, extra=other))
    assert drain(train_gan(patches, cfg, more, path, resume=True, extra=dict(extra))).epochs == 2


# ---------------------------------------------------- output sets: all-new or untrusted

BUNDLED = Path(__file__).resolve().parents[1] / "sample_data" / "anogan_small.pt"
FAST_SCORE = ["--mapping", "encoder", "--device", "cpu", "--batch-size", "64"]


def _fast_settings(**changes):
    from napari_anogan.pipeline import ScoreSettings

    return ScoreSettings(mode="encoder", device="cpu", batch_size=64, **changes)


def test_score_summary_lists_the_size_and_sha256_of_every_file_of_its_set(synthetic_dir, tmp_path):
    import hashlib

    from napari_anogan.cli import main
    from napari_anogan.pipeline.output_set import verify_output_set

    out = tmp_path / "out"
    args = ["-q", "score", str(synthetic_dir / "normal.ome.tif"), "-m", str(BUNDLED)]
    assert main([*args, "-o", str(out), *FAST_SCORE]) == 0
    summary = json.loads((out / "normal_summary.json").read_text())
    assert sorted(summary["files"]) == ["overview", "residual", "scores"]
    for entry in summary["files"].values():
        data = (out / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert verify_output_set(out / "normal_summary.json") == []
    assert sorted(p.name for p in out.iterdir()) == [
        "normal_overview.png",
        "normal_residual.tif",
        "normal_scores.csv",
        "normal_summary.json",
    ]


def test_a_set_mixed_by_a_killed_run_is_trusted_neither_by_rerun_nor_by_the_napari_reader(
    synthetic_dir, tmp_path
):
    """A run with other settings killed after renaming its residual: new residual beside
    the old tables and summary. The skip-done check must score it again, napari refuse it."""
    from napari_anogan._reader import read_layers
    from napari_anogan.errors import InputError
    from napari_anogan.pipeline.cluster import already_scored, score_fingerprint, score_one

    scan = str(synthetic_dir / "diseased.ome.tif")
    first, other = _fast_settings(lam=0.7), _fast_settings(lam=0.3)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    fp = score_fingerprint(BUNDLED, first)
    score_one(scan, str(BUNDLED), first, str(old), fp)
    assert already_scored(scan, old, fp) is not None  # complete: skipped by a re-run
    score_one(scan, str(BUNDLED), other, str(new), score_fingerprint(BUNDLED, other))
    residual = old / "diseased_residual.tif"
    assert residual.read_bytes() != (new / "diseased_residual.tif").read_bytes()
    os.replace(new / "diseased_residual.tif", residual)  # what the killed run left

    assert already_scored(scan, old, fp) is None
    with pytest.raises(InputError, match="incomplete or mixed score output set") as info:
        read_layers(str(residual))
    assert "diseased_residual.tif" in str(info.value)


def test_a_rename_failing_halfway_through_a_commit_leaves_no_trusted_set_and_no_temporaries(
    synthetic_dir, tmp_path, monkeypatch, capsys
):
    from napari_anogan import _atomic
    from napari_anogan.cli import main
    from napari_anogan.pipeline.output_set import verify_output_set

    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):
        if str(dst).endswith("_scores.csv"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(_atomic.os, "replace", failing_replace)
    args = ["-q", "score", str(synthetic_dir / "normal.ome.tif"), "-m", str(BUNDLED)]
    assert main([*args, "-o", str(tmp_path), *FAST_SCORE]) == 2
    err = capsys.readouterr().err
    assert "normal_scores.csv: could not write file (No space left on device)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normal_residual.tif"]
    assert verify_output_set(tmp_path / "normal_summary.json") == ["normal_summary.json is missing"]


def test_an_exported_set_opens_in_napari_until_one_of_its_files_changes(tmp_path):
    """The Export widget's way: residual and table first, then a summary naming them."""
    from napari_anogan._reader import read_layers
    from napari_anogan.datasets.synthetic import make_volume
    from napari_anogan.errors import InputError
    from napari_anogan.events import drain
    from napari_anogan.io import Volume
    from napari_anogan.pipeline import score_volume, summary_dict, write_score_outputs

    syn = make_volume(1, 200, 256, seed=5)
    volume = Volume(syn.data, spacing=syn.spacing, name="eye")
    result = drain(score_volume(volume, BUNDLED, _fast_settings()))
    written = write_score_outputs(result, tmp_path, include=["residual", "scores"])
    summary = {**summary_dict(result), "files": {"heatmap": "eye_residual.tif"}}
    write_score_outputs(result, tmp_path, include=["summary"], summary=summary)
    saved = json.loads((tmp_path / "eye_summary.json").read_text())
    assert saved["files"]["heatmap"]["name"] == "eye_residual.tif"
    [(data, _meta, kind)] = read_layers(str(written["residual"]))
    assert kind == "image"
    assert data.shape == (200, 256)
    write_score_outputs(result, tmp_path, include=["residual"], spacing=(1.0, 2.0, 3.0))
    with pytest.raises(InputError, match=r"eye_residual\.tif is not the file eye_summary\.json"):
        read_layers(str(written["residual"]))


def test_temporary_files_of_a_killed_run_are_removed_by_the_next_run_not_a_live_ones(
    synthetic_dir, tmp_path
):
    from napari_anogan._atomic import TempFile
    from napari_anogan.cli import main

    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".tmp-normal_residual-k1ll3d.tif", out / ".tmp-other_scores-dead.csv"]
    for path in stale:
        path.write_bytes(b"half a file")
    live = TempFile(out / "busy_residual.tif")  # another run, still writing
    try:
        args = ["-q", "score", str(synthetic_dir / "normal.ome.tif"), "-m", str(BUNDLED)]
        assert main([*args, "-o", str(out), *FAST_SCORE]) == 0
        assert not any(p.exists() for p in stale)
        assert live.path.exists()
    finally:
        live.discard()
    assert sorted(p.name for p in out.iterdir()) == [
        "normal_overview.png",
        "normal_residual.tif",
        "normal_scores.csv",
        "normal_summary.json",
    ]


def test_end_of_batch_check_fails_volumes_whose_set_is_not_complete(synthetic_dir, tmp_path):
    from napari_anogan.pipeline.cluster import (
        VolumeStatus,
        check_outputs,
        score_fingerprint,
        score_one,
    )

    settings = _fast_settings()
    scan = str(synthetic_dir / "normal.ome.tif")
    done = score_one(
        scan, str(BUNDLED), settings, str(tmp_path), score_fingerprint(BUNDLED, settings)
    )
    claimed = VolumeStatus("x.tif", "x", "scored", volume_score=1.0)  # says so, wrote nothing
    gone = score_one(
        str(synthetic_dir / "diseased.ome.tif"),
        str(BUNDLED),
        settings,
        str(tmp_path),
        score_fingerprint(BUNDLED, settings),
    )
    (tmp_path / "diseased_scores.csv").write_text("slice\n")  # changed after the summary
    statuses = [done, claimed, gone]
    check_outputs(statuses, tmp_path)
    assert [s.status for s in statuses] == ["scored", "failed", "failed"]
    assert "x_summary.json is missing" in claimed.error
    assert "diseased_scores.csv is not the file diseased_summary.json describes" in gone.error


# ------------------------------------------------------------- model weights NaN / Inf


@pytest.mark.parametrize(("net", "value"), [("generator", "nan"), ("discriminator", "inf")])
def test_checkpoint_with_nan_or_inf_weights_is_refused_on_every_path(
    synthetic_dir, tmp_path, capsys, net, value
):
    from napari_anogan.checkpoint import load_checkpoint, save_checkpoint
    from napari_anogan.cli import main
    from napari_anogan.errors import ModelError

    data = read_checkpoint(BUNDLED)
    name = next(k for k, t in data[net].items() if t.is_floating_point() and t.numel() > 1)
    data[net][name] = data[net][name].clone()
    data[net][name].view(-1)[3] = float(value)
    bad = save_checkpoint(tmp_path / "diverged.pt", data)
    with pytest.raises(ModelError, match=rf"{net} weights contain NaN/Inf \({name}\)"):
        load_checkpoint(bad)
    out = tmp_path / "out"
    args = ["-q", "score", str(synthetic_dir / "normal.ome.tif"), "-m", str(bad), "-o", str(out)]
    assert main([*args, *FAST_SCORE]) == 2
    err = capsys.readouterr().err.strip()
    assert "weights contain NaN/Inf" in err
    assert "diverged.pt" in err
    assert err.count("\n") == 0
    assert not out.exists() or list(out.iterdir()) == []


def test_json_outputs_are_standard_json_never_nan(tmp_path):
    from napari_anogan.io import write_json

    path = write_json(
        tmp_path / "x.json",
        {
            "score": float("nan"),
            "scores": [float("inf"), 1.5, -float("inf")],
            "np": np.float32("nan"),
            "array": np.array([np.nan, 2.0]),
            "nested": {"ok": 3},
        },
    )

    def refuse(constant):
        raise AssertionError(f"{constant} in JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "score": None,
        "scores": [None, 1.5, None],
        "np": None,
        "array": [None, 2.0],
        "nested": {"ok": 3},
    }


# ----------------------------------------------------------------- no retina, no score


def _write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("kind", ["black", "mask", "mask volume"])
def test_score_refuses_a_scan_without_retina_naming_it(tmp_path, capsys, kind):
    from napari_anogan.cli import main
    from napari_anogan.resources import SAMPLE_MASK, sample_path

    rng = np.random.default_rng(0)
    if kind == "black":  # a black B-scan as a camera or exporter gives it: dark noise
        scan = _write_png(tmp_path / "blank.png", (rng.random((496, 512)) * 4).astype(np.uint8))
    elif kind == "mask":
        mask = np.zeros((496, 512), np.uint8)
        mask[200:230, 150:300] = 1
        scan = _write_png(tmp_path / "lesion.png", mask)
    else:
        scan = sample_path(SAMPLE_MASK)
    out = tmp_path / "out"
    assert main(["-q", "score", str(scan), "-m", str(BUNDLED), "-o", str(out), *FAST_SCORE]) == 2
    err = capsys.readouterr().err.strip()
    assert "no retina found" in err, err
    assert str(scan) in err
    assert err.count("\n") == 0
    assert list(out.iterdir()) == []


def test_bscans_without_retina_in_a_volume_are_skipped_not_scored(tmp_path):
    from napari_anogan.datasets.synthetic import make_volume
    from napari_anogan.events import drain
    from napari_anogan.io import Volume
    from napari_anogan.pipeline import score_volume

    syn = make_volume(3, 200, 256, seed=11)
    data = syn.data.copy()
    data[1] = np.random.default_rng(1).integers(0, 4, data[1].shape)  # a blank B-scan
    volume = Volume(data, spacing=syn.spacing, name="gap")
    result = drain(score_volume(volume, BUNDLED, _fast_settings(), outdir=tmp_path))
    assert result.no_retina == [1]
    assert 1 not in set(result.patches["slice"].tolist())
    assert {0, 2} <= set(result.patches["slice"].tolist())
    summary = json.loads((tmp_path / "gap_summary.json").read_text())
    assert summary["bscans_without_retina"] == [1]
    assert summary["bscan_scores"][1] is None
    assert summary["bscan_scores"][0] is not None
    assert summary["bscan_scores"][2] is not None


def test_bundled_and_synthetic_scans_all_show_retina_in_every_bscan():
    """The rule keeps every B-scan of real and synthetic scans (all of OCTDL and Kermany:
    benchmarks/bench_retina_check.py)."""
    from napari_anogan.io import read_volume
    from napari_anogan.preprocess import PreprocessConfig
    from napari_anogan.preprocess.flatten import plan_preprocessing
    from napari_anogan.resources import REAL_SAMPLE, SAMPLE_VOLUME, sample_path

    for name in (SAMPLE_VOLUME, REAL_SAMPLE, "kermany2018_NORMAL-1384-1.jpeg"):
        plan = plan_preprocessing(read_volume(sample_path(name)), PreprocessConfig())
        assert plan.retina_found is None, name  # None: every B-scan has retina


# ------------------------------------------------ inputs that must be clear errors


def _tiff_declaring(width: int, height: int) -> bytes:
    """A 142-byte TIFF declaring one width x height float64 page (deflate, 8 bytes of it)."""
    import struct

    entries = [(256, 4, width), (257, 4, height), (258, 3, 64), (259, 3, 8), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 8), (339, 3, 3)]  # fmt: skip
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, value in entries:
        value = data_at if tag == 273 else value
        pack = "<HHIHH" if kind == 3 else "<HHII"
        out += (
            struct.pack(pack, tag, kind, 1, value, 0)
            if kind == 3
            else struct.pack(pack, tag, kind, 1, value)
        )
    return bytes(out + struct.pack("<I", 0) + b"x\x9c\x03\x00\x00\x00\x00\x01")


def test_tiny_file_declaring_a_huge_image_is_refused_before_reading(tmp_path, capsys):
    from napari_anogan._reader import read_layers
    from napari_anogan.cli import main
    from napari_anogan.errors import InputError
    from napari_anogan.io import read_volume

    huge = tmp_path / "huge.tif"
    huge.write_bytes(_tiff_declaring(1_000_000, 1_000_000))  # 7.3 TiB: more than any memory
    assert huge.stat().st_size < 200
    expected = r"declares a 1000000x1000000 float64 image \(7450.6 GiB\), more than the"
    for lazy in (False, True, None):
        with pytest.raises(InputError, match=expected):
            read_volume(huge, lazy=lazy)
    with pytest.raises(InputError, match=expected):
        read_layers(str(huge))
    for command in (["preprocess", str(huge)], ["score", str(huge), "-m", str(BUNDLED)]):
        assert main(["-q", *command, "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert "declares a 1000000x1000000 float64 image" in err
        assert err.count("\n") == 0

    header = tmp_path / "header.npy"  # a .npy header declaring far more than the file holds
    np.save(header, np.zeros((2, 3, 4)))
    header.write_bytes(header.read_bytes().replace(b"(2, 3, 4)", b"(2000, 3000, 40000)"))
    for lazy in (False, True):
        with pytest.raises(InputError, match="declares a 2000x3000x40000 float64 array"):
            read_volume(header, lazy=lazy)


def test_npz_renamed_npy_is_a_clear_error_when_read_lazily_as_score_reads(tmp_path, capsys):
    from napari_anogan.cli import main
    from napari_anogan.errors import InputError
    from napari_anogan.io import read_volume

    fake = tmp_path / "scan.npy"
    with open(fake, "wb") as fh:
        np.savez(fh, data=np.zeros((2, 100, 100), np.uint8))
    for lazy in (False, True):
        with pytest.raises(InputError, match=r"not a single \.npy array"):
            read_volume(fake, lazy=lazy)
    assert main(["-q", "score", str(fake), "-m", str(BUNDLED), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a single .npy array" in err
    assert "Traceback" not in err


def test_checkpoint_file_without_pt_suffix_is_written_and_a_folder_is_refused(tmp_path):
    from napari_anogan.checkpoint import load_checkpoint, save_checkpoint
    from napari_anogan.errors import OutputError
    from napari_anogan.pipeline.train import check_model_output

    data = read_checkpoint(BUNDLED)
    path = save_checkpoint(tmp_path / "model", data)
    assert path == tmp_path / "model"
    assert load_checkpoint(path).model_config.preset == "small"
    folder = tmp_path / "models"
    folder.mkdir()
    for check in (lambda: save_checkpoint(folder, data), lambda: check_model_output(folder)):
        with pytest.raises(OutputError, match="is a folder; expected the model file"):
            check()
    assert check_model_output(tmp_path / "new" / "model") == tmp_path / "new" / "model"
    assert (tmp_path / "new").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "models", "new"]


def test_train_into_a_folder_is_refused_before_any_training(synthetic_dir, tmp_path, capsys):
    from napari_anogan.cli import main

    args = ["-q", "train", str(synthetic_dir / "healthy_0.ome.tif"), "-o", str(tmp_path)]
    assert main([*args, "--preset", "tiny", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path}: is a folder; expected the model file to write" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_disk_full_while_saving_a_checkpoint_is_a_clear_error_and_keeps_the_old_one(tmp_path):
    """The kernel refuses the write (a file size limit, as a full disk would): the old
    checkpoint survives and the error is the same clear OutputError as score's."""
    import resource

    from napari_anogan.checkpoint import save_checkpoint
    from napari_anogan.errors import OutputError

    data = read_checkpoint(BUNDLED)
    path = tmp_path / "model.pt"
    path.write_bytes(BUNDLED.read_bytes())
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    try:
        with pytest.raises(OutputError, match=r"model.pt: could not write file \(File too large"):
            save_checkpoint(path, data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_no_space_left_while_saving_a_checkpoint_says_so(tmp_path, monkeypatch):
    import errno

    from napari_anogan import checkpoint
    from napari_anogan.errors import OutputError

    class Full(io.RawIOBase):
        def __init__(self, path, mode):
            self.file = open(path, mode)  # noqa: SIM115 - closed below

        def writable(self):
            return True

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.file.close()
            super().close()

    monkeypatch.setattr(checkpoint, "open", Full, raising=False)
    with pytest.raises(OutputError, match=r"m.pt: could not write file \(No space left on device"):
        checkpoint.save_checkpoint(tmp_path / "m.pt", read_checkpoint(BUNDLED))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ quiet, clear logs


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "-v", "score", "x.tif", "-m", "m.pt", "-o", "o"],
        ["score", "x.tif", "-m", "m.pt", "-o", "o", "-q", "-v"],
        ["-q", "score", "-v", "x.tif", "-m", "m.pt", "-o", "o"],
    ],
)
def test_quiet_and_verbose_go_before_or_after_the_subcommand(argv):
    from napari_anogan.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (True, True)
    plain = build_parser().parse_args(["score", "x.tif", "-m", "m.pt", "-o", "o"])
    assert (plain.quiet, plain.verbose) == (False, False)


def test_a_truncated_tiff_is_refused_whatever_level_the_tifffile_logger_has(tmp_path):
    """tifffile reports a cut strip only in its log; an application that silenced that
    logger (as the fuzzing script did) must not get the zero-filled rest as data."""
    import logging

    import tifffile

    from napari_anogan.errors import InputError
    from napari_anogan.io import read_volume

    data = np.random.default_rng(0).integers(0, 65535, (4, 64, 64), endpoint=True)
    tifffile.imwrite(
        tmp_path / "full.tif", data.astype(np.uint16), compression="zlib", photometric="minisblack"
    )
    blob = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "half.tif").write_bytes(blob[: len(blob) // 2])
    tiff_logger = logging.getLogger("tifffile")
    level = tiff_logger.level
    tiff_logger.setLevel(logging.CRITICAL)
    try:
        for lazy in (False, True):
            with pytest.raises(InputError, match=r"half\.tif.*cannot read"):
                np.asarray(read_volume(tmp_path / "half.tif", lazy=lazy).data)
    finally:
        tiff_logger.setLevel(level)
    assert tiff_logger.level == level
