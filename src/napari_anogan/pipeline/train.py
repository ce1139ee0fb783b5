"""Training from files: read healthy scans, draw patches, train the GAN (and encoder).

:func:`collect_training_patches` preprocesses healthy inputs and draws random training
patches plus grid patches of held-out B-scans (the healthy reference);
:func:`train_from_paths` trains a model from them (:mod:`napari_anogan.training`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.errors import InputError, ModelError, OutputError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.io import read_volume
from napari_anogan.pipeline.score import ScoreSettings, load_model, model_preprocess_config

logger = logging.getLogger(__name__)


def _expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    return [Path(p) for p in paths]


def _fingerprint(arrays: Iterable[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def collect_training_patches(
    paths: Sequence[str | Path],
    preprocess_config,
    patches_per_scan: int,
    seed: int = 0,
    *,
    holdout_fraction: float = 0.0,
    reference_stride: int = defaults.SCORE_STRIDE,
) -> Generator[ProgressEvent, None, tuple[np.ndarray, np.ndarray, dict, np.ndarray]]:
    """Read healthy scans, preprocess them and draw random training patches.

    With ``holdout_fraction``, that fraction of all B-scans (whole B-scans, spread over
    the inputs) is held out of training; their grid patches, cut as scoring cuts them,
    are returned as the reference set for the healthy score distribution. Grid patches
    rather than random ones, and whole B-scans rather than single patches: random
    patches are centred in the retina and score lower than the grid's edge patches, and
    patches of a B-scan that was trained on score lower than those of unseen B-scans
    (measured: both made the healthy 99th percentile far too low for unseen eyes).

    Parameters
    ----------
    paths : sequence of path
        Healthy volumes, B-scans or folders of B-scans.
    preprocess_config : PreprocessConfig
        Preprocessing of the model.
    patches_per_scan : int
        Random training patches per training B-scan.
    seed : int
        Seed of the held-out choice and of the patch positions.
    holdout_fraction : float
        Fraction of the B-scans held out (rounded over the inputs seen so far, so a
        single 2-D B-scan holds none out).
    reference_stride : int
        Grid stride of the reference patches (the scoring default).

    Returns
    -------
    patches : (N, 1, P, P) ndarray of float32
        Training patches.
    reference : (M, 1, P, P) ndarray of float32
        Grid patches of the held-out B-scans (M = 0 without any).
    info : dict
        ``inputs`` (paths), ``n_bscans``, ``n_patches``, ``data_fingerprint``,
        ``holdout_bscans`` (``[input index, slice]`` pairs) and ``n_reference_patches``.
    bank : (K, 1, P, P) ndarray of float32
        Grid patches of the training (not held-out) B-scans, cut as scoring cuts them:
        the healthy patches of the model's feature bank.
    """
    from napari_anogan.preprocess import grid_patches, preprocess_volume, random_patches

    inputs = _expand_inputs(paths)
    if not inputs:
        raise InputError("no healthy training inputs given")
    rng = np.random.default_rng(seed)
    pick_rng = np.random.default_rng([seed, 7])
    chunks, ref_chunks, bank_chunks, held_out = [], [], [], []
    n_bscans = 0
    for i, path in enumerate(inputs):
        yield ProgressEvent(EventKind.STAGE, i, len(inputs), message=f"preprocessing {path.name}")
        volume = read_volume(path)
        pre = preprocess_volume(volume, preprocess_config)
        n_slices = volume.shape[0]
        # Hold out round(f * B-scans so far) in total: the same fraction of every input
        # on average, exactly the fraction overall.
        k = round(holdout_fraction * (n_bscans + n_slices)) - len(held_out)
        held = np.sort(pick_rng.choice(n_slices, size=min(max(k, 0), n_slices), replace=False))
        train_slices = np.setdiff1d(np.arange(n_slices), held)
        chunks.append(random_patches(pre, patches_per_scan, seed=rng, slices=train_slices).images)
        if train_slices.size:
            grid = grid_patches(pre, stride=reference_stride, slices=train_slices)
            bank_chunks.append(grid.images)
        if held.size:
            ref_chunks.append(grid_patches(pre, stride=reference_stride, slices=held).images)
            held_out += [[i, int(s)] for s in held]
        n_bscans += n_slices
    patches = np.concatenate(chunks).astype(np.float32)
    size = preprocess_config.patch_size
    empty = np.zeros((0, 1, size, size), np.float32)
    reference = np.concatenate(ref_chunks).astype(np.float32) if ref_chunks else empty
    bank = np.concatenate(bank_chunks).astype(np.float32) if bank_chunks else empty
    info = {
        "inputs": [str(p) for p in inputs],
        "n_bscans": n_bscans,
        "n_patches": len(patches),
        "data_fingerprint": _fingerprint([patches]),
        "holdout_bscans": held_out,
        "n_reference_patches": len(reference),
    }
    return patches, reference, info, bank


def reference_patches_of(model) -> Generator[ProgressEvent, None, np.ndarray]:
    """Grid patches of a model's held-out training B-scans, cut as scoring cuts them.

    The patches :func:`collect_training_patches` gave its healthy reference, from the
    inputs and held-out B-scans the checkpoint records, with today's grid.

    Parameters
    ----------
    model : LoadedModel or path

    Returns
    -------
    (M, 1, P, P) ndarray of float32

    Raises
    ------
    ModelError
        If the checkpoint records no held-out B-scans, or its training inputs are gone.
    """
    from napari_anogan.preprocess import grid_patches, preprocess_volume

    model = load_model(model)
    data = (model.training or {}).get("extra", {}).get("data", {})
    inputs = [Path(p) for p in data.get("inputs", [])]
    held: dict[int, list[int]] = {}
    for i, s in data.get("holdout_bscans", []):
        held.setdefault(int(i), []).append(int(s))
    if not held:
        raise ModelError("the model records no held-out B-scans", model.path)
    missing = [str(inputs[i]) for i in held if i >= len(inputs) or not inputs[i].exists()]
    if missing:
        raise ModelError(f"training inputs not found: {', '.join(missing)}", model.path)
    cfg = model_preprocess_config(model)
    chunks = []
    for k, (i, slices) in enumerate(sorted(held.items())):
        yield ProgressEvent(
            EventKind.STAGE, k, len(held), message=f"preprocessing {inputs[i].name}"
        )
        pre = preprocess_volume(read_volume(inputs[i]), cfg)
        chunks.append(grid_patches(pre, stride=ScoreSettings().stride, slices=slices).images)
    return np.concatenate(chunks).astype(np.float32)


def check_model_output(output: str | Path) -> Path:
    """Check, before any training, that the model file ``output`` can be written.

    A missing folder is created (as ``score`` creates its output folder); an existing
    folder is refused (``-o DIR``: the model is one file, name it); a file name without
    the ``.pt`` suffix is written as given.

    Raises
    ------
    OutputError
        If ``output`` is a folder, or its folder cannot be created or written.
    """
    from napari_anogan._atomic import TempFile

    path = Path(output)
    if path.is_dir():
        raise OutputError(
            f"is a folder; expected the model file to write, e.g. {path / 'model.pt'}", path
        )
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder ({exc.strerror})", folder) from exc
    TempFile(path).discard()  # writable: fail now, not after the first epoch
    return path


def train_from_paths(
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    preset: str = defaults.TRAIN_PRESET,
    epochs: int = defaults.TRAIN_EPOCHS,
    patches_per_scan: int = defaults.PATCHES_PER_SCAN,
    batch_size: int = defaults.TRAIN_BATCH_SIZE,
    seed: int = defaults.SEED,
    device: str = defaults.DEVICE,
    resume: bool = False,
    preprocess_config=None,
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    encoder: bool = defaults.TRAIN_ENCODER,
    encoder_epochs: int | None = None,
) -> Generator[ProgressEvent, None, object]:
    """Train a healthy model from files or folders of healthy scans.

    Parameters
    ----------
    paths : sequence of path
        Healthy volumes, B-scans or folders of B-scans.
    output : path
        Checkpoint file to write (atomically, after every epoch); checked first
        (:func:`check_model_output`): not a folder, its folder writable.
    preset : str
        Model preset (``paper``, ``small`` or ``tiny``).
    epochs, patches_per_scan, batch_size, seed, device
        Training settings (paper: 20 epochs).
    resume : bool
        Continue an interrupted run from ``output``.
    preprocess_config : PreprocessConfig, optional
        Preprocessing; stored in the checkpoint and reused by scoring.
    model_overrides : dict, optional
        Custom widths etc. passed to the preset.
    train_overrides : dict, optional
        Other :class:`~napari_anogan.training.TrainConfig` fields (e.g. ``reference_steps``).
    encoder : bool
        After the GAN, train the f-AnoGAN encoder (:func:`napari_anogan.training.add_encoder`)
        and store it in the checkpoint; the healthy reference is then computed with the
        ``hybrid`` mapping (the scoring default). With ``resume`` on a finished model
        (same inputs and settings) this adds an encoder to it.
    encoder_epochs : int, optional
        Encoder training epochs (default: :class:`~napari_anogan.training.EncoderConfig`'s).

    Last, the feature bank of the feature score is built from grid patches of the training
    B-scans (:func:`napari_anogan.training.add_feature_bank`) and the healthy reference is
    recomputed with it.

    Returns
    -------
    TrainResult
    """
    from napari_anogan.models import get_preset
    from napari_anogan.preprocess import PreprocessConfig
    from napari_anogan.training import TrainConfig, train_gan

    output = check_model_output(output)
    preprocess_config = preprocess_config or PreprocessConfig()
    model_config = get_preset(preset, **(model_overrides or {}))
    if model_config.patch_size != preprocess_config.patch_size:
        preprocess_config = type(preprocess_config)(
            **{**preprocess_config.to_dict(), "patch_size": model_config.patch_size}
        )
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        **(train_overrides or {}),
    )
    patches, reference, info, bank_patches = yield from collect_training_patches(
        paths,
        preprocess_config,
        patches_per_scan,
        seed=seed,
        holdout_fraction=train_config.holdout_fraction,
        reference_stride=ScoreSettings().stride,
    )
    # Held-out B-scans give the reference; only without any (a single B-scan) does
    # train_gan hold out single patches instead.
    reference_patches = reference if len(reference) else None
    extra = {
        "preprocess_config": preprocess_config.to_dict(),
        "data_fingerprint": info["data_fingerprint"],
        "data": info,
    }
    result = yield from train_gan(
        patches,
        model_config,
        train_config,
        Path(output),
        resume=resume,
        extra=extra,
        build_reference=not encoder,
        reference_patches=reference_patches,
    )
    if encoder:
        from napari_anogan.training import EncoderConfig, add_encoder

        encoder_config = EncoderConfig(
            seed=seed, device=device, **({"epochs": encoder_epochs} if encoder_epochs else {})
        )
        result = yield from add_encoder(
            Path(output),
            patches,
            encoder_config,
            data_fingerprint=info["data_fingerprint"],
            reference_patches=reference_patches,
        )
    from napari_anogan.training import add_feature_bank, ddp

    ctx = ddp.current()
    if len(bank_patches) and (ctx is None or ctx.is_main):  # rank 0 writes the model
        result.feature_bank, result.reference = yield from add_feature_bank(
            Path(output), bank_patches, reference_patches, device=device
        )
    return result
