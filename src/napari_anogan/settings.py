"""Every user-facing default, defined once with the reason for its value.

The config dataclasses (:class:`~napari_anogan.preprocess.PreprocessConfig`,
:class:`~napari_anogan.mapping.MappingConfig`, :class:`~napari_anogan.training.TrainConfig`,
:class:`~napari_anogan.training.EncoderConfig`, :class:`~napari_anogan.pipeline.ScoreSettings`),
the command line's defaults and the widgets' initial values all read them from here.
This module imports nothing of the project, so every layer may import it.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------ general

#: Compute device: the first GPU when there is one, else the CPU.
DEVICE = "auto"
#: Seed of every random choice (latent starts, patch positions, weights): runs repeat.
SEED = 0

#: A folder of B-scan images is ``auto``: one volume when its images share one size and
#: their names differ in one number only (exported slices), else a collection of
#: independent B-scans; or always ``volume`` / ``collection``.
FOLDERS = "auto"

# ------------------------------------------------------------------------ preprocessing

#: Plausible pixel sizes (um) of an OCT volume along (slice, depth, width). Devices give
#: 1.9-12 um per row, 3-50 um per column and up to a few hundred um between B-scans; a
#: value outside (a unit error, a damaged header: 7.7e-6 um rows made every depth window
#: millions of rows) is ignored as unknown, with a warning.
SPACING_RANGE_UM = ((0.5, 5000.0), (0.5, 100.0), (0.5, 500.0))

#: Columns after resampling when the input's column spacing is unknown (paper: ~256 for 6 mm).
TARGET_WIDTH = 256
#: Column spacing (um) resampled to when the input's is known (paper: ~22 um).
COLUMN_SPACING_UM = 22.0
#: Grey-value percentile mapped to -1 (darker clipped): robust to a few black pixels.
LOW_PERCENTILE = 1.0
#: Grey-value percentile mapped to +1 (brighter clipped): robust to specular highlights.
HIGH_PERCENTILE = 99.9
#: Rows kept above the highest ILM in the flattened band: patches include some vitreous.
MARGIN_ABOVE = 16
#: Rows kept below Bruch's membrane: patches include the choroid, where PEDs push down.
MARGIN_BELOW = 32
#: Side of the square patches in pixels (paper: 64).
PATCH_SIZE = 64

# Boundary search (ILM and Bruch's membrane); lengths in rows of a 3.87 um/row B-scan.
#: Gaussian smoothing (rows) before edge detection: suppresses speckle, keeps layer edges.
SMOOTH_ROWS = 2.0
#: Gaussian smoothing (resampled columns) before edge detection.
SMOOTH_COLS = 1.5
#: Largest change of a boundary row between neighbouring columns: boundaries are smooth.
MAX_JUMP = 4
#: Path cost per row of jump between neighbouring columns: prefers straight boundaries.
JUMP_PENALTY = 0.05
#: Thinnest retina (ILM to BM, rows) searched for: thinner than any fovea.
MIN_THICKNESS = 12
#: Thickest retina (ILM to BM, rows) searched for: room for large detachments.
MAX_THICKNESS = 300
#: Half height (rows) of the band around the neighbour-slice consensus in the second pass.
SLICE_BAND = 12
#: The RPE is searched at least this many rows under the ILM (never the nerve fibre layer).
MIN_RPE_DEPTH = 20
#: Smoothing of the final boundaries along columns (resampled columns).
BOUNDARY_SMOOTH_COLS = 1.0
#: Smoothing of the final boundaries across B-scans; 0: B-scans may be far apart.
BOUNDARY_SMOOTH_SLICES = 0.0
#: A column holds retina when its band (ILM to BM) is at least this much brighter than the
#: 40 rows above it, in normalised grey units (range 2): real B-scans have a median of 0.44
#: or more (319 OCTDL, Kermany and Spectralis B-scans), blank and noise images about 0.
RETINA_MIN_CONTRAST = 0.2
#: A B-scan holds retina when this fraction of its columns does (real B-scans: 0.68 or more
#: of 319; lesion masks at most 0.12, blank and noise images at most 0.08); B-scans without
#: retina are not scored, a scan without any is refused.
RETINA_MIN_COLUMNS = 0.5

# ----------------------------------------------------------------------------- training

#: Model preset: quarter of the paper's widths; trains on a CPU (``paper`` for the paper's).
TRAIN_PRESET = "small"
#: GAN training epochs (paper: 20): 40, then 60 lifted the feature score's B-scan AUC on real
#: scans (OCTDL validation, docs/results.md). The default of a bare TrainConfig; ``train``
#: chooses the epochs from the data (TRAIN_UPDATES) unless given.
TRAIN_EPOCHS = 60
#: GAN updates ``train`` aims at when no epochs are given: the real-data recipe (60 epochs
#: of 205 OCTDL B-scans x 64 patches, batch 64).
TRAIN_UPDATES = 11700
#: Fewest epochs ``train`` chooses (the paper's 20): large data sets still see every patch.
TRAIN_MIN_EPOCHS = 20
#: Most epochs ``train`` chooses: a few B-scans are not repeated without end.
TRAIN_MAX_EPOCHS = 300
#: GAN updates when adapting a trained model to new scans (``train --init``).
ADAPT_UPDATES = 400
#: ``--time-limit``: share of the time the GAN may take (the encoder, feature bank and
#: healthy reference follow).
TIME_LIMIT_GAN_SHARE = 0.7
#: ``--time-limit``: share of the time by which the encoder must be done.
TIME_LIMIT_ENCODER_SHARE = 0.9
#: GAN training batch size (paper: 64).
TRAIN_BATCH_SIZE = 64
#: Random training patches per healthy B-scan: many per scan, each centred in the retina.
PATCHES_PER_SCAN = 64
#: Adam learning rate of G and D (DCGAN's).
TRAIN_LR = 2e-4
#: Adam beta1 of G and D (DCGAN's: 0.5 keeps the GAN stable).
TRAIN_BETA1 = 0.5
#: Fraction of healthy B-scans held out of training for the healthy score reference.
HOLDOUT_FRACTION = 0.05
#: Mapping steps of the healthy reference when it is mapped iteratively (paper's Gamma).
REFERENCE_STEPS = 500
#: Held-out patches mapped for the healthy reference (bounds training's last stage).
REFERENCE_MAX_PATCHES = 512
#: Patches mapped at once for the healthy reference.
REFERENCE_BATCH_SIZE = 256
#: Train the f-AnoGAN encoder after the GAN: the fast ``hybrid`` mapping needs it.
TRAIN_ENCODER = True
#: Encoder (f-AnoGAN izi_f) training epochs: it only starts the latent search (hybrid).
ENCODER_EPOCHS = 10
#: Encoder training batch size.
ENCODER_BATCH_SIZE = 64
#: Encoder Adam learning rate: lower loss than 3e-4 and 1e-3 after 30 epochs, measured.
ENCODER_LR = 1e-4
#: Weight kappa of the feature term in the encoder loss (f-AnoGAN's izi_f: 1).
ENCODER_KAPPA = 1.0

# ------------------------------------------------------------------------------ scoring

#: lambda of eq. (5)/(6) when scoring: chosen on a validation set (paper, from faces: 0.1).
SCORING_LAM = 0.7
"""The smallest of 0.1, 0.3, ..., 0.9 within 0.005 patch AUC of the best on 10 + 10 validation
eyes (a rule fixed before the sweep); D's features see small, local lesions (docs/results.md)."""

