"""medvit.data.images: every legal image becomes RGB uint8, every bad one an ImageReadError."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvit.data.images import ImageReadError, read_image, read_mask

DATA = Path(__file__).parent / "data"


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height (8-bit RGB) but holds no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_png_and_jpeg_keep_pixels_and_orientation():
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :10] = (255, 0, 0)
    out = read_image(encode(Image.fromarray(pixels)))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels)
    jpeg = read_image(encode(Image.fromarray(pixels), "JPEG", quality=95))
    assert jpeg.shape == (20, 30, 3)
    assert jpeg[2, 2, 0] > 200 and jpeg[15, 25].max() < 40


def test_real_sample_images_read_as_rgb():
    busi = read_image(DATA / "busi/Dataset_BUSI_with_GT/benign/benign (253).png")
    ham = read_image(DATA / "ham10000/HAM10000_images_part_1/ISIC_0026665.jpg")
    eye = read_image((DATA / "eyepacs/train/1051_left.jpeg").read_bytes())
    for image in (busi, ham, eye):
        assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8
    assert ham.shape == (450, 600, 3)  # H, W not swapped
    assert eye.shape[1] == 1024


def test_rgba_palette_gray_cmyk_converted():
    rgba = np.zeros((8, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha dropped, colour kept
    assert (read_image(encode(Image.fromarray(rgba, "RGBA")))[..., 0] == 200).all()

    palette = Image.new("P", (12, 8))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 6, 8))
    out = read_image(encode(palette))
    assert out.shape == (8, 12, 3)
    assert tuple(out[0, 0]) == (10, 200, 30) and tuple(out[0, 11]) == (0, 0, 0)

    gray = read_image(encode(Image.fromarray(np.full((8, 12), 77, np.uint8), "L")))
    assert (gray == 77).all()

    cmyk = read_image(encode(Image.new("CMYK", (12, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    assert cmyk.shape == (8, 12, 3) and cmyk[..., 0].min() > 230 and cmyk[..., 1:].max() < 30


def test_16bit_gray_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16).repeat(3, axis=0)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])


def test_bad_files_raise_image_read_error(tmp_path):
    good_jpeg = encode(Image.new("RGB", (64, 48), (90, 90, 90)), "JPEG")
    good_png = encode(Image.new("RGB", (64, 48), (90, 90, 90)))
    corrupt = good_jpeg[:20] + bytes(range(256)) * 4
    cases = {
        "empty.png": (b"", "empty file"),
        "corrupt.jpg": (corrupt, "not a readable image|truncated or corrupt"),
        "truncated.png": (good_png[: len(good_png) // 2], "truncated"),
        "not_an_image.png": (b"hello, world" * 10, "not a readable image"),
        "bomb.png": (png_header_only(20_000, 10_000), "decompression bomb"),
    }
    for name, (payload, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ImageReadError, match=reason):
            read_image(path)
    assert len(png_header_only(20_000, 10_000)) < 100  # a 200-megapixel header, not a big file
    with pytest.raises(ImageReadError, match="max_pixels"):  # our own limit, below Pillow's
        read_image(png_header_only(8_000, 7_000), max_pixels=50_000_000)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


def test_masks_binarised_and_merged():
    folder = DATA / "busi/Dataset_BUSI_with_GT/benign"
    image = read_image(folder / "benign (195).png")
    parts = [read_mask(folder / f"benign (195){suffix}.png") for suffix in ("_mask", "_mask_1", "_mask_2")]
    merged = read_mask(";".join(str(folder / f"benign (195){s}.png") for s in ("_mask", "_mask_1", "_mask_2")))
    assert merged.shape == image.shape[:2] and merged.dtype == np.uint8
    assert set(np.unique(merged)) == {0, 1}
    np.testing.assert_array_equal(merged, parts[0] | parts[1] | parts[2])
    assert merged.sum() > max(part.sum() for part in parts)
    normal = read_mask(DATA / "busi/Dataset_BUSI_with_GT/normal/normal (50)_mask.png")  # RGB, all black
    assert normal.sum() == 0
    assert read_mask("", shape=(5, 7)).shape == (5, 7)


def test_mask_rgba_and_size_mismatch(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[2:4, 2:4] = (255, 255, 255, 255)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 4
    with pytest.raises(ImageReadError, match="differs"):
        read_mask(tmp_path / "m.png", shape=(7, 6))


def test_unreadable_reason_is_deterministic(tmp_path):
    """No memory address (``<_io.BytesIO object at 0x...>``) in the message: same file, same words."""
    (tmp_path / "notes.png").write_bytes(b"hello, world")
    messages = set()
    for _ in range(2):
        with pytest.raises(ImageReadError) as error:
            read_image(tmp_path / "notes.png")
        messages.add(str(error.value))
    (message,) = messages
    assert message == f"{tmp_path / 'notes.png'}: not a readable image (no image format recognised in its first bytes " \
        "68 65 6c 6c 6f 2c 20 77)"
    with pytest.raises(ImageReadError, match=r"^<3 bytes>: not a readable image \(no image format .* 61 62 63\)$"):
        read_image(b"abc")


def test_webp_reads_like_png():
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    webp = encode(Image.fromarray(pixels), "WEBP", lossless=True)
    np.testing.assert_array_equal(read_image(webp), pixels)
