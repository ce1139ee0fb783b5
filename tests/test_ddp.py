"""DistributedDataParallel training on CPU: gloo, 2 real processes, tiny preset.

Two kinds of multi-process runs:

* ``train_gan`` in two worker processes joined by a ``file://`` process group (the
  workers record which patches they read), compared with single-process runs here;
* the real ``napari-anogan train`` under ``torchrun --standalone`` (loopback only), whose
  model must load with the normal loader and score a volume.

What is asserted about equality (see :mod:`napari_anogan.training.ddp`): shards are disjoint
and together are the single-process batches; a DDP run is bit for bit reproducible from its
seed and so is resuming it; all ranks end with the same weights; with BatchNorm switched
off a DDP run equals the single-process run to float32 rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_anogan.checkpoint import load_checkpoint, read_checkpoint
from napari_anogan.cli import main
from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.errors import AnoganError, InputError
from napari_anogan.events import drain
from napari_anogan.io import Volume
from napari_anogan.models import get_preset
from napari_anogan.pipeline import ScoreSettings, score_volume
from napari_anogan.preprocess import PreprocessConfig
from napari_anogan.training import TrainConfig, ddp, holdout_split, train_gan

pytestmark = pytest.mark.slow  # real processes: DDP

CFG = get_preset("tiny", patch_size=32)
EXTRA = {"preprocess_config": PreprocessConfig(patch_size=32).to_dict(), "data_fingerprint": "t"}
N_PATCHES, BATCH, SEED = 44, 8, 3  # 42 training patches -> 5 batches of 8 per epoch


def train_config(epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=BATCH,
        seed=SEED,
        device="cpu",
        sample_every=0,
        reference_steps=2,
        reference_max_patches=2,
        # float32: sharded and single-process runs then agree to float32 rounding (under
        # bf16 autocast they would differ by bf16's, ~2e-4 after 5 steps)
        amp=False,
    )


def make_patches() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = np.linspace(0, np.pi, 32)
    freq = rng.uniform(1, 4, (N_PATCHES, 1, 1, 1))
    bands = np.sin(freq * rows[None, None, :, None]) * np.ones((1, 1, 1, 32))
    return np.clip(bands + rng.normal(0, 0.05, bands.shape), -1, 1).astype(np.float32)


class Recording(np.ndarray):
    """Patches that log every index array they are read with (what training uses)."""

    log: list

    def __getitem__(self, key):
        if isinstance(key, np.ndarray) and key.dtype.kind in "iu":
            self.log.append(np.array(key))
        return np.asarray(super().__getitem__(key))


def recording(patches: np.ndarray) -> Recording:
    rec = patches.view(Recording)
    rec.log = []
    return rec


def _affine_only(self, x):
    """BatchNorm without batch statistics: its per-channel affine part (every parameter
    still used, so DDP sees the same parameters; no sample depends on another)."""
    return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def no_batch_norm(monkeypatch=None):
    """Replace every BatchNorm by its affine part (for the equivalence check)."""
    from torch.nn.modules import batchnorm

    if monkeypatch is None:
        batchnorm._BatchNorm.forward = _affine_only
    else:
        monkeypatch.setattr(batchnorm._BatchNorm, "forward", _affine_only)


# ----------------------------------------------------------------------- the workers

WORKER = r"""
import sys
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, sys.argv[5])
import test_ddp as t
from napari_anogan.training import ddp
from napari_anogan.events import drain
from napari_anogan.training import train_gan

rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
torch.set_num_threads(1)
ctx = ddp.init_distributed("cpu", init_method="file://" + init, world_size=world, rank=rank)
assert ddp.current() == ctx
patches = t.recording(np.load(out / "patches.npy"))

def run(name, epochs, resume=False, build_reference=True):
    patches.log = []
    result = drain(train_gan(patches, t.CFG, t.train_config(epochs), out / f"{name}.pt",
                             resume=resume, extra=dict(t.EXTRA), build_reference=build_reference))
    n_train = (epochs - (1 if resume else 0)) * 5
    np.save(out / f"{name}_rank{rank}_idx.npy", np.stack(patches.log[:n_train]))
    state = {f"g.{k}": v for k, v in result.generator.state_dict().items()}
    state.update({f"d.{k}": v for k, v in result.discriminator.state_dict().items()})
    np.savez(out / f"{name}_rank{rank}_state.npz", **{k: v.numpy() for k, v in state.items()})

run("full", 2)
run("again", 2)
run("part", 1)
import shutil
if rank == 0:
    shutil.copy(out / "part.pt", out / "part_epoch1.pt")
torch.distributed.barrier()  # rank 1 resumes from the complete 1-epoch checkpoint
run("part", 2, resume=True)
t.no_batch_norm()
run("nobn", 1, build_reference=False)
ddp.shutdown()
"""


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    """Run the worker script in 2 processes (gloo, file:// rendezvous); return its folder."""
    out = tmp_path_factory.mktemp("ddp")
    np.save(out / "patches.npy", make_patches())
    init = out / "rendezvous"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(r),
                "2",
                str(init),
                str(out),
                str(Path(__file__).parent),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)[-4000:]
    return out


