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
    folders: str = defaults.FOLDERS,
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
    folders : {"auto", "volume", "collection"}
        How a folder of B-scan images is read (:func:`napari_anogan.io.inputs.expand_inputs`).

    Returns
    -------
    patches : (N, 1, P, P) ndarray of float32
        Training patches.
    reference : (M, 1, P, P) ndarray of float32
        Grid patches of the held-out B-scans (M = 0 without any).
    info : dict
        ``inputs`` (paths), ``n_bscans``, ``n_patches``, ``data_fingerprint``,
        ``holdout_bscans`` (``[input index, slice]`` pairs), ``n_reference_patches`` and
        ``pixel_size_um`` (median (slice, depth, width) spacing of the inputs that state
        it, None entries where none does); also ``bank_groups``, an int array (not JSON:
        callers pop it before storing ``info``) of the B-scan each bank patch comes from.
    bank : (K, 1, P, P) ndarray of float32
        Grid patches of the training (not held-out) B-scans, cut as scoring cuts them:
        the healthy patches of the model's feature bank.
    """
    from napari_anogan.io.inputs import expand_inputs
    from napari_anogan.preprocess import grid_patches, preprocess_volume, random_patches

    inputs, _ = expand_inputs(paths, folders)
    if not inputs:
        raise InputError("no healthy training inputs given")
    rng = np.random.default_rng(seed)
    pick_rng = np.random.default_rng([seed, 7])
    chunks, ref_chunks, bank_chunks, group_chunks, held_out = [], [], [], [], []
    n_bscans = 0
    spacings = []
    for i, path in enumerate(inputs):
        yield ProgressEvent(EventKind.STAGE, i, len(inputs), message=f"preprocessing {path.name}")
        volume = read_volume(path)
        spacings.append([np.nan if v is None else float(v) for v in volume.spacing])
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
            group_chunks.append(n_bscans + grid.coords[:, 0])  # the B-scan of each patch
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
        "pixel_size_um": _median_spacing(spacings),
        "bank_groups": (np.concatenate(group_chunks) if group_chunks else np.zeros(0, np.int64)),
    }
    return patches, reference, info, bank


def _median_spacing(spacings: list[list[float]]) -> list[float | None]:
    """Median spacing per axis over the inputs that state it (None where none does)."""
    table = np.asarray(spacings, np.float64).reshape(-1, 3)
    known = ~np.isnan(table)
    return [
        round(float(np.median(table[known[:, k], k])), 4) if known[:, k].any() else None
        for k in range(3)
    ]


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


def auto_epochs(n_patches: int, batch_size: int, *, adapt: bool = False) -> int:
    """Epochs that give the data about the number of updates the recipe needs.

    From scratch: :data:`~napari_anogan.settings.TRAIN_UPDATES` GAN updates (the real-data
    recipe: 60 epochs of 205 OCTDL B-scans), at least :data:`~napari_anogan.settings.
    TRAIN_MIN_EPOCHS` and at most :data:`~napari_anogan.settings.TRAIN_MAX_EPOCHS` epochs.
    Adapting a trained model (``adapt``): :data:`~napari_anogan.settings.ADAPT_UPDATES`.

    Examples
    --------
    >>> auto_epochs(195 * 64, 64)  # OCTDL: 205 B-scans, 10 held out, 64 patches each
    60
    """
    batches = max(1, n_patches // max(1, min(batch_size, n_patches)))
    updates = defaults.ADAPT_UPDATES if adapt else defaults.TRAIN_UPDATES
    low = 1 if adapt else defaults.TRAIN_MIN_EPOCHS
    return int(np.clip(round(updates / batches), low, defaults.TRAIN_MAX_EPOCHS))


def _init_model(init: str | Path):
    """Return a model to start from (loaded and checked as for scoring) and its card entry."""
    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.model_card import model_card

    parent = load_checkpoint(init)
    entry = {"file": Path(init).name, "data_kind": model_card(parent).get("data_kind", "unknown")}
    return parent, entry


def training_plan(
    paths: Sequence[str | Path],
    *,
    preset: str = defaults.TRAIN_PRESET,
    epochs: int | None = None,
    patches_per_scan: int = defaults.PATCHES_PER_SCAN,
    batch_size: int = defaults.TRAIN_BATCH_SIZE,
    encoder: bool = defaults.TRAIN_ENCODER,
    encoder_epochs: int = defaults.ENCODER_EPOCHS,
    init: str | Path | None = None,
    device: str = defaults.DEVICE,
    folders: str = defaults.FOLDERS,
) -> dict:
    """Say what :func:`train_from_paths` would do with these inputs, and how long it takes.

    Counts the B-scans (from file headers where it can, :func:`~napari_anogan.io.inputs.
    bscan_count`), chooses the
    epochs as training would (:func:`auto_epochs`) and times a few updates of the model
    on the device (:func:`~napari_anogan.training.estimate.estimate_training_seconds`).

    Returns
    -------
    dict
        ``scans``, ``bscans``, ``patches``, ``epochs``, ``updates`` and ``seconds``.
    """
    from napari_anogan.io.inputs import bscan_count, expand_inputs
    from napari_anogan.models import get_preset
    from napari_anogan.training.estimate import estimate_training_seconds

    scans, _ = expand_inputs(paths, folders)
    if not scans:
        raise InputError("no healthy training inputs given")
    n_bscans = sum(bscan_count(p) for p in scans)
    holdout = round(defaults.HOLDOUT_FRACTION * n_bscans)
    n_patches = (n_bscans - holdout) * patches_per_scan
    model_config = _init_model(init)[0].model_config if init is not None else get_preset(preset)
    if epochs is None:
        epochs = auto_epochs(n_patches, batch_size, adapt=init is not None)
    seconds = estimate_training_seconds(
        model_config,
        n_patches,
        epochs,
        batch_size=batch_size,
        encoder_epochs=encoder_epochs if encoder else 0,
        device=device,
    )
    return {
        "scans": len(scans),
        "bscans": n_bscans,
        "patches": n_patches,
        "epochs": epochs,
        "updates": epochs * max(1, n_patches // max(1, min(batch_size, n_patches))),
        "seconds": round(seconds, 1),
    }


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
    epochs: int | None = None,
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
    init: str | Path | None = None,
    time_limit: float | None = None,
    folders: str = defaults.FOLDERS,
    data_kind: str = "real",
    description: str = "",
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
        Model preset (``paper``, ``small`` or ``tiny``); ignored with ``init``.
    epochs : int, optional
        GAN training epochs; None: :func:`auto_epochs` for the data (about the number of
        updates of the measured recipe).
    patches_per_scan, batch_size, seed, device
        Training settings.
    resume : bool
        Continue an interrupted run from ``output``.
    preprocess_config : PreprocessConfig, optional
        Preprocessing; stored in the checkpoint and reused by scoring. With ``init``,
        the initial model's.
    model_overrides : dict, optional
        Custom widths etc. passed to the preset.
    train_overrides : dict, optional
        Other :class:`~napari_anogan.training.TrainConfig` fields (e.g. ``reference_steps``).
    encoder : bool
        After the GAN, train the f-AnoGAN encoder (:func:`napari_anogan.training.add_encoder`)
        and store it in the checkpoint. With ``resume`` on a finished model (same inputs
        and settings) this adds an encoder to it.
    encoder_epochs : int, optional
        Encoder training epochs (default: :class:`~napari_anogan.training.EncoderConfig`'s).
    init : path, optional
        A trained model to adapt: G, D and the encoder start from its weights
        (fine-tuning on these scans, e.g. a few healthy scans of another device), with its
        architecture and preprocessing; the feature bank and the healthy reference are
        built from the new scans only.
    time_limit : float, optional
        Minutes the whole training may take: the GAN stops after the last epoch that
        fits in :data:`~napari_anogan.settings.TIME_LIMIT_GAN_SHARE` of it, the encoder
        after the last that fits in :data:`~napari_anogan.settings.TIME_LIMIT_ENCODER_SHARE`;
        the feature bank and healthy reference are always built (a usable model).
    folders : {"auto", "volume", "collection"}
        How a folder of B-scan images is read (:func:`napari_anogan.io.inputs.expand_inputs`).
    data_kind : {"real", "synthetic"}
        What the training scans are, for the model card.
    description : str
        Free text for the model card (device, protocol, cohort).

    Last, the feature bank of the feature score is built from grid patches of the training
    B-scans (:func:`napari_anogan.training.add_feature_bank`) and the healthy reference is
    computed with it; the model card (:mod:`napari_anogan.model_card`) is written.

    Returns
    -------
    TrainResult
    """
    import time

    from napari_anogan.model_card import new_card, write_card
    from napari_anogan.models import get_preset
    from napari_anogan.preprocess import PreprocessConfig
    from napari_anogan.training import TrainConfig, train_gan

    started = time.monotonic()
    output = check_model_output(output)

    def deadline(share: float) -> float | None:
        return None if time_limit is None else started + 60.0 * time_limit * share

    start, parent_entry = None, None
    if init is not None:
        parent, parent_entry = _init_model(init)
        model_config = parent.model_config
        preprocess_config = PreprocessConfig.from_dict(parent.preprocess_config)
        start = {
            "generator": parent.generator.state_dict(),
            "discriminator": parent.discriminator.state_dict(),
            "encoder": None if parent.encoder is None else parent.encoder.state_dict(),
        }
        logger.info("adapting %s: its architecture and preprocessing are kept", init)
    else:
        preprocess_config = preprocess_config or PreprocessConfig()
        model_config = get_preset(preset, **(model_overrides or {}))
    if model_config.patch_size != preprocess_config.patch_size:
        preprocess_config = type(preprocess_config)(
            **{**preprocess_config.to_dict(), "patch_size": model_config.patch_size}
        )
    holdout = TrainConfig(**(train_overrides or {})).holdout_fraction
    patches, reference, info, bank_patches = yield from collect_training_patches(
        paths,
        preprocess_config,
        patches_per_scan,
        seed=seed,
        holdout_fraction=holdout,
        reference_stride=ScoreSettings().stride,
        folders=folders,
    )
    bank_groups = info.pop("bank_groups")
    if epochs is None:
        epochs = auto_epochs(len(patches), batch_size, adapt=init is not None)
        logger.info("%d training patches: %d epochs", len(patches), epochs)
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        **(train_overrides or {}),
    )
    # Held-out B-scans give the reference; only without any (a single B-scan) does
    # train_gan hold out single patches instead.
    reference_patches = reference if len(reference) else None
    extra = {
        "preprocess_config": preprocess_config.to_dict(),
        "data_fingerprint": info["data_fingerprint"],
        "data": info,
    }
    if parent_entry is not None:
        extra["init_from"] = parent_entry
    from napari_anogan.training import ddp

    ctx = ddp.current()
    bank_follows = bool(len(bank_patches)) and (ctx is None or ctx.is_main)
    result = yield from train_gan(
        patches,
        model_config,
        train_config,
        Path(output),
        resume=resume,
        extra=extra,
        build_reference=not encoder and not bank_follows,
        reference_patches=reference_patches,
        init=start,
        deadline=deadline(defaults.TIME_LIMIT_GAN_SHARE),
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
            init=None if start is None else start["encoder"],
            deadline=deadline(defaults.TIME_LIMIT_ENCODER_SHARE),
            build_reference=not bank_follows,
        )
    if bank_follows:
        from napari_anogan.training import add_feature_bank

        result.feature_bank, result.reference = yield from add_feature_bank(
            Path(output), bank_patches, reference_patches, device=device, bank_groups=bank_groups
        )
    if ctx is None or ctx.is_main:
        card = new_card(kind=data_kind, description=description, data=info, init_from=parent_entry)
        write_card(output, card)
    return result
