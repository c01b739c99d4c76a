"""DICOM files written with pydicom for the tests, from arrays (e.g. the bundled sample images).

Every file carries a made-up patient (:data:`PATIENT`), so that tests can check that none of it
reaches the screen or an output file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-83421",
    "PatientBirthDate": "19700101",
    "StudyDate": "20240102",
    "InstitutionName": "Example Clinic",
}
"""The header fields that must never appear on the page or in outputs."""


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str = "US",
    transfer_syntax: str = ExplicitVRLittleEndian,
    **header: object,
) -> Path:
    """Write ``pixels`` ((H, W), (H, W, 3), or a leading frame axis) as a DICOM Part 10 file.

    ``header`` adds or overrides elements (``WindowCenter=2048``, ``RescaleIntercept=-1024``, ...);
    a ``transfer_syntax`` other than uncompressed compresses with pydicom's encoders (RLE, JPEG 2000).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    bits = bits_stored or (8 if pixels.dtype.itemsize == 1 else 16)
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
