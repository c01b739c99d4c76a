"""The interpretation figure: the same test images with every backbone's four stage CAMs side by side.

Each fine-tuning cell of the dataset with lesion masks stores, in ``cam/figure.npz``, the stage CAMs of
the figure images (the first ``n`` test images with a non-empty mask, in manifest order, so every
backbone shows the same ones), what the network saw and the masks, at the study's input size (CAMs
as uint8). :func:`plot_figure` draws them from those files alone, without weights or data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

from medvit.data.loaders import create_dataset
from medvit.explain.pipeline import explain_tensor
from medvit.run_dir import load_run

__all__ = ["figure_cams", "plot_figure"]


def figure_cams(run_dir: str | Path, manifest: str | Path, root: str | Path, n: int = 6, split: str = "test",
                method: str = "gradcam") -> dict[str, np.ndarray]:
    """Stage CAMs of the first ``n`` ``split`` images with a lesion mask, for the true class.

    Returns:
        ``paths`` (n,), ``labels`` (n,), ``probabilities`` (n, K), ``images`` (n, H, W, 3) uint8,
        ``masks`` (n, H, W) bool and ``cams`` (n, 4, H, W) uint8 (the CAM in [0, 1] times 255).
    """
    run = load_run(run_dir)
    dataset = create_dataset(manifest, root, split, run.image_size, run.mean, run.std, run.preset or "generic", train=False)
    rows: dict[str, list] = {k: [] for k in ("paths", "labels", "probabilities", "images", "masks", "cams")}
    for index in range(len(dataset)):
        if len(rows["paths"]) >= n:
            break
        item = dataset[index]
        mask = item["mask"][0].numpy() > 0.5
        if not mask.any():
            continue
        explanation = explain_tensor(run, item["image"], mask, method=method, target=int(item["label"]))
        rows["paths"].append(str(item["path"]))  # the manifest's path, relative to the raw folder
        rows["labels"].append(int(item["label"]))
        rows["probabilities"].append(explanation.probabilities)
        rows["images"].append((np.clip(explanation.image, 0, 1) * 255).round().astype(np.uint8))
        rows["masks"].append(mask)
        rows["cams"].append(np.stack([(np.clip(s.cam, 0, 1) * 255).round().astype(np.uint8) for s in explanation.stages]))
    return {k: np.asarray(v) for k, v in rows.items()}


def plot_figure(cams: Mapping[str, Mapping[str, np.ndarray]], class_names: list[str], path: str | Path) -> Path:
    """One row per image: the image with its mask outline, then each backbone's four stage CAMs.

    Args:
        cams: ``{backbone: figure.npz contents}``; every backbone must show the same images.
        class_names: the dataset's classes (for the row titles).
        path: the PNG to write.
    """
    backbones = list(cams)
    first = cams[backbones[0]]
    for name in backbones[1:]:
        if list(cams[name]["paths"]) != list(first["paths"]):
            raise ValueError(f"figure: {name} shows other images than {backbones[0]}; re-score its CAMs")
    n = len(first["paths"])
    columns = 1 + 4 * len(backbones)
    figure = Figure(figsize=(1.3 * columns, 1.4 * n + 0.6))
    axes = figure.subplots(n, columns, squeeze=False)
    for i in range(n):
        image, mask = first["images"][i], first["masks"][i]
        axes[i, 0].imshow(image)
        axes[i, 0].contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
        axes[i, 0].set_title(class_names[int(first["labels"][i])], fontsize=7)
        for b, name in enumerate(backbones):
            for s in range(4):
                ax = axes[i, 1 + 4 * b + s]
                ax.imshow(image)
                ax.imshow(cams[name]["cams"][i, s], cmap="jet", alpha=0.45, vmin=0, vmax=255)
                ax.contour(mask, levels=[0.5], colors="white", linewidths=0.5)
                if i == 0:
                    ax.set_title(f"{name}\nstage {s + 1}" if s == 0 else f"stage {s + 1}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)  # 1 + 4 x backbones panels of 1.3 in: ~1,600 px wide for four backbones
    return path
