"""From mapped patches to results; numpy in, numpy out.

The scores (:mod:`.scores`), healthy percentiles (:mod:`.percentiles`), B-scan and
volume scores and heatmaps (:mod:`.aggregation`), candidate regions (:mod:`.candidates`).
"""

from napari_anogan.scoring.aggregation import (
    AGGREGATION_RULES,
    aggregate_bscans,
    assemble_heatmap,
    volume_score,
)
from napari_anogan.scoring.candidates import CANDIDATE_COLUMNS, find_candidates
from napari_anogan.scoring.percentiles import QUANTILE_LEVELS, percentile_of, score_quantiles
from napari_anogan.scoring.scores import (
    GAN_R_SCORE_NAMES,
    HIGHER_IS_NORMAL,
    PATCH_SCORE_NAMES,
    anomaly_score,
)
from napari_anogan.settings import SCORING_LAM

__all__ = [
    "AGGREGATION_RULES",
    "CANDIDATE_COLUMNS",
    "GAN_R_SCORE_NAMES",
    "HIGHER_IS_NORMAL",
    "PATCH_SCORE_NAMES",
    "QUANTILE_LEVELS",
    "SCORING_LAM",
    "aggregate_bscans",
    "anomaly_score",
    "assemble_heatmap",
    "find_candidates",
    "percentile_of",
    "score_quantiles",
    "volume_score",
]
