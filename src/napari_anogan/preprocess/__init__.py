"""Preprocessing: normalise, resample width, retina boundaries, flatten, patches, geometry.

Schlegl et al. (2017), section 3: grey values to [-1, 1], width resampled to ~22 um per
column, retina found (top and bottom boundary) and flattened, 64 x 64 patches at random
positions (training) or on a grid (scoring). :class:`Geometry` records every geometric
step so that results map back to the raw pixel grid.
"""

from napari_anogan.preprocess.boundaries import detect_boundaries
from napari_anogan.preprocess.config import PreprocessConfig
from napari_anogan.preprocess.flatten import (
    PreprocessedVolume,
    PreprocessPlan,
    plan_preprocessing,
    preprocess_volume,
)
from napari_anogan.preprocess.geometry import Geometry
from napari_anogan.preprocess.normalise import normalise_intensity, resample_width
from napari_anogan.preprocess.outputs import write_preprocess_outputs
from napari_anogan.preprocess.patches import (
    Patches,
    cut_patches,
    grid_coords,
    grid_patches,
    random_patches,
)

__all__ = [
    "Geometry",
    "Patches",
    "PreprocessConfig",
    "PreprocessPlan",
    "PreprocessedVolume",
    "cut_patches",
    "detect_boundaries",
    "grid_coords",
    "grid_patches",
    "normalise_intensity",
    "plan_preprocessing",
    "preprocess_volume",
    "random_patches",
    "resample_width",
    "write_preprocess_outputs",
]
