"""Evaluation of a model on labelled data: the paper's Table 1 and figures.

:mod:`.labels` (ground truth), :mod:`.metrics` (ROC/AUC and friends), :mod:`.table`
(report), :mod:`.figures` (Fig. 2-4), :mod:`.experiment` (the ``evaluate`` command) and
:mod:`.acae` (the aCAE baseline).
"""
