"""Reading OCT data into a :class:`Volume` and writing outputs (TIFF, CSV, JSON)."""

from napari_anogan.io.readers import (
    IMAGE_SUFFIXES,
    SUPPORTED_SUFFIXES,
    is_supported,
    read_volume,
)
from napari_anogan.io.vendor import VENDOR_INSTALL_HINT, VENDOR_SUFFIXES
from napari_anogan.io.volume import Volume
from napari_anogan.io.writers import (
    TiffSliceWriter,
    safe_stem,
    write_csv,
    write_json,
    write_tiff,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "VENDOR_INSTALL_HINT",
    "VENDOR_SUFFIXES",
    "TiffSliceWriter",
    "Volume",
    "is_supported",
    "read_volume",
    "safe_stem",
    "write_csv",
    "write_json",
    "write_tiff",
]
