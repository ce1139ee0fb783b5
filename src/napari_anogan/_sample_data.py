"""napari sample data: the bundled synthetic volume with its lesion mask, and real B-scans.

Both read the files bundled in ``sample_data/`` through the normal reader, so the layers
carry the physical spacing like any opened file. Credits: ``sample_data/CREDITS.md``.
"""

from __future__ import annotations

import logging
from typing import Any

from napari_anogan._reader import volume_layer

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict, str]

#: The real healthy B-scan (Kermany et al. 2018, CC BY 4.0), see sample_data/CREDITS.md.
REAL_BSCAN = "kermany2018_NORMAL-1384-1.jpeg"


def sample_volume() -> list[LayerData]:
    """Load the bundled synthetic OCT volume and its lesion mask.

    Returns
    -------
    list of (data, meta, layer_type)
        An image layer (S, H, W) and a labels layer ``<name> lesions`` (nonzero = lesion).
    """
    from napari_anogan.io import read_volume
    from napari_anogan.resources import SAMPLE_MASK, SAMPLE_VOLUME, sample_path

    volume = read_volume(sample_path(SAMPLE_VOLUME))
    mask = read_volume(sample_path(SAMPLE_MASK))
    image = volume_layer(volume)
    labels = volume_layer(mask, as_labels=True)
    labels[1]["name"] = f"{volume.name} lesions"
    labels[1]["opacity"] = 0.4
    labels[1]["visible"] = False
    return [image, labels]


def sample_real_bscan() -> list[LayerData]:
    """Load one real healthy B-scan (Kermany et al. 2018, CC BY 4.0), as a 2-D image layer."""
    from napari_anogan.io import read_volume
    from napari_anogan.resources import sample_path

    volume = read_volume(sample_path(REAL_BSCAN))
    layer = volume_layer(volume)
    layer[1]["metadata"]["credit"] = (
        "Kermany, Zhang, Goldbaum (2018), Labeled OCT and Chest X-Ray Images for "
        "Classification, Mendeley Data, CC BY 4.0"
    )
    return [layer]


def sample_octdl_bscan() -> list[LayerData]:
    """Load a real diseased B-scan (OCTDL, DME, CC BY 4.0) with the bundled real model.

    The layer's ``metadata["model"]`` names the bundled model trained on healthy OCTDL
    B-scans of the same device; the Score widget takes it when the layer is chosen.
    """
    from napari_anogan.io import read_volume
    from napari_anogan.resources import BUNDLED_REAL_MODEL, REAL_SAMPLE, sample_path

    volume = read_volume(sample_path(REAL_SAMPLE))
    layer = volume_layer(volume)
    layer[1]["metadata"]["model"] = str(sample_path(BUNDLED_REAL_MODEL))
    layer[1]["metadata"]["credit"] = (
        "Kulyabin, Zhdanov, Nikiforova et al. (2024), OCTDL: Optical Coherence Tomography "
        "Dataset for Image-Based Deep Learning Methods, Scientific Data, CC BY 4.0"
    )
    return [layer]
