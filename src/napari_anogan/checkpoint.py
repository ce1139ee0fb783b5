"""One-file model checkpoints, loaded without executing code.

A checkpoint is a plain dict saved with :func:`torch.save` and read back with
``torch.load(path, weights_only=True)``, which only rebuilds tensors, numbers, strings
and containers: a file that would need pickle to run code is refused. Configurations
and summaries are stored as JSON strings so that no custom class is ever pickled.

Layout (``format_version`` 1)::

    format_version     int
    model_config       JSON str   (ModelConfig.to_dict)
    preprocess_config  JSON str   (opaque dict from the caller: preprocessing used in training)
    train_config       JSON str   (TrainConfig.to_dict)
    generator          state_dict
    discriminator      state_dict
    encoder            state_dict or None (f-AnoGAN encoder E, see napari_anogan.models.encoder;
                          its training summary is training["encoder"])
    optimizers         {"generator": state_dict, "discriminator": state_dict} (for resume)
    training           JSON str   (epochs done, seed, data fingerprint, losses, ...)
    reference          {} or {"levels": (Q,) f64 tensor, "quantiles": {score: (Q,) f64 tensor},
                          "settings": JSON str (mapping settings), "n_patches": int}
    feature_bank       optional: None or {"embeddings": (M, d) f16 tensor, "projection": (F, d)
                          f32 tensor} (healthy patch embeddings for the feature score, see
                          napari_anogan.models.feature_bank)
    model_card         optional: JSON str, what the model is (napari_anogan.model_card)

Over 500 lines on purpose: the whole file format (layout, loading without pickle, healthy
reference, feature bank, resume checks) is in one place.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_anogan._atomic import atomic_path
from napari_anogan.errors import ModelError, OutputError
from napari_anogan.models import Discriminator, Generator, ModelConfig
from napari_anogan.models.feature_bank import FeatureBank

__all__ = [
    "FORMAT_VERSION",
    "LoadedModel",
    "check_compatible",
    "check_finite_weights",
    "feature_bank_from_checkpoint",
    "feature_bank_to_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "reference_from_checkpoint",
    "reference_to_checkpoint",
    "save_checkpoint",
    "write_torch",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "model_config",
    "preprocess_config",
    "train_config",
    "generator",
    "discriminator",
    "training",
    "reference",
)
JSON_KEYS = ("model_config", "preprocess_config", "train_config", "training")


@dataclass
class LoadedModel:
    """A checkpoint ready for scoring (models on the CPU, in eval mode).

    Attributes
    ----------
    generator : Generator
    discriminator : Discriminator
    encoder : Encoder or None
        The f-AnoGAN encoder E (eval mode) if the model has one (``train --encoder``);
        needed by the ``encoder`` and ``hybrid`` mapping modes.
    model_config : ModelConfig
    preprocess_config : dict
        Preprocessing settings used for the training data; scoring must reuse them.
    train_config : dict
    training : dict
        Training summary: ``epochs_done``, ``seed``, ``data_fingerprint``,
        ``final_losses``, ...
    reference : dict
        Healthy reference distribution (see :func:`reference_from_checkpoint`): one
        (Q,) quantile array per score name (``anomaly_score``, ``residual_score``, ...),
        plus ``levels`` (Q,) percent levels, ``settings`` (mapping settings dict) and
        ``n_patches``. Empty if the model was saved before it was computed.
    path : Path
        The file it came from.
    feature_bank : FeatureBank or None
        Healthy patch embeddings of the feature score (``feature_distance``); None for a
        model trained before it existed (scoring then ranks by the anomaly score A).
    card : dict
        The stored model card (:mod:`napari_anogan.model_card`); empty for a model
        trained before cards existed.
    """

    generator: Generator
    discriminator: Discriminator
    encoder: nn.Module | None
    model_config: ModelConfig
    preprocess_config: dict[str, Any]
    train_config: dict[str, Any]
    training: dict[str, Any]
    reference: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    feature_bank: FeatureBank | None = None
    card: dict[str, Any] = field(default_factory=dict)


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def reference_to_checkpoint(
    levels: np.ndarray,
    quantiles: dict[str, np.ndarray],
    settings: dict[str, Any],
    n_patches: int,
) -> dict[str, Any]:
    """Pack a reference score distribution into the checkpoint's ``reference`` entry.

    Parameters
    ----------
    levels : (Q,) ndarray
        Percent levels of the quantiles (e.g. 0, 1, ..., 100).
    quantiles : dict of str to (Q,) ndarray
        Quantiles of each score over the held-out healthy patches.
    settings : dict
        Mapping settings used to compute the scores (JSON-serialisable).
    n_patches : int
        Number of held-out patches scored.

    Returns
    -------
    dict
        Only tensors, ints and strings (loadable with ``weights_only=True``).
    """
    return {
        "levels": torch.as_tensor(np.asarray(levels, np.float64)),
        "quantiles": {
            k: torch.as_tensor(np.asarray(v, np.float64)) for k, v in sorted(quantiles.items())
        },
        "settings": json.dumps(settings, sort_keys=True),
        "n_patches": int(n_patches),
    }


def feature_bank_to_checkpoint(bank: FeatureBank) -> dict[str, torch.Tensor]:
    """Pack a :class:`FeatureBank` into the checkpoint's ``feature_bank`` entry (tensors only)."""
    return {
        "embeddings": torch.from_numpy(np.ascontiguousarray(bank.embeddings, np.float16)),
        "projection": torch.from_numpy(np.ascontiguousarray(bank.projection, np.float32)),
    }


