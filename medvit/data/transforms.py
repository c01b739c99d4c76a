"""MONAI dictionary pipelines: one train pipeline per modality preset and one deterministic eval pipeline.

Data dicts are ``{"image": path | bytes | (H, W, 3) uint8 array, "label": int, ["mask": ";"-joined
paths]}``. Images are read by :func:`medvit.data.images.read_image` (the one place where gray,
palette, RGBA, 16-bit and CMYK become RGB), so H and W are never swapped and every entry point (the
loaders, :func:`preprocess_image` for the app and explanations) converts the same way. Outputs:
``image`` float32 (3, H, W) normalised channel-wise with the backbone's mean/std, ``mask`` float32
(1, H, W) in {0, 1}; masks follow every spatial transform with nearest interpolation.
"""

from __future__ import annotations

import logging
import math
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from einops import rearrange
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandRotated,
    RandScaleIntensityd,
    Transform,
)

from medvit.data.images import DEFAULT_MAX_PIXELS, read_image, read_mask

__all__ = [
    "PRESETS",
    "LoadMaskd",
    "LoadRGBImaged",
    "RandColorJitter",
    "RandColorJitterd",
    "Resize2d",
    "Resize2dd",
    "eval_transforms",
    "preprocess_image",
    "rgb_to_tensor",
    "train_transforms",
]

_logger = logging.getLogger(__name__)

PRESETS = ("dermoscopy", "fundus", "ultrasound", "generic")
"""Train-augmentation presets (HAM10000, EyePACS, BUSI, anything else)."""

