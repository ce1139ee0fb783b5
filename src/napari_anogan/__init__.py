"""napari-anogan: unsupervised anomaly detection in retinal OCT with AnoGAN.

The pipeline, in the order its layers import each other (none imports a later one;
``tests/test_layers.py``): ``settings`` (every default), ``io`` (read and write scans),
``preprocess`` (normalise, boundaries, flatten, patches) and ``datasets`` (synthetic
volumes), ``models`` (DCGAN, encoder), ``scoring`` (scores, percentiles, aggregation,
candidates), ``mapping`` (the latent search), ``checkpoint``, ``training`` (GAN,
encoder, healthy reference, DDP), ``pipeline`` (score, train, demo, Dask: the jobs the
CLI and the widgets run), ``evaluation`` (Table 1, figures, the aCAE baseline), then
the front ends: ``cli`` and the napari contributions (``_widgets``, ``_reader``,
``_writer``, ``_sample_data``). Only the napari contributions import napari or Qt.
"""

from napari_anogan.errors import AnoganError, ClusterError, InputError, ModelError, OutputError

__version__ = "0.1.0"

__all__ = ["AnoganError", "ClusterError", "InputError", "ModelError", "OutputError", "__version__"]