def feature_bank_from_checkpoint(
    entry: Any, model_config: ModelConfig, path: Path | None
) -> FeatureBank | None:
    """Unpack the checkpoint's ``feature_bank`` entry (None if absent), checked against D.

    Raises
    ------
    ModelError
        A malformed bank, one whose projection does not fit the discriminator's features,
        or NaN/Inf values; the message names the file.
    """
    if entry is None:
        return None
    try:
        bank = FeatureBank(
            embeddings=entry["embeddings"].numpy(), projection=entry["projection"].numpy()
        )
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid feature bank in checkpoint ({exc})", path) from exc
    n_features = model_config.d_widths[-1] * model_config.feature_size**2
    if bank.projection.shape[0] != n_features:
        raise ModelError(
            f"feature bank does not fit the discriminator: projection of "
            f"{bank.projection.shape[0]} values, D gives {n_features}",
            path,
        )
    if not (np.isfinite(bank.embeddings).all() and np.isfinite(bank.projection).all()):
        raise ModelError("feature bank contains NaN or Inf", path)
    return bank


def reference_from_checkpoint(entry: dict[str, Any] | None) -> dict[str, Any]:
    """Unpack the checkpoint's ``reference`` entry into a flat dict of numpy arrays.

    Parameters
    ----------
    entry : dict or None
        As written by :func:`reference_to_checkpoint`.

    Returns
    -------
    dict
        ``{score name: (Q,) quantiles, ..., "levels": (Q,) percent levels,
        "settings": mapping settings dict, "n_patches": int}``; empty if ``entry`` is.
        So ``percentile_of(a, ref["anomaly_score"], ref["levels"])`` is a score's
        healthy percentile.
    """
    if not entry:
        return {}
    out: dict[str, Any] = {k: v.numpy().astype(np.float64) for k, v in entry["quantiles"].items()}
    out["levels"] = entry["levels"].numpy().astype(np.float64)
    out["settings"] = json.loads(entry["settings"])
    out["n_patches"] = int(entry["n_patches"])
    return out


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (temp file + rename).

    Parameters
    ----------
    path : str or PathLike
        Destination (conventionally ``*.pt``).
    ckpt : dict
        The layout described in this module's docstring; dict-valued JSON entries are
        serialised to strings here, and tensors are moved to the CPU.

    Returns
    -------
    Path

    Raises
    ------
    ModelError
        If required keys are missing.
    OutputError
        If the file cannot be written.
    """
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ModelError(f"checkpoint dict lacks keys {missing}", path)
    data = dict(ckpt)
    for key in JSON_KEYS:
        if not isinstance(data[key], str):
            data[key] = json.dumps(data[key], sort_keys=True)
    for key in ("generator", "discriminator", "encoder"):
        if data.get(key) is not None:
            data[key] = _cpu_state(data[key])
    path = Path(path)
    if path.is_dir():
        raise OutputError(
            f"is a folder; expected the model file to write (e.g. {path / 'model.pt'})",
            path,
        )
    write_torch(path, data)
    logger.debug("saved checkpoint %s", path)
    return path


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically: serialised in memory, then written as plain bytes.

    Torch names the archive inside the file after the file's name and refuses some (a
    temporary name without a suffix: ``-o model``), and a failed write inside torch's
    writer surfaces as a ``RuntimeError`` of its own; serialised to memory first, the
    file is written by Python, so a full disk is the ``OSError`` of that file, turned
    into a clear :class:`~napari_anogan.errors.OutputError` ("No space left on
    device"). The file's previous version stays intact. Costs one copy of the
    checkpoint in memory while it is written.

    Raises
    ------
    OutputError
        If the folder is missing or not writable, or writing fails.
    """
    import io

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint file without executing code.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    dict
        The raw checkpoint dict (JSON entries still strings, tensors on the CPU).

    Raises
    ------
    ModelError
        Missing or unreadable file, a file that needs pickle to load ("refused"),
        wrong ``format_version`` or missing keys. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", path)
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise ModelError(
                "refused: needs pickle to load (it could execute code); only checkpoints "
                "written by napari-anogan are accepted",
                path,
            ) from exc
        raise ModelError(
            f"not a napari-anogan checkpoint (corrupt or wrong format: {exc})", path
        ) from exc
    except Exception as exc:  # corrupt zip, truncated file, not a torch file...
        raise ModelError(
            f"cannot read checkpoint (corrupt or not a torch file: {type(exc).__name__})", path
        ) from exc
    if not isinstance(data, dict):
        raise ModelError(
            f"not a napari-anogan checkpoint (top level is {type(data).__name__})", path
        )
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"unsupported checkpoint format_version {version!r} (this version reads "
            f"{FORMAT_VERSION})",
            path,
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelError(f"checkpoint lacks keys {missing}", path)
    for key in JSON_KEYS:
        if not isinstance(data[key], str):
            raise ModelError(f"checkpoint entry {key!r} is not a JSON string", path)
    return data