#: lambda of the paper (eq. 5 and 6), the default of a bare MappingConfig.
PAPER_LAM = 0.1
#: Latent mapping: encoder start + K steps; measured 77x faster and better than 500 steps.
MAPPING_MODE = "hybrid"
#: Steps Gamma of the iterative mapping (paper: 500).
MAPPING_STEPS = 500
#: Steps K after the encoder start in the hybrid mode: best patch AUC of K = 5-50, measured.
HYBRID_STEPS = 10
#: Adam learning rate of z: 0.05 measured best (against 0.01, 0.02 and 0.1).
MAPPING_LR = 0.05
#: Freeze a patch's search once its loss stops improving: fewer steps, AUC unchanged.
EARLY_STOP = True
#: Early stopping: a step improves a patch if it lowers its best loss by this fraction.
TOLERANCE = 1e-3
#: Patch grid stride in the flattened band: a quarter patch; denser than 32 lifted the
#: feature score's B-scan AUC on real scans (docs/results.md).
SCORE_STRIDE = 16
#: Patches mapped at once: bounds memory (G and D activations of one batch).
SCORE_BATCH_SIZE = 256
#: Patch score that ranks patches, B-scans and candidates: ``feature`` (distance of D's
#: features to healthy training patches; far ahead of A on real scans) or ``anomaly`` (A).
SCORE = "feature"
#: B-scan score: mean of its this many highest patch scores (a lesion spans several).
BSCAN_TOP_K = 20
#: Dimensions of the feature embedding (random projection of D's features): 128 to 512
#: gave the same AUC, 128 keeps the bank small.
FEATURE_DIM = 128
#: Healthy patch embeddings kept in a model's feature bank (a seeded random choice).
FEATURE_BANK_SIZE = 16384
#: Candidates: a patch is anomalous above this percentile of the healthy reference.
PERCENTILE_THRESHOLD = 99.0
#: Model fit: a scan does not fit the model when its median patch score is more than this
#: many times the healthy reference's 99th percentile. Measured (benchmarks/model_fit.py,
#: docs/results.md): at most 1.08 on scans of a model's own domain, healthy or diseased
#: (synthetic eyes, OCTDL val with the OCTDL model), at least 1.22 for the synthetic model
#: on every real scan; 1.15 lies between.
FIT_MEDIAN_EXCESS = 1.15
#: B-scans preprocessed, mapped and written at a time when scoring to files (bounded memory).
SCORE_CHUNK_SLICES = 16

