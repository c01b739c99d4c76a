"""Datasets, manifests, image reading and MONAI pipelines.

``DATASETS``/``get_spec`` describe HAM10000, EyePACS, BUSI and generic class folders;
:mod:`medvit.data.manifest` prepares and checks split manifests; :mod:`medvit.data.images` reads
images as RGB ``uint8``; :mod:`medvit.data.transforms` and :mod:`medvit.data.loaders` feed them to
models; :mod:`medvit.data.synthetic` writes tiny learnable datasets in the raw layouts.
"""

from medvit.data.datasets import DATASETS, DatasetSpec, LayoutError, get_spec, list_datasets

__all__ = ["DATASETS", "DatasetSpec", "LayoutError", "get_spec", "list_datasets"]