def check_finite_weights(data: dict[str, Any], path: str | os.PathLike | None) -> None:
    """Refuse a checkpoint whose weights or healthy reference hold NaN or Inf.

    Such a model (a training that diverged, a damaged file) maps every patch to NaN: it
    would score every volume NaN and label nothing anomalous, so it is refused when it is
    loaded, on every path.

    Raises
    ------
    ModelError
        Naming the file, the network and the first tensor with NaN/Inf.
    """
    named = {"generator": "generator", "discriminator": "discriminator", "encoder": "encoder"}
    for key, label in named.items():
        state = data.get(key)
        if not isinstance(state, dict):
            continue
        for name, tensor in state.items():
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())
            ):
                raise ModelError(
                    f"{label} weights contain NaN/Inf ({name}): the training diverged or the "
                    "file is damaged; train the model again",
                    path,
                )
    reference = data.get("reference") or {}
    quantiles = reference.get("quantiles") if isinstance(reference, dict) else None
    for name, tensor in (quantiles or {}).items():
        if isinstance(tensor, torch.Tensor) and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"healthy reference contains NaN/Inf ({name})", path)


def _check_reference(reference: dict[str, Any], path: Path) -> None:
    """Refuse a healthy reference percentiles cannot be read from (found by fuzzing).

    Every score's quantiles are one non-decreasing value per level.
    """
    if not reference:
        return
    levels = np.asarray(reference.get("levels"))
    for name, values in reference.items():
        if name in ("levels", "settings", "n_patches"):
            continue
        q = np.asarray(values)
        if q.shape != levels.shape or levels.ndim != 1:
            raise ModelError(
                f"invalid healthy reference: {name} has {q.shape} quantiles for "
                f"{levels.shape} levels",
                path,
            )
        if np.any(np.diff(q) < 0) or np.any(np.diff(levels) < 0):
            raise ModelError(f"invalid healthy reference: {name} quantiles decrease", path)


