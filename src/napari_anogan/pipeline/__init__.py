"""End-to-end jobs that the CLI and the widgets both call; nothing here imports Qt.

:mod:`.score` (the one scoring path), :mod:`.outputs` (results and their files),
:mod:`.train` (training from files), :mod:`.cluster` (scoring many volumes with Dask)
and :mod:`.demo`.
"""

from napari_anogan.pipeline.demo import DEMO_SETTINGS, run_demo
from napari_anogan.pipeline.outputs import (
    PATCH_COLUMNS,
    MappedPatches,
    VolumeResult,
    en_face_projection,
    output_paths,
    raw_boxes,
    summary_dict,
    volume_result,
    write_score_outputs,
)
from napari_anogan.pipeline.score import (
    PARTIAL_EVERY_S,
    ScoreSettings,
    load_model,
    mapping_config,
    model_preprocess_config,
    score_volume,
)
from napari_anogan.pipeline.train import (
    auto_epochs,
    collect_training_patches,
    reference_patches_of,
    train_from_paths,
    training_plan,
)

__all__ = [
    "DEMO_SETTINGS",
    "PARTIAL_EVERY_S",
    "PATCH_COLUMNS",
    "MappedPatches",
    "ScoreSettings",
    "VolumeResult",
    "auto_epochs",
    "collect_training_patches",
    "en_face_projection",
    "load_model",
    "mapping_config",
    "model_preprocess_config",
    "output_paths",
    "raw_boxes",
    "reference_patches_of",
    "run_demo",
    "score_volume",
    "summary_dict",
    "train_from_paths",
    "training_plan",
    "volume_result",
    "write_score_outputs",
]