_IMAGE, _MASK = "image", "mask"


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """RGB ``uint8`` (H, W, 3) -> float32 (3, H, W) in [0, 1].

    Raises:
        ValueError: not an (H, W, 3) ``uint8`` array (read files with ``read_image`` first).
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(
            f"expected an RGB uint8 array of shape (H, W, 3), got {dtype} {shape}; "
            "read images with medvit.data.images.read_image"
        )
    return torch.from_numpy(rearrange(rgb, "h w c -> c h w").astype(np.float32) / 255.0)


class LoadRGBImaged(MapTransform):
    """Load images as float32 (3, H, W) in [0, 1] via :func:`read_image` (no H/W swap).

    Args:
        keys: keys holding a path, encoded bytes or an RGB ``uint8`` (H, W, 3) array.
        max_pixels: decompression-bomb guard passed to :func:`read_image`.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ImageReadError: an image is unreadable (from :func:`read_image`).
    """

    def __init__(
        self,
        keys: KeysCollection = _IMAGE,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_pixels = max_pixels

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            rgb = value if isinstance(value, np.ndarray) else read_image(value, max_pixels=self.max_pixels)
            d[key] = rgb_to_tensor(rgb)
        return d


class LoadMaskd(MapTransform):
    """Load (and merge by union) mask files as float32 (1, H, W) in {0, 1}, sized like the image.

    Must run after :class:`LoadRGBImaged`. An empty mask cell gives an all-zero mask.

    Args:
        keys: keys holding a ``;``-joined string (or a sequence) of mask paths.
        image_key: the loaded image whose (H, W) the mask must match.
        max_pixels: decompression-bomb guard.
        allow_missing_keys: don't raise if a key is missing (images without a mask column).
    """

    def __init__(
        self,
        keys: KeysCollection = _MASK,
        image_key: str = _IMAGE,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.max_pixels = max_pixels

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = tuple(d[self.image_key].shape[-2:])
            mask = read_mask(d[key], shape=shape, max_pixels=self.max_pixels)
            d[key] = torch.from_numpy(mask[None].astype(np.float32))
        return d


class RandColorJitter(RandomizableTransform):
    """Random brightness, contrast, saturation and hue of an RGB (3, H, W) image in [0, 1].

    torchvision's ``ColorJitter`` draws from torch's global RNG; this draws from ``self.R`` so that
    ``Compose.set_random_state`` and MONAI's worker seeding make it reproducible.

    Args:
        prob: probability of jittering.
        brightness: factor drawn from ``[1 - brightness, 1 + brightness]``.
        contrast: factor drawn from ``[1 - contrast, 1 + contrast]``.
        saturation: factor drawn from ``[1 - saturation, 1 + saturation]``.
        hue: shift drawn from ``[-hue, hue]`` (at most 0.5).
    """

    def __init__(
        self,
        prob: float = 0.8,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.02,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue={hue} must be in [0, 0.5]")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self._factors = (1.0, 1.0, 1.0, 0.0)
        self._order = np.arange(4)

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._factors = (
            self.R.uniform(1 - self.brightness, 1 + self.brightness),
            self.R.uniform(1 - self.contrast, 1 + self.contrast),
            self.R.uniform(1 - self.saturation, 1 + self.saturation),
            self.R.uniform(-self.hue, self.hue),
        )
        self._order = self.R.permutation(4)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        img = torch.as_tensor(img)
        if not self._do_transform:
            return img
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        out = img.as_subclass(torch.Tensor).float()
        for index in self._order:
            out = ops[index](out, float(self._factors[index]))
        return out.clamp_(0.0, 1.0)


class RandColorJitterd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandColorJitter`; the same factors for every key."""

    def __init__(
        self,
        keys: KeysCollection = _IMAGE,
        prob: float = 0.8,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.02,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.jitter = RandColorJitter(1.0, brightness, contrast, saturation, hue)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandColorJitterd:
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.jitter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d


def _check_size(image_size: Sequence[int] | int) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size={image_size!r} must be (H, W) of positive ints")
    return size  # type: ignore[return-value]


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(
            f"mean={mean}, std={std}: need 3 values each (RGB) with std > 0; take them from "
            "timm.data.resolve_model_data_config(model)"
        )
    return mean, std


class Resize2d(Transform):
    """Resize a channel-first (C, H, W) tensor to (H, W): bilinear with anti-aliasing, or nearest.

    ``torch.nn.functional.interpolate(..., antialias=True)`` (PIL/torchvision-style). MONAI's
    ``Resize(anti_aliasing=True)`` smooths with a zero-padded Gaussian first, which darkens the image
    border by ~15 %, so it is not used here.

    Args:
        spatial_size: output (H, W).
        mode: ``"bilinear"`` (images, anti-aliased when shrinking) or ``"nearest"`` (masks: values
            stay in the input's set).
    """

    def __init__(self, spatial_size: Sequence[int], mode: str = "bilinear") -> None:
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode={mode!r}; choose 'bilinear' or 'nearest'")
        self.spatial_size = _check_size(spatial_size)
        self.mode = mode

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(img).as_subclass(torch.Tensor).float()
        if tuple(x.shape[-2:]) == self.spatial_size:
            return x
        if self.mode == "nearest":
            return F.interpolate(x[None], size=self.spatial_size, mode="nearest-exact")[0]
        out = F.interpolate(x[None], size=self.spatial_size, mode="bilinear", align_corners=False, antialias=True)[0]
        return out.clamp_(float(x.min()), float(x.max()))  # bilinear+antialias can overshoot slightly


class Resize2dd(MapTransform):
    """Dictionary version of :class:`Resize2d`, one mode per key (default: image bilinear, mask nearest).

    Args:
        keys: keys to resize.
        spatial_size: output (H, W).
        mode: one mode for all keys or one per key.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = (mode,) * len(self.keys) if isinstance(mode, str) else tuple(mode)
        if len(modes) != len(self.keys):
            raise ValueError(f"{len(modes)} modes for {len(self.keys)} keys {self.keys}; give one per key")
        self.resizers = {key: Resize2d(spatial_size, m) for key, m in zip(self.keys, modes)}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key](d[key])
        return d


def _resize(image_size: tuple[int, int]) -> Resize2dd:
    """Resize to (H, W): image bilinear with anti-aliasing, mask nearest."""
    return Resize2dd(keys=(_IMAGE, _MASK), spatial_size=image_size, allow_missing_keys=True)


def _normalize_and_finish(mean: Sequence[float], std: Sequence[float]) -> list[Transform]:
    return [
        NormalizeIntensityd(keys=_IMAGE, subtrahend=mean, divisor=std, channel_wise=True),
        EnsureTyped(
            keys=(_IMAGE, _MASK), data_type="tensor", dtype=torch.float32, track_meta=False, allow_missing_keys=True
        ),
    ]


def _eval_core(image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> list[Transform]:
    """The eval pipeline after loading; shared verbatim by :func:`preprocess_image`."""
    return [_resize(image_size), *_normalize_and_finish(mean, std)]


def _augmentations(preset: str, image_size: tuple[int, int]) -> list[Transform]:
    keys = (_IMAGE, _MASK)
    spatial = dict(keys=keys, allow_missing_keys=True)
    vflip = RandFlipd(spatial_axis=0, prob=0.5, **spatial)  # axis 0 of (H, W): up-down
    hflip = RandFlipd(spatial_axis=1, prob=0.5, **spatial)  # axis 1: left-right
    if preset == "dermoscopy":
        return [
            hflip,
            vflip,
            RandRotated(range_x=math.pi, prob=0.5, mode=("bilinear", "nearest"), padding_mode="reflection", **spatial),
            RandColorJitterd(keys=_IMAGE, prob=0.8, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        ]
    if preset == "fundus":
        return [
            hflip,
            vflip,
            RandRotated(range_x=math.pi, prob=0.5, mode=("bilinear", "nearest"), padding_mode="zeros", **spatial),
        ]
    if preset == "ultrasound":
        height, width = image_size
        return [
            hflip,  # no vertical flip: the transducer is always at the top
            RandAffined(
                prob=0.7,
                rotate_range=math.radians(10),
                scale_range=(0.1, 0.1),
                translate_range=(0.05 * height, 0.05 * width),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                **spatial,
            ),
            RandScaleIntensityd(keys=_IMAGE, factors=0.1, prob=0.5),
            RandAdjustContrastd(keys=_IMAGE, gamma=(0.8, 1.25), prob=0.5),
            RandGaussianNoised(keys=_IMAGE, std=0.02, prob=0.2),
        ]
    if preset == "generic":
        return [
            hflip,
            RandRotated(
                range_x=math.radians(15), prob=0.5, mode=("bilinear", "nearest"), padding_mode="zeros", **spatial
            ),
        ]
    raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")


def train_transforms(
    preset: str,
    image_size: Sequence[int] | int,
    mean: Sequence[float],
    std: Sequence[float],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Compose:
    """Train pipeline: load, resize, the preset's augmentation, normalise.

    Presets: ``dermoscopy`` (flips, any rotation, colour jitter), ``fundus`` (flips, any rotation, no
    colour change), ``ultrasound`` (left-right flip, small affine, intensity/contrast/noise; no
    vertical flip), ``generic`` (left-right flip, small rotation). Seed it with
    ``Compose.set_random_state(seed)`` (the loaders do, through MONAI's ``DataLoader``).

    Args:
        preset: one of :data:`PRESETS`.
        image_size: output (H, W).
        mean: per-channel mean of the backbone (images in [0, 1]).
        std: per-channel std of the backbone.
        max_pixels: decompression-bomb guard.

    Raises:
        ValueError: unknown preset, bad size or statistics.
    """
    size = _check_size(image_size)
    mean, std = _check_stats(mean, std)
    return Compose(
        [
            LoadRGBImaged(_IMAGE, max_pixels=max_pixels),
            LoadMaskd(_MASK, max_pixels=max_pixels, allow_missing_keys=True),
            _resize(size),
            *_augmentations(preset, size),
            *_normalize_and_finish(mean, std),
        ]
    )


def eval_transforms(
    image_size: Sequence[int] | int,
    mean: Sequence[float],
    std: Sequence[float],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Compose:
    """Deterministic eval pipeline: load, resize to (H, W), normalise channel-wise.

    Args:
        image_size: output (H, W).
        mean: per-channel mean of the backbone (images in [0, 1]).
        std: per-channel std of the backbone.
        max_pixels: decompression-bomb guard.
    """
    size = _check_size(image_size)
    mean, std = _check_stats(mean, std)
    return Compose(
        [
            LoadRGBImaged(_IMAGE, max_pixels=max_pixels),
            LoadMaskd(_MASK, max_pixels=max_pixels, allow_missing_keys=True),
            *_eval_core(size, mean, std),
        ]
    )


def preprocess_image(
    rgb: np.ndarray, image_size: Sequence[int] | int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Exactly the eval pipeline's resize + normalise for one in-memory image (uploads, explain).

    Args:
        rgb: RGB ``uint8`` (H, W, 3), e.g. from :func:`medvit.data.images.read_image`.
        image_size: output (H, W).
        mean: per-channel mean of the backbone.
        std: per-channel std of the backbone.

    Returns:
        float32 (3, H, W).
    """
    size = _check_size(image_size)
    mean, std = _check_stats(mean, std)
    return Compose(_eval_core(size, mean, std))({_IMAGE: rgb_to_tensor(rgb)})[_IMAGE]