def _json(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(data[key])
    except json.JSONDecodeError as exc:
        raise ModelError(f"checkpoint entry {key!r} is not valid JSON ({exc})", path) from exc
    if not isinstance(value, dict):
        raise ModelError(
            f"checkpoint entry {key!r} is not a JSON object (got {type(value).__name__})", path
        )
    return value


def _check_preprocess_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Refuse stored preprocessing settings that scoring could not use.

    Every setting must have its default's type (an integer where the default is one, a
    finite number where it is a float) and lie in range (sizes >= 1, percentiles
    0 <= low < high <= 100), so that scoring never meets a setting it cannot use.
    """
    from dataclasses import fields

    from napari_anogan.preprocess.config import PreprocessConfig

    defaults = PreprocessConfig()
    problems = []
    for f in fields(PreprocessConfig):
        if f.name not in config:
            continue
        value, default = config[f.name], getattr(defaults, f.name)
        if f.name == "band_height":
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
            ok = ok and (value is None or value >= 1)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            ok = ok and (value >= 1 or f.name not in ("patch_size", "target_width", "max_jump"))
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and bool(np.isfinite(value)) and value >= 0
        else:
            ok = True
        if not ok:
            problems.append(f"{f.name} {value!r}")
    low, high = config.get("low_percentile", 1.0), config.get("high_percentile", 99.9)
    if not problems and not 0 <= low < high <= 100:
        problems.append(f"percentiles {low!r}, {high!r}")
    if problems:
        raise ModelError(
            "invalid preprocessing settings in checkpoint: " + ", ".join(problems), path
        )
    return config


def load_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """Load a checkpoint for scoring: models on the CPU in eval mode.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelError
        See :func:`read_checkpoint`; also weights that do not fit the stored config, and
        weights or a healthy reference with NaN/Inf (:func:`check_finite_weights`).

    Examples
    --------
    >>> model = load_checkpoint("model.pt")  # doctest: +SKIP
    >>> model.generator.config.patch_size  # doctest: +SKIP
    64
    """
    path = Path(path)
    data = read_checkpoint(path)
    check_finite_weights(data, path)
    try:
        model_config = ModelConfig.from_dict(_json(data, "model_config", path))
    except (ModelError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid model config in checkpoint ({exc})", path) from exc
    try:
        generator = Generator(model_config)
        discriminator = Discriminator(model_config)
    except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
        raise ModelError(
            f"model config in checkpoint does not make networks ({type(exc).__name__}: {exc})",
            path,
        ) from exc
    for name, module in (("generator", generator), ("discriminator", discriminator)):
        try:
            module.load_state_dict(data[name])
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelError(f"{name} weights do not match the model config ({exc})", path) from exc
        module.eval()
    encoder = None
    if data.get("encoder") is not None:
        from napari_anogan.models.encoder import Encoder

        encoder = Encoder(model_config)
        try:
            encoder.load_state_dict(data["encoder"])
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelError(
                f"encoder weights do not match the model config ({exc})", path
            ) from exc
        encoder.eval()
    try:
        reference = reference_from_checkpoint(data["reference"])
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid reference distribution in checkpoint ({exc})", path) from exc
    _check_reference(reference, path)
    return LoadedModel(
        generator=generator,
        discriminator=discriminator,
        encoder=encoder,
        model_config=model_config,
        preprocess_config=_check_preprocess_config(_json(data, "preprocess_config", path), path),
        train_config=_json(data, "train_config", path),
        training=_json(data, "training", path),
        reference=reference,
        path=path,
        feature_bank=feature_bank_from_checkpoint(data.get("feature_bank"), model_config, path),
        card=_card(data, path),
    )


def _card(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Return the optional model card entry, a JSON object (empty when absent)."""
    if data.get("model_card") is None:
        return {}
    if not isinstance(data["model_card"], str):
        raise ModelError("checkpoint entry 'model_card' is not a JSON string", path)
    card = _json(data, "model_card", path)
    if not isinstance(card, dict):
        raise ModelError("checkpoint entry 'model_card' is not a JSON object", path)
    return card


def check_compatible(
    loaded: LoadedModel,
    patch_size: int,
    preprocess_config: dict[str, Any] | None,
    *,
    ignore: Iterable[str] = (),
) -> None:
    """Check that input prepared with these settings can be scored by this model.

    Parameters
    ----------
    loaded : LoadedModel
    patch_size : int
        Side of the patches that will be scored.
    preprocess_config : dict or None
        Preprocessing settings of the input; compared key by key with the model's.
        Skipped if None or if the model stores none.
    ignore : iterable of str
        Keys not to compare (settings that may legitimately differ at scoring time).

    Raises
    ------
    ModelError
        Naming the model file and every setting that differs (model vs input).
    """
    problems = []
    if int(patch_size) != loaded.model_config.patch_size:
        problems.append(f"patch_size: model {loaded.model_config.patch_size}, input {patch_size}")
    if preprocess_config is not None and loaded.preprocess_config:
        skip = set(ignore)
        keys = sorted((set(preprocess_config) | set(loaded.preprocess_config)) - skip)
        missing = object()
        for key in keys:
            mine = loaded.preprocess_config.get(key, missing)
            theirs = preprocess_config.get(key, missing)
            # JSON round trip turns tuples into lists: compare in JSON form.
            if json.dumps(mine, sort_keys=True, default=str) != json.dumps(
                theirs, sort_keys=True, default=str
            ):
                shown_m = "(absent)" if mine is missing else repr(mine)
                shown_t = "(absent)" if theirs is missing else repr(theirs)
                problems.append(f"{key}: model {shown_m}, input {shown_t}")
    if problems:
        raise ModelError(
            "model does not match the input preprocessing: " + "; ".join(problems), loaded.path
        )


