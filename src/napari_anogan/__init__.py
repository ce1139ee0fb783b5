"""napari-anogan: unsupervised anomaly detection in retinal OCT with AnoGAN.

The core (``io``, ``preprocess``, ``models``, ``train``, ``mapping``, ``scoring``,
``evaluate``, ``checkpoint``, ``pipeline``, ``cli``) never imports napari or Qt; the
napari contributions live in ``_widgets``, ``_reader``, ``_writer`` and ``_sample_data``.
"""

from napari_anogan.errors import AnoganError, InputError, ModelError, OutputError

__version__ = "0.1.0"

__all__ = ["AnoganError", "InputError", "ModelError", "OutputError", "__version__"]
