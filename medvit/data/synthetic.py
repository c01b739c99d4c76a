"""Tiny, learnable synthetic datasets written in the original raw layouts (for smoke runs and tests).

The class of each image is visible from shapes and colours, so a small model learns it in a few
epochs:

- BUSI-like ultrasound: smooth oval lesion with a bright band below = benign, spiculated very dark
  lesion with an acoustic shadow = malignant, none = normal; masks ``_mask`` (+ ``_mask_1`` for
  every fifth image, which has two lesions).
- HAM10000-like dermoscopy: one lesion colour and shape per class; every third lesion has two
  images; ISIC ids spread over ``HAM10000_images_part_1``/``_part_2`` like the original.
- EyePACS-like fundus: red dots, exudates and vessels grow with the grade; both eyes per patient,
  some patients with a different grade in each eye.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same files.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medvit.data.datasets import BUSI_CLASSES, EYEPACS_CLASSES, HAM10000_CLASSES

__all__ = ["SYNTHETIC_DATASETS", "make_synthetic"]

_logger = logging.getLogger(__name__)

SYNTHETIC_DATASETS = ("busi", "ham10000", "eyepacs")


def _ellipse_box(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def _polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, spiky: bool) -> list[tuple[float, float]]:
    count = 14 if spiky else 24
    angles = np.linspace(0, 2 * math.pi, count, endpoint=False) + rng.uniform(0, math.pi)
    radii = radius * (rng.uniform(0.45, 1.25, count) if spiky else rng.uniform(0.9, 1.05, count))
    if spiky:
        radii[::2] *= 0.55
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles)]


# -------------------------------------------------------------------------------------------------- BUSI
def _busi(out: Path, per_class: int, rng: np.random.Generator, size: tuple[int, int] = (88, 72)) -> None:
    width, height = size
    for label in BUSI_CLASSES:
        folder = out / "Dataset_BUSI_with_GT" / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, per_class + 1):
            speckle = rng.gamma(2.0, 40.0, (height, width)).clip(0, 255)
            image = Image.fromarray(speckle.astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(0.8))
            draw = ImageDraw.Draw(image)
            lesions = 0 if label == "normal" else (2 if index % 5 == 0 else 1)
            masks = []
            for lesion in range(lesions):
                mask = Image.new("1", size, 0)
                cx = rng.uniform(0.3, 0.7) * width + (lesion * 0.25 - 0.125) * width * (lesions - 1)
                cy = rng.uniform(0.4, 0.7) * height
                radius = rng.uniform(0.1, 0.16) * min(size)
                if label == "benign":  # smooth oval, moderately dark, posterior enhancement below it
                    box = _ellipse_box(cx, cy, radius * 1.3, radius)
                    draw.rectangle((cx - radius, cy, cx + radius, height), fill=int(rng.integers(150, 180)))
                    draw.ellipse(box, fill=int(rng.integers(45, 65)))
                    ImageDraw.Draw(mask).ellipse(box, fill=1)
                else:  # spiculated, very dark, acoustic shadow below it
                    points = _polygon(rng, cx, cy, radius * 1.3, spiky=True)
                    draw.rectangle((cx - radius * 0.8, cy, cx + radius * 0.8, height), fill=int(rng.integers(5, 20)))
                    draw.polygon(points, fill=int(rng.integers(0, 10)))
                    ImageDraw.Draw(mask).polygon(points, fill=1)
                masks.append(mask)
            stem = f"{label} ({index})"
            image.convert("RGB").save(folder / f"{stem}.png")
            if not masks:  # normal: all-black RGB mask, as in the original
                Image.new("RGB", size, (0, 0, 0)).save(folder / f"{stem}_mask.png")
            for number, mask in enumerate(masks):
                suffix = "_mask" if number == 0 else f"_mask_{number}"
                mask.save(folder / f"{stem}{suffix}.png")


# ---------------------------------------------------------------------------------------------- HAM10000
_HAM_STYLE = {  # lesion RGB, shape
    "akiec": ((200, 90, 80), "blob"),
    "bcc": ((230, 180, 190), "ring"),
    "bkl": ((170, 140, 60), "square"),
    "df": ((70, 90, 150), "small"),
    "mel": ((40, 20, 30), "spiky"),
    "nv": ((110, 60, 40), "round"),
    "vasc": ((200, 20, 40), "round"),
}


def _ham_image(rng: np.random.Generator, dx: str, lesion_seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    width, height = size
    skin = np.array([225, 180, 150]) + rng.normal(0, 6, 3)
    pixels = np.clip(skin + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    colour, shape = _HAM_STYLE[dx]
    colour = tuple(int(np.clip(c + rng.normal(0, 8), 0, 255)) for c in colour)
    lesion_rng = np.random.default_rng(lesion_seed)  # the same lesion looks alike in all its images
    cx = width / 2 + rng.uniform(-8, 8)
    cy = height / 2 + rng.uniform(-6, 6)
    radius = lesion_rng.uniform(0.22, 0.3) * height
    if shape == "ring":
        draw.ellipse(_ellipse_box(cx, cy, radius, radius), outline=colour, width=5)
    elif shape == "square":
        draw.rectangle(_ellipse_box(cx, cy, radius, radius * 0.8), fill=colour)
    elif shape == "small":
        draw.ellipse(_ellipse_box(cx, cy, radius * 0.5, radius * 0.5), fill=colour)
    elif shape in ("spiky", "blob"):
        draw.polygon(_polygon(lesion_rng, cx, cy, radius * 1.2, spiky=shape == "spiky"), fill=colour)
    else:
        draw.ellipse(_ellipse_box(cx, cy, radius * 1.1, radius), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def _ham10000(out: Path, per_class: int, rng: np.random.Generator) -> None:
    rows = []
    image_number, lesion_number = 0, 0
    for dx in HAM10000_CLASSES:
        made = 0
        while made < per_class:
            lesion_number += 1
            copies = min(2 if lesion_number % 3 == 0 else 1, per_class - made)
            lesion_seed = int(rng.integers(2**31))
            age, sex = f"{int(rng.integers(20, 85)) // 5 * 5}.0", ("male", "female")[int(rng.integers(2))]
            for _ in range(copies):
                # ids spread over ISIC_0024306..ISIC_0034305 like the original: part_1 <= 29305 < part_2
                number = 24306 + image_number * 10_000 // (len(HAM10000_CLASSES) * per_class)
                image_number += 1
                image_id = f"ISIC_{number:07d}"
                part = "HAM10000_images_part_1" if number <= 29305 else "HAM10000_images_part_2"
                (out / part).mkdir(parents=True, exist_ok=True)
                _ham_image(rng, dx, lesion_seed).save(out / part / f"{image_id}.jpg", quality=92)
                rows.append((f"HAM_{lesion_number:07d}", image_id, dx, "histo", age, sex, "back"))
            made += copies
    with (out / "HAM10000_metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"))
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------- EyePACS
def _fundus(rng: np.random.Generator, grade: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    cx, cy, radius = width / 2, height / 2, height * 0.46
    base = tuple(int(c + rng.normal(0, 8)) for c in (190, 90, 40))
    draw.ellipse(_ellipse_box(cx, cy, radius, radius), fill=base)
    draw.ellipse(_ellipse_box(cx + radius * 0.45, cy, 5, 5), fill=(245, 210, 150))  # optic disc
    def spot() -> tuple[float, float]:
        angle, r = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.uniform(0.02, 0.7))
        return cx + r * math.cos(angle), cy + r * math.sin(angle)
    for _ in range(4 * grade):  # microaneurysms / haemorrhages
        x, y = spot()
        draw.ellipse(_ellipse_box(x, y, 1.6, 1.6), fill=(90, 0, 0))
    for _ in range(3 * max(0, grade - 1)):  # hard exudates
        x, y = spot()
        draw.ellipse(_ellipse_box(x, y, 1.8, 1.4), fill=(250, 240, 90))
    if grade == 4:  # neovascularisation
        for _ in range(3):
            (x0, y0), (x1, y1) = spot(), spot()
            draw.line((x0, y0, x1, y1), fill=(120, 0, 20), width=2)
    pixels = np.asarray(image).astype(np.float64)
    pixels += rng.normal(0, 3, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _eyepacs(out: Path, per_class: int, rng: np.random.Generator) -> None:
    patients_per_grade = math.ceil(per_class / 2)
    grades: list[list[int]] = []  # [left, right] per patient
    for grade in range(len(EYEPACS_CLASSES)):
        grades.extend([grade, grade] for _ in range(patients_per_grade))
    # swap the right eye between the first patients of grades (0, 1) and (2, 3): different grades per
    # eye, class counts unchanged
    for low in (0, 2):
        a, b = low * patients_per_grade, (low + 1) * patients_per_grade
        grades[a][1], grades[b][1] = grades[b][1], grades[a][1]
    (out / "train").mkdir(parents=True, exist_ok=True)
    rows = []
    for patient_index, (left, right) in enumerate(grades):
        patient = 10 + patient_index * 3
        for eye, grade in (("left", left), ("right", right)):
            image = _fundus(rng, grade)
            if eye == "right":
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            image.save(out / "train" / f"{patient}_{eye}.jpeg", quality=92)
            rows.append((f"{patient}_{eye}", grade))
    with (out / "trainLabels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("image", "level"))
        writer.writerows(rows)


def make_synthetic(out: str | Path, dataset: str, per_class: int = 12, seed: int = 0) -> Path:
    """Write a small learnable synthetic dataset in ``dataset``'s raw layout under ``out``.

    Args:
        out: the raw folder to create (must be empty or absent).
        dataset: ``busi``, ``ham10000`` or ``eyepacs``.
        per_class: images per class (EyePACS rounds up to whole patients).
        seed: random seed; the same arguments write the same files.

    Returns:
        ``out`` (pass it to ``medvit prepare DATASET OUT``).

    Raises:
        ValueError: unknown dataset, ``per_class < 3``, or ``out`` is a non-empty folder.
    """
    out = Path(out)
    if dataset not in SYNTHETIC_DATASETS:
        raise ValueError(f"unknown synthetic dataset {dataset!r}; choose one of {SYNTHETIC_DATASETS}")
    if per_class < 3:
        raise ValueError(f"per_class={per_class}: need at least 3 images per class (one per split)")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: folder is not empty; choose a new or empty folder for the synthetic data")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    {"busi": _busi, "ham10000": _ham10000, "eyepacs": _eyepacs}[dataset](out, per_class, rng)
    _logger.info("wrote synthetic %s (%d per class, seed %d) to %s", dataset, per_class, seed, out)
    return out