def _state(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _ckpt_states(path: Path) -> dict[str, torch.Tensor]:
    data = read_checkpoint(path)
    return {
        **{f"g.{k}": v for k, v in data["generator"].items()},
        **{f"d.{k}": v for k, v in data["discriminator"].items()},
    }


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a
    )


# ------------------------------------------------------------------------ unit tests


@pytest.mark.parametrize(("batch", "world"), [(8, 2), (12, 3), (8, 8), (64, 4)])
def test_epoch_shards_are_disjoint_and_cover_the_epoch(batch, world):
    order = np.random.default_rng(1).permutation(np.arange(100, 100 + 5 * batch + 3))
    n_batches = len(order) // batch
    shards = [ddp.epoch_shards(order, batch, n_batches, world, r) for r in range(world)]
    assert all(s.shape == (n_batches, batch // world) for s in shards)
    for b in range(n_batches):
        parts = [set(s[b].tolist()) for s in shards]
        assert sum(len(p) for p in parts) == batch  # disjoint
        assert set().union(*parts) == set(order[b * batch : (b + 1) * batch].tolist())
    everything = np.concatenate([s.ravel() for s in shards])
    assert len(set(everything.tolist())) == everything.size == n_batches * batch


def test_uneven_batch_is_a_clear_error():
    with pytest.raises(InputError, match="multiple of 3"):
        ddp.shard_slice(8, 3, 0)
    with pytest.raises(InputError, match="multiple of 4"):
        ddp.shard(np.arange(2), 4, 0)


def test_launch_detection_and_bad_combinations():
    assert ddp.launched_by_torchrun({"WORLD_SIZE": "4"})
    assert not ddp.launched_by_torchrun({"WORLD_SIZE": "1"})
    assert not ddp.launched_by_torchrun({"WORLD_SIZE": "x"})
    assert ddp.current() is None
    with pytest.raises(AnoganError, match="torchrun"):
        ddp.init_distributed("cpu", environ={})
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    with pytest.raises(AnoganError, match="cuda:1 cannot be used with DDP"):
        ddp.init_distributed("cuda:1", environ=env)
    with pytest.raises(AnoganError, match="nccl backend needs CUDA"):
        ddp.init_distributed("cpu", backend="nccl", environ=env)
    with pytest.raises(AnoganError, match="RANK 3 is not in"):
        ddp.init_distributed("cpu", environ={**env, "RANK": "3"})
    with pytest.raises(AnoganError, match="LOCAL_RANK"):
        ddp.init_distributed("cpu", environ={**env, "LOCAL_RANK": "one"})
    if not torch.cuda.is_available():
        with pytest.raises(AnoganError, match="CUDA is not available"):
            ddp.init_distributed("cuda", environ=env)
    assert ddp.current() is None


def test_cli_ddp_without_torchrun_or_with_encoder_is_one_clear_line(
    synthetic_dir, tmp_path, capsys, monkeypatch
):
    for var in ddp.TORCHRUN_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    inputs = [str(p) for p in sorted(synthetic_dir.glob("healthy_*.ome.tif"))]
    args = ["train", *inputs, "-o", str(tmp_path / "m.pt"), "--preset", "tiny", "--device", "cpu"]
    assert main([*args, "--ddp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--ddp needs the torchrun environment" in err
    assert main([*args, "--ddp", "--encoder"]) == 2
    assert "--encoder is not supported with DDP" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------- 2-process runs


@pytest.mark.slow
def test_ranks_read_disjoint_shards_that_make_the_single_process_batches(ddp_runs, tmp_path):
    single = recording(make_patches())
    drain(train_gan(single, CFG, train_config(2), tmp_path / "single.pt", extra=dict(EXTRA)))
    batches = single.log[:10]  # 2 epochs x 5 batches of 8
    r0, r1 = (np.load(ddp_runs / f"full_rank{r}_idx.npy") for r in (0, 1))
    assert r0.shape == r1.shape == (10, BATCH // 2)
    train_idx, hold_idx = holdout_split(N_PATCHES, 0.05, SEED)
    for step in range(10):
        assert not set(r0[step]) & set(r1[step])
        np.testing.assert_array_equal(np.concatenate([r0[step], r1[step]]), batches[step])
    for epoch in range(2):  # each epoch: every batch of 8 of the permutation, held-out unseen
        seen = np.concatenate([r0[5 * epoch : 5 * epoch + 5], r1[5 * epoch : 5 * epoch + 5]])
        assert len(set(seen.ravel().tolist())) == 40
        assert set(seen.ravel().tolist()) <= set(train_idx.tolist())
        assert not set(seen.ravel().tolist()) & set(hold_idx.tolist())


@pytest.mark.slow
def test_ddp_run_is_reproducible_all_ranks_agree_and_resume_is_exact(ddp_runs):
    full = _ckpt_states(ddp_runs / "full.pt")
    assert _same(full, _ckpt_states(ddp_runs / "again.pt"))  # same seed, bit for bit
    assert _same(full, _ckpt_states(ddp_runs / "part.pt"))  # 1 epoch + resume = 2 epochs
    assert not _same(full, _ckpt_states(ddp_runs / "part_epoch1.pt"))
    for name in ("full", "part", "nobn"):
        assert _same(
            _state(ddp_runs / f"{name}_rank0_state.npz"),
            _state(ddp_runs / f"{name}_rank1_state.npz"),
        )
    assert _same(full, _state(ddp_runs / "full_rank0_state.npz"))
    training = json.loads(read_checkpoint(ddp_runs / "full.pt")["training"])
    assert training["epochs_done"] == 2
    assert training["distributed"]["world_size"] == 2
    assert training["distributed"]["backend"] == "gloo"
    assert "per-rank" in training["distributed"]["batch_norm"]


@pytest.mark.slow
def test_ddp_model_loads_and_scores(ddp_runs):
    model = load_checkpoint(ddp_runs / "full.pt")
    assert model.reference  # built by rank 0 only
    syn = make_volume(n_slices=2, height=160, width=192, seed=8)
    settings = ScoreSettings(mode="iterative", steps=2, stride=16, device="cpu")
    result = drain(score_volume(Volume(syn.data, spacing=syn.spacing, name="s"), model, settings))
    assert len(result.patches["slice"]) > 0
    assert np.isfinite(result.patches["anomaly_score"]).all()
    assert np.isfinite(result.volume_score)


@pytest.mark.slow
def test_without_batch_norm_ddp_equals_one_process_to_float32_rounding(
    ddp_runs, tmp_path, monkeypatch
):
    no_batch_norm(monkeypatch)
    result = drain(
        train_gan(make_patches(), CFG, train_config(1), tmp_path / "s.pt", build_reference=False)
    )
    single = {f"g.{k}": v for k, v in result.generator.state_dict().items()}
    single.update({f"d.{k}": v for k, v in result.discriminator.state_dict().items()})
    distributed = _state(ddp_runs / "nobn_rank0_state.npz")
    assert single.keys() == distributed.keys()
    worst = max(float(np.abs(single[k].numpy() - distributed[k]).max()) for k in single)
    init = drain(train_gan(make_patches(), CFG, train_config(0), None, build_reference=False))
    start = {f"g.{k}": v for k, v in init.generator.state_dict().items()}
    start.update({f"d.{k}": v for k, v in init.discriminator.state_dict().items()})
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    # 5 Adam steps of lr 2e-4 move weights by ~1e-3; the two runs differ by rounding only
    assert moved > 5e-4
    assert worst < 1e-5


# ---------------------------------------------------------------- torchrun, the CLI


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun) if torchrun.exists() else shutil.which("torchrun") or "torchrun"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ddp.TORCHRUN_VARIABLES:
        env.pop(var, None)
    return subprocess.run(
        [*cmd, "--standalone", "--nproc-per-node", "2", "-m", "napari_anogan.cli", "-q", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_torchrun_cli_trains_resumes_and_the_model_scores(synthetic_dir, tmp_path):
    inputs = [str(p) for p in sorted(synthetic_dir.glob("healthy_*.ome.tif"))]
    model = tmp_path / "ddp.pt"
    common = ["--preset", "tiny", "--patches-per-scan", "8", "--batch-size", "8", "--device", "cpu"]
    run = _torchrun(
        "train", *inputs, "-o", str(model), "--epochs", "1", *common, "--ddp", cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("model written to") == 1  # rank 0 only
    assert "2 DDP processes" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt"]  # no temp files left
    # auto-detected without --ddp, resumed to 2 epochs
    run = _torchrun(
        "train", *inputs, "-o", str(model), "--epochs", "2", "--resume", *common, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
    training = json.loads(read_checkpoint(model)["training"])
    assert training["epochs_done"] == 2
    assert training["distributed"]["world_size"] == 2
    assert len(training["history"]) == 2
    out = tmp_path / "scores"
    score = ["score", str(synthetic_dir / "diseased.ome.tif"), "-m", str(model), "-o", str(out)]
    assert main([*score, "--mapping", "iterative", "--steps", "2"]) == 0
    summary = json.loads((out / "diseased_summary.json").read_text())
    assert summary["n_patches"] > 0
    assert summary["model"]["training"]["distributed"]["world_size"] == 2


@pytest.mark.slow
def test_torchrun_batch_not_divisible_is_a_clear_error(synthetic_dir, tmp_path):
    inputs = [str(p) for p in sorted(synthetic_dir.glob("healthy_*.ome.tif"))]
    run = _torchrun(
        "train", *inputs, "-o", str(tmp_path / "m.pt"), "--preset", "tiny", "--epochs", "1",
        "--patches-per-scan", "8", "--batch-size", "7", "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode != 0
    assert "cannot be split evenly over 2 processes" in run.stderr
    assert "multiple of 2" in run.stderr
    assert not (tmp_path / "m.pt").exists()
