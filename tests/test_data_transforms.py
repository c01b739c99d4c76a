"""medvit.data.transforms and loaders: shapes, normalisation, orientation, mask alignment, seeding."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medvit.data.loaders import create_dataloader
from medvit.data.transforms import PRESETS, eval_transforms, preprocess_image, train_transforms

DATA = Path(__file__).parent / "data"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_eval_output_shape_dtype_and_normalisation(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("RGB", (50, 30), (51, 102, 204)).save(path)
    out = eval_transforms((32, 48), MEAN, STD)({"image": str(path), "label": 2})
    image = out["image"]
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, 32, 48)
    expected = (torch.tensor([0.2, 0.4, 0.8]) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(image.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
    assert image.std(dim=(1, 2)).max() < 1e-5 and out["label"] == 2


def test_non_square_image_keeps_orientation(tmp_path):
    pixels = np.zeros((48, 96, 3), np.uint8)  # H=48, W=96
    pixels[:12, :24] = 255  # bright top-left corner: a quarter of H, a quarter of W
    path = tmp_path / "corner.png"
    Image.fromarray(pixels).save(path)
    image = eval_transforms((32, 64), (0, 0, 0), (1, 1, 1))({"image": str(path)})["image"]
    assert image.shape == (3, 32, 64)
    assert image[:, :7, :15].min() > 0.95  # still top-left, still a quarter of each side
    assert image[:, 9:, :].max() < 0.05 and image[:, :, 17:].max() < 0.05
    reference = np.asarray(Image.fromarray(pixels).resize((64, 32), Image.Resampling.BILINEAR)) / 255.0
    assert np.abs(image.permute(1, 2, 0).numpy() - reference).mean() < 0.02


def test_preprocess_image_equals_eval_pipeline():
    path = DATA / "ham10000/HAM10000_images_part_1/ISIC_0024432.jpg"
    from medvit.data.images import read_image

    from_file = eval_transforms((64, 80), MEAN, STD)({"image": str(path)})["image"]
    from_array = preprocess_image(read_image(path), (64, 80), MEAN, STD)
    assert torch.equal(from_file, from_array)
    with pytest.raises(ValueError, match="read_image"):
        preprocess_image(np.zeros((10, 10), np.uint8), (32, 32), MEAN, STD)


def bright_square(tmp_path: Path) -> dict:
    pixels = np.zeros((60, 80), np.uint8)
    pixels[10:30, 15:45] = 255
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "img.png")
    Image.fromarray(pixels > 0).save(tmp_path / "img_mask.png")  # mode "1", like BUSI
    return {"image": str(tmp_path / "img.png"), "mask": str(tmp_path / "img_mask.png"), "label": 0}


@pytest.mark.parametrize("preset", PRESETS)
def test_masks_follow_train_augmentation(tmp_path, preset):
    data = bright_square(tmp_path)
    pipeline = train_transforms(preset, (48, 64), (0, 0, 0), (1, 1, 1))
    pipeline.set_random_state(seed=7)
    moved = 0
    for _ in range(6):
        out = pipeline(data)
        image, mask = out["image"], out["mask"]
        assert image.shape == (3, 48, 64) and mask.shape == (1, 48, 64) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        gray = image.mean(dim=0)
        bright = gray > (gray.max() + gray.min()) / 2
        truth = mask[0] > 0.5
        iou = (bright & truth).sum() / (bright | truth).sum()
        assert iou > 0.8, f"{preset}: image/mask IoU {iou:.2f}"
        moved += int(not truth[8:23, 11:34].all())  # the resized square's interior
    assert moved > 0  # augmentation did move the square at least once


def test_train_pipeline_reproducible_and_presets_differ(tmp_path):
    data = bright_square(tmp_path)
    runs = []
    for _ in range(2):
        pipeline = train_transforms("dermoscopy", (48, 64), MEAN, STD)
        pipeline.set_random_state(seed=3)
        runs.append([pipeline(data)["image"] for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    with pytest.raises(ValueError, match="preset"):
        train_transforms("xray", (32, 32), MEAN, STD)
    with pytest.raises(ValueError, match="std"):
        eval_transforms((32, 32), (0.5,), (0.5,))


def test_ultrasound_never_flips_vertically(tmp_path):
    pixels = np.zeros((40, 40), np.uint8)
    pixels[:8, :] = 255  # transducer band at the top
    Image.fromarray(pixels).save(tmp_path / "us.png")
    pipeline = train_transforms("ultrasound", (40, 40), (0, 0, 0), (1, 1, 1))
    pipeline.set_random_state(seed=0)
    for _ in range(10):
        image = pipeline({"image": str(tmp_path / "us.png")})["image"].mean(dim=0)
        assert image[:12].mean() > image[28:].mean() + 0.3


def test_dataloader_batches(synthetic_busi):
    manifest, root = synthetic_busi["manifest"], synthetic_busi["root"]
    loader = create_dataloader(manifest, root, "train", (32, 32), MEAN, STD, "ultrasound", batch_size=4, train=True)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["mask"].shape == (4, 1, 32, 32)
    assert isinstance(batch["path"], list) and len(batch["path"]) == 4
    assert all(len(b["label"]) == 4 for b in loader)  # drop_last for training

    def first(seed: int, **kwargs) -> torch.Tensor:
        loader = create_dataloader(
            manifest, root, "train", (32, 32), MEAN, STD, "ultrasound", 4, True, seed=seed, **kwargs
        )
        return next(iter(loader))["image"]

    assert torch.equal(first(0), first(0)) and not torch.equal(first(0), first(1))
    evaluation = create_dataloader(manifest, root, "test", (32, 32), MEAN, STD, "ultrasound", 2, False)
    cached = create_dataloader(manifest, root, "test", (32, 32), MEAN, STD, "ultrasound", 2, False, cache=True)
    frame = pd.read_csv(manifest)
    paths = [p for b in evaluation for p in b["path"]]
    assert paths == list(frame[frame["split"] == "test"]["image"])  # manifest order
    for a, b in zip(evaluation, cached):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="split='holdout'"):
        create_dataloader(manifest, root, "holdout", (16, 16), MEAN, STD, "generic", 8, False)
