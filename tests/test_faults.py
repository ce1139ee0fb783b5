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