def build_checkpoint(
    g: torch.nn.Module,
    d: torch.nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    model_config: ModelConfig,
    train_config: Any,
    training: dict[str, Any],
    extra: dict[str, Any],
    reference: dict[str, Any],
    encoder: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Return the checkpoint dict of a GAN in training (see the module docstring).

    ``train_config`` is a :class:`~napari_anogan.training.TrainConfig`; ``training`` the
    training summary; ``extra["preprocess_config"]`` the preprocessing settings.
    """
    return {
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_json(),
        "preprocess_config": json.dumps(extra.get("preprocess_config") or {}, sort_keys=True),
        "train_config": json.dumps(train_config.to_dict(), sort_keys=True),
        "generator": g.state_dict(),
        "discriminator": d.state_dict(),
        "encoder": encoder,
        "optimizers": {"generator": opt_g.state_dict(), "discriminator": opt_d.state_dict()},
        "training": json.dumps(training, sort_keys=True),
        "reference": reference,
    }


def resume_state(
    path: Path,
    model_config: ModelConfig,
    train_config: Any,
    n_patches: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read a checkpoint to resume training from; refuse one that trained something else.

    Model config, the :data:`RESUME_KEYS` of ``train_config``, the number of patches,
    the preprocessing and the data fingerprint must match.

    Raises
    ------
    ModelError
        Naming the file and what differs.
    """
    data = read_checkpoint(path)
    check_finite_weights(data, path)
    saved_model = json.loads(data["model_config"])
    if saved_model != model_config.to_dict():
        diffs = [
            f"{k}: checkpoint {saved_model.get(k)!r}, requested {v!r}"
            for k, v in model_config.to_dict().items()
            if saved_model.get(k) != v
        ]
        raise ModelError("cannot resume: model config differs (" + "; ".join(diffs) + ")", path)
    saved_train = json.loads(data["train_config"])
    diffs = [
        f"{k}: checkpoint {saved_train.get(k)!r}, requested {getattr(train_config, k)!r}"
        for k in RESUME_KEYS
        if saved_train.get(k) != getattr(train_config, k)
    ]
    if diffs:
        raise ModelError("cannot resume: training settings differ (" + "; ".join(diffs) + ")", path)
    training = json.loads(data["training"])
    if training.get("n_patches") != n_patches:
        raise ModelError(
            f"cannot resume: checkpoint was trained on {training.get('n_patches')} patches, "
            f"now given {n_patches}",
            path,
        )
    extra = extra or {}
    saved_pre = json.loads(data.get("preprocess_config") or "{}")
    new_pre = json.loads(json.dumps(extra.get("preprocess_config") or {}, sort_keys=True))
    # settings both know (a newer version may add some, with defaults)
    diffs = [
        f"{k}: checkpoint {saved_pre[k]!r}, requested {new_pre[k]!r}"
        for k in sorted(set(saved_pre) & set(new_pre))
        if saved_pre[k] != new_pre[k]
    ]
    if diffs:
        raise ModelError("cannot resume: preprocessing differs (" + "; ".join(diffs) + ")", path)
    recorded, given = training.get("data_fingerprint"), extra.get("data_fingerprint")
    if recorded and given and recorded != given:
        raise ModelError(
            f"cannot resume: these are not the checkpoint's training patches (data "
            f"fingerprint {given}, checkpoint {recorded}): resume with the same inputs, seed "
            "and patches per scan",
            path,
        )
    if "optimizers" not in data and int(training.get("epochs_done", 0)) < train_config.epochs:
        # Only needed to train further; a finished model (e.g. a release copy without
        # optimiser states) can still be "resumed" to add an encoder.
        raise ModelError("cannot resume: checkpoint has no optimiser states", path)
    return data


# Settings that must not change when resuming, or the resumed run would differ from an
# uninterrupted one.
RESUME_KEYS = ("batch_size", "lr", "beta1", "seed", "holdout_fraction")
"""Training settings that must match to resume (others, e.g. epochs or device, may change)."""