# ---------------------------------------------------------------------------- evaluation

#: Training epochs of the aCAE baseline (Table 1) when ``evaluate`` trains it.
ACAE_EPOCHS = 5
#: Most distinct values of a lesion mask (0 = background, then lesion labels): a binary
#: mask has 2, the synthetic eyes' 6; a grey OCT scan has hundreds, so a scan given as a
#: mask (or a lossy JPEG mask) is refused.
MASK_MAX_LABELS = 16

# ------------------------------------------------------------------------------ display

#: Residual heatmap: transparent up to this percentile of the healthy pixel residual, so
#: only residual that healthy tissue rarely reaches is coloured (the same level as the
#: candidates' patch threshold; adjustable in the Candidate markers widget).
HEATMAP_PERCENTILE = 99.0
#: A model without a pixel reference: this scan's patches at or below this healthy
#: percentile (the healthy median) stand in for healthy tissue.
HEALTHY_LOOKING_PERCENTILE = 50.0
#: Fewest such healthy-looking patches to use them; with fewer, the scan's whole residual.
HEALTHY_LOOKING_MIN_PATCHES = 8
#: Most patches read for that stand-in reference (a seeded choice): bounded work on large
#: volumes whose residual is read lazily from disk.
HEALTHY_LOOKING_MAX_PATCHES = 256
#: Write ``<stem>_overview.png`` with the ``score`` outputs (``--no-figures``: skip it).
WRITE_FIGURES = True
#: B-scans shown in the overview figure: the highest-scoring ones.
OVERVIEW_BSCANS = 3
#: Figures of B-scans (the ``score`` overview, the ``preprocess`` boundaries): narrower
#: B-scans are enlarged (whole pixels, no smoothing) to about this width, wider ones are
#: drawn pixel for pixel, so either is readable at 100 % zoom.
FIGURE_MIN_WIDTH = 900
#: Progress: a stage's time left is estimated once it has run this long (seconds), from
#: its progress since its first report (the first batch, which warms up, is not timed).
ETA_MIN_S = 2.0
