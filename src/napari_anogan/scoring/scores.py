"""The patch scores: their names, their orientation and the anomaly score A of eq. (6).

A patch x mapped to z has a residual score R = sum |x - G(z)| (eq. 3), a discrimination
score D = sum |f(x) - f(G(z))| on D's features (eq. 4, AnoGAN) or D^ = sigma(x, 1) on
D's output (the reference loss of Yeh et al., GAN_R), and the anomaly score
A = (1 - lambda) R + lambda D (eq. 6). The discriminator output P_D = D(x) is kept as a
score of its own (the paper's Table 1). These are the patch table's score columns.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "GAN_R_SCORE_NAMES",
    "HIGHER_IS_NORMAL",
    "PATCH_SCORE_NAMES",
    "anomaly_score",
]

PATCH_SCORE_NAMES = (
    "anomaly_score",
    "residual_score",
    "discrimination_score",
    "reference_anomaly_score",
    "reference_discrimination_score",
    "discriminator_output",
)
"""Every score of a mapped patch, in the order of the patch tables."""

GAN_R_SCORE_NAMES = ("reference_anomaly_score", "reference_discrimination_score")
"""Scores of the GAN_R baseline (A and D with the reference discrimination loss)."""

HIGHER_IS_NORMAL = frozenset({"discriminator_output"})
"""Scores where a high value means *normal*; evaluation scores them as ``1 - score``."""


def anomaly_score(residual: np.ndarray, discrimination: np.ndarray, lam: float) -> np.ndarray:
    """Return A = (1 - lam) R + lam D (eq. 6), elementwise.

    Parameters
    ----------
    residual, discrimination : ndarray
        R and D (or D^) of the same patches.
    lam : float
        Weight lambda of the discrimination score.

    Returns
    -------
    ndarray

    Examples
    --------
    >>> float(anomaly_score(np.array(2.0), np.array(4.0), 0.5))
    3.0
    """
    return (1.0 - lam) * residual + lam * discrimination
