"""Model configuration (architecture hyper-parameters) and named presets.

Presets
-------
``paper``
    The AnoGAN paper (Schlegl et al. 2017, sec. 3): generator 512-256-128-64, discriminator
    64-128-256-512, 5x5 kernels, z of 100 uniform values, 64x64 patches.
``small``
    Quarter widths (generator 128-64-32-16, discriminator 16-32-64-128), ~16x fewer FLOPs:
    trainable and usable on a CPU; the bundled model and the demo use it.
``tiny``
    For tests only (generator 32-16-8-4, discriminator 4-8-16-32, z of 16).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from napari_anogan.errors import ModelError

__all__ = ["PRESETS", "ModelConfig", "get_preset"]

Z_PRIORS = ("uniform",)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the DCGAN generator and discriminator.

    Parameters
    ----------
    preset : str
        Name of the preset this configuration came from (informative).
    z_dim : int
        Length of the latent vector z.
    g_widths : tuple of int
        Generator channels, from the projected 4x4 map down to the last hidden layer;
        one fractionally-strided (x2 upsampling) layer per entry.
    d_widths : tuple of int
        Discriminator channels of its strided (x2 downsampling) conv layers, in order.
    kernel : int
        Square (odd) kernel size of every conv layer.
    patch_size : int
        Side of the square patches; must be divisible by ``2**len(g_widths)`` and
        ``2**len(d_widths)``.
    channels : int
        Image channels (1: grey-scale OCT).
    z_prior : str
        Latent prior; ``"uniform"`` is U[-1, 1] as in the paper.
    """

    preset: str = "paper"
    z_dim: int = 100
    g_widths: tuple[int, ...] = (512, 256, 128, 64)
    d_widths: tuple[int, ...] = (64, 128, 256, 512)
    kernel: int = 5
    patch_size: int = 64
    channels: int = 1
    z_prior: str = "uniform"

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so the config stays hashable.
        object.__setattr__(self, "g_widths", tuple(int(w) for w in self.g_widths))
        object.__setattr__(self, "d_widths", tuple(int(w) for w in self.d_widths))
        problems = []
        if self.z_dim < 1:
            problems.append(f"z_dim must be >= 1, got {self.z_dim}")
        if not self.g_widths or not self.d_widths:
            problems.append("g_widths and d_widths need at least one layer each")
        if any(w < 1 for w in self.g_widths + self.d_widths):
            problems.append("layer widths must be >= 1")
        if self.kernel < 3 or self.kernel % 2 == 0:
            problems.append(f"kernel must be odd and >= 3, got {self.kernel}")
        for name, widths in (("g_widths", self.g_widths), ("d_widths", self.d_widths)):
            factor = 2 ** len(widths)
            if widths and (self.patch_size % factor or self.patch_size < factor):
                problems.append(
                    f"patch_size {self.patch_size} must be a multiple of {factor} "
                    f"for {len(widths)} layers in {name}"
                )
        if self.channels < 1:
            problems.append(f"channels must be >= 1, got {self.channels}")
        if self.z_prior not in Z_PRIORS:
            problems.append(f"z_prior must be one of {Z_PRIORS}, got {self.z_prior!r}")
        if problems:
            raise ModelError("invalid model config: " + "; ".join(problems))

    @property
    def g_start_size(self) -> int:
        """Side of the generator's projected feature map (4 for 64x64 patches, 4 layers)."""
        return self.patch_size // 2 ** len(self.g_widths)

    @property
    def feature_size(self) -> int:
        """Side of the discriminator's last conv feature map (4 for 64x64, 4 layers)."""
        return self.patch_size // 2 ** len(self.d_widths)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists)."""
        data = asdict(self)
        data["g_widths"] = list(self.g_widths)
        data["d_widths"] = list(self.d_widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`ModelError`."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """Return the config as a JSON string (stored in checkpoints)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(preset="paper"),
    "small": ModelConfig(preset="small", g_widths=(128, 64, 32, 16), d_widths=(16, 32, 64, 128)),
    "tiny": ModelConfig(preset="tiny", z_dim=16, g_widths=(32, 16, 8, 4), d_widths=(4, 8, 16, 32)),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Return a preset configuration, optionally with some fields changed.

    Parameters
    ----------
    name : str
        ``"paper"``, ``"small"`` or ``"tiny"``.
    **overrides
        Any :class:`ModelConfig` field, e.g. ``patch_size=32`` or ``g_widths=(64, 32, 16, 8)``.

    Returns
    -------
    ModelConfig

    Raises
    ------
    ModelError
        Unknown preset or field, or an invalid combination.

    Examples
    --------
    >>> get_preset("small").g_widths
    (128, 64, 32, 16)
    >>> get_preset("tiny", patch_size=32).feature_size
    2
    """
    if name not in PRESETS:
        raise ModelError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ModelError(f"unknown model config fields: {sorted(unknown)}")
    return replace(PRESETS[name], **overrides)
