"""Mapping patches to the GAN's latent space and scoring them (paper sec. 2.2 and 2.3).

:mod:`.config` holds the settings and the result; :mod:`.search` the search itself
(iterative, encoder and hybrid modes).
"""

from napari_anogan.mapping.config import MAPPING_MODES, MappingConfig, MappingResult
from napari_anogan.mapping.search import map_to_latent, random_start, resolve_mode

__all__ = [
    "MAPPING_MODES",
    "MappingConfig",
    "MappingResult",
    "map_to_latent",
    "random_start",
    "resolve_mode",
]
