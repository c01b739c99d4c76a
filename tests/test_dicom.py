"""medvit.data.dicom: pydicom's own bundled test files, and DICOMs written from the bundled samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless, UID

from dicom_samples import PATIENT, write_dicom
from medvit.assets import samples_dir
from medvit.data.dicom import is_dicom, read_dicom
from medvit.errors import ImageReadError
from medvit.data.images import read_image
from medvit.demo.uploads import open_upload, read_upload

SAMPLES = samples_dir()
BUSI_SAMPLE = SAMPLES / "busi" / "benign (345).png"


def bundled(name: str) -> str:
    """A test file shipped inside the pydicom wheel (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return path


# Decoded: every compressed transfer syntax the plugins handle, each photometric interpretation.
SUPPORTED = [
    "CT_small.dcm",  # signed 16-bit, rescale slope/intercept, no window: min-max
    "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",  # the same MR in six encodings
    "JPEG2000.dcm", "J2K_pixelrep_mismatch.dcm", "JPGExtended.dcm",  # 12/13/16-bit
    "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_gdcm_KY.dcm", "SC_rgb_jls_lossy_line.dcm", "SC_ybr_full_422_uncompressed.dcm",
    "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_2frame.dcm",
    "examples_palette.dcm", "examples_ybr_color.dcm", "examples_jpeg2k.dcm", "examples_overlay.dcm",
    "ExplVR_BigEnd.dcm", "image_dfl.dcm", "rtdose.dcm",
]

# Refused, with the reason the message gives.
REFUSED = {
    "rtplan.dcm": "no pixel data",
    "test-SR.dcm": "no pixel data",
    "reportsi.dcm": "no pixel data",
    "waveform_ecg.dcm": "no pixel data",
    "MR_truncated.dcm": "truncated pixel data",
    "no_meta.dcm": "not a DICOM file",
    "rtstruct.dcm": "not a DICOM file",
    "meta_missing_tsyntax.dcm": "broken DICOM header",
    "nested_priv_SQ.dcm": "broken DICOM header",
    "badVR.dcm": "broken DICOM header",
    "JPEG-lossy.dcm": "undecodable pixel data",
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_bundled_files_decode_to_rgb(name):
    image = read_dicom(bundled(name))
    assert image.rgb.dtype == np.uint8 and image.rgb.ndim == 3 and image.rgb.shape[-1] == 3
    assert image.rgb.max() > image.rgb.min()  # not a blank image


@pytest.mark.parametrize("name, reason", sorted(REFUSED.items()))
def test_bundled_files_that_cannot_be_used_are_named(name, reason):
    path = bundled(name)
    with pytest.raises(ImageReadError) as caught:
        read_dicom(path)
    assert caught.value.reason == reason
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_one_mr_in_six_encodings_gives_the_same_pixels():
    reference = read_dicom(bundled("MR_small.dcm"))
    assert reference.windowing == "window from the file" and reference.modality == "MR"
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(read_dicom(bundled(name)).rgb, reference.rgb, err_msg=name)


def test_colour_encodings_agree_with_the_lossless_rgb():
    reference = read_dicom(bundled("SC_rgb_rle.dcm")).rgb.astype(int)
    for name, tolerance in {
        "SC_ybr_full_422_uncompressed.dcm": 6,  # YBR_FULL_422 -> RGB
        "SC_rgb_dcmtk_+eb+cy+np.dcm": 6,  # JPEG baseline, YBR_FULL_422
        "SC_rgb_jpeg_dcmtk.dcm": 6,  # JPEG baseline, YBR_FULL
        "SC_rgb_jpeg_gdcm.dcm": 0,  # JPEG lossless
        "SC_rgb_gdcm_KY.dcm": 0,  # JPEG 2000 lossless
        "SC_rgb_rle_16bit.dcm": 1,  # 16 bits scaled to 8
        "SC_rgb_rle_32bit.dcm": 1,
    }.items():
        difference = np.abs(read_dicom(bundled(name)).rgb.astype(int) - reference)
        assert difference.mean() <= max(tolerance, 0.5) and (tolerance or difference.max() == 0), name


def test_palette_colour_is_applied():
    image = read_dicom(bundled("examples_palette.dcm"))
    assert image.windowing == "palette"
    assert (image.rgb[..., 0] != image.rgb[..., 2]).mean() > 0.1  # colours, not a grey index image


def test_multi_frame_first_by_default_and_any_frame_on_request():
    path = bundled("examples_ybr_color.dcm")  # 30 frames of ultrasound
    first, last = read_dicom(path), read_dicom(path, frame=29)
    assert first.num_frames == 30 and first.frame == 0 and last.frame == 29
    assert first.summary == "US, 320 x 240, frame 1 of 30"
    assert not np.array_equal(first.rgb, last.rgb)
    with pytest.raises(ImageReadError, match="frame 31 asked for, but the file has 30 frame"):
        read_dicom(path, frame=30)


# ---------------------------------------------------------------------------------------- written files
@pytest.fixture(scope="module")
def sample_rgb() -> np.ndarray:
    return read_image(BUSI_SAMPLE)


def test_monochrome2_and_monochrome1_of_a_sample(tmp_path, sample_rgb):
    gray = sample_rgb[..., 0]
    stretched = np.rint((gray - gray.min()) * 255.0 / (gray.max() - gray.min())).astype(np.uint8)
    plain = read_dicom(write_dicom(tmp_path / "m2.dcm", gray))
    assert plain.windowing == "min-max"
    np.testing.assert_array_equal(plain.rgb, np.repeat(stretched[..., None], 3, axis=-1))
    inverted = read_dicom(write_dicom(tmp_path / "m1.dcm", gray, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(inverted.rgb, 255 - plain.rgb)  # MONOCHROME1: 0 is white


def test_12_bit_signed_pixels_with_the_file_window(tmp_path, sample_rgb):
    gray = sample_rgb[..., 0].astype(np.int16)
    values = gray * 10 - 1000  # -990 .. 1550, signed 12-bit
    path = write_dicom(tmp_path / "s12.dcm", values, bits_stored=12, WindowCenter=275, WindowWidth=2550)
    image = read_dicom(path)
    assert image.windowing == "window from the file" and image.bits_stored == 12
    assert np.abs(image.rgb[..., 0].astype(int) - gray).max() <= 1
    rescaled = write_dicom(tmp_path / "ct.dcm", values, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024)
    np.testing.assert_array_equal(read_dicom(rescaled).rgb, read_dicom(write_dicom(tmp_path / "raw.dcm", values, bits_stored=12)).rgb)


def test_rgb_ybr_and_compressed_copies_of_a_sample(tmp_path, sample_rgb):
    from pydicom.pixels import convert_color_space

    np.testing.assert_array_equal(read_dicom(write_dicom(tmp_path / "rgb.dcm", sample_rgb, photometric="RGB")).rgb, sample_rgb)
    ybr = convert_color_space(sample_rgb, "RGB", "YBR_FULL")
    back = read_dicom(write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL")).rgb
    assert np.abs(back.astype(int) - sample_rgb).max() <= 2
    gray = sample_rgb[..., 0]
    reference = read_dicom(write_dicom(tmp_path / "plain.dcm", gray)).rgb
    for syntax in (RLELossless, JPEG2000Lossless):
        image = read_dicom(write_dicom(tmp_path / f"{syntax.keyword}.dcm", gray, transfer_syntax=syntax))
        assert image.transfer_syntax == syntax.name
        np.testing.assert_array_equal(image.rgb, reference)


def test_truncated_empty_foreign_and_undecodable_files_are_named(tmp_path, sample_rgb):
    good = write_dicom(tmp_path / "good.dcm", sample_rgb[..., 0])
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(good.read_bytes()[:-500])
    with pytest.raises(ImageReadError, match=r"cut.dcm: truncated pixel data") as caught:
        read_dicom(cut)
    assert caught.value.reason == "truncated pixel data"
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.dcm: empty file"):
        read_image(tmp_path / "empty.dcm")
    (tmp_path / "photo.dcm").write_bytes(BUSI_SAMPLE.read_bytes())  # a PNG renamed
    with pytest.raises(ImageReadError, match="photo.dcm: not a DICOM Part 10 file"):
        read_image(tmp_path / "photo.dcm")
    mpeg = write_dicom(tmp_path / "mpeg.dcm", sample_rgb[..., 0])  # then given a syntax nothing decodes
    from pydicom import dcmread

    ds = dcmread(mpeg)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 Main Profile
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(mpeg)
    with pytest.raises(ImageReadError, match=r"mpeg.dcm: transfer syntax MPEG2.*cannot be decoded here") as caught:
        read_dicom(mpeg)
    assert caught.value.reason == "unsupported transfer syntax"


def test_dicom_is_found_by_name_or_marker(tmp_path, sample_rgb):
    path = write_dicom(tmp_path / "no_suffix", sample_rgb[..., 0])
    assert is_dicom(path) and is_dicom(path.read_bytes()) and not is_dicom(BUSI_SAMPLE)
    np.testing.assert_array_equal(read_image(path), read_dicom(path).rgb)  # the one decoder dispatches


def test_result_holds_no_patient_data(tmp_path, sample_rgb):
    image = read_dicom(write_dicom(tmp_path / "p.dcm", sample_rgb[..., 0]))
    fields = {name: getattr(image, name) for name in image.__dataclass_fields__ if name != "rgb"}
    text = json.dumps(fields) + image.summary
    assert not any(value in text for value in PATIENT.values())


# -------------------------------------------------------------------------------------------- uploads
def test_upload_of_a_dicom_and_its_frames(tmp_path, sample_rgb):
    gray = sample_rgb[..., 0]
    data = write_dicom(tmp_path / "cine.dcm", np.stack([gray, 255 - gray, gray // 2])).read_bytes()
    first = open_upload(data, "cine.dcm")
    assert first.is_dicom and first.num_frames == 3 and first.summary == "DICOM US, 256 x 211, frame 1 of 3"
    second = open_upload(data, "cine.dcm", frame=1)
    assert np.abs(second.rgb[..., 0].astype(int) - (255 - first.rgb[..., 0].astype(int))).max() <= 1  # the inverted frame
    np.testing.assert_array_equal(read_upload(data, "cine.dcm"), first.rgb)
    assert not any(value in first.summary for value in PATIENT.values())
    with pytest.raises(ImageReadError, match=r"^report.dcm: no pixel data \(SOP class Comprehensive SR Storage\)"):
        open_upload(Path(bundled("test-SR.dcm")).read_bytes(), "report.dcm")
