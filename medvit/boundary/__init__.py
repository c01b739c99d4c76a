"""The boundary: every file a user hands medvit is checked here, once, before any work starts.

One function per kind of input, used by every command and by the page, each naming the file, row
and column at fault and what to do:

- :func:`~medvit.boundary.manifest.check_manifest` (behind ``medvit prepare --check``) and
  :func:`~medvit.boundary.manifest.require_valid_manifest` (the same checks, raising; ``train``,
  ``evaluate``, ``pretrain`` and ``explain --scores`` call it before the first image is read);
- :func:`~medvit.boundary.paths.contained_path`: a manifest path must stay inside its data folder;
- :func:`~medvit.boundary.predictions.read_predictions_file`: ``predictions*.csv`` for ``report``,
  ``calibrate`` and the demo export;
- :func:`~medvit.boundary.weights.read_safetensors`: weight files (``pretrained=``, run weights);
- images, masks and DICOM files are checked by the one decoder, :mod:`medvit.data.images`
  (:mod:`medvit.data.dicom` for DICOM), which raises :class:`~medvit.errors.ImageReadError`.
"""

from medvit.boundary.manifest import ManifestCheck, ManifestError, check_manifest, require_valid_manifest
from medvit.boundary.paths import contained_path
from medvit.boundary.predictions import read_predictions_file
from medvit.boundary.weights import read_safetensors

__all__ = [
    "ManifestCheck",
    "ManifestError",
    "check_manifest",
    "contained_path",
    "read_predictions_file",
    "read_safetensors",
    "require_valid_manifest",
]
