"""Prediction over a loader (gathered over DDP ranks) and the run's ``predictions*.csv`` files."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medvit.run_dir import atomic_write_text
from medvit.train.distributed import DistContext
from medvit.train.probabilities import calibrate_frame

__all__ = ["Predictions", "autocast", "predict", "write_predictions"]


@dataclass
class Predictions:
    """Dataset-ordered outputs of one evaluation pass (identical on every rank)."""

    indices: np.ndarray
    logits: np.ndarray
    labels: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits).double(), dim=1).numpy()


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere (CPU runs stay in fp32)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    ctx: DistContext,
    amp: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> Predictions:
    """Logits of every item of ``loader`` gathered from all ranks, padding dropped, in index order."""
    model.eval()
    indices, logits, labels = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images = batch["image"].to(ctx.device, non_blocking=True)
        with autocast(ctx.device, amp):
            out = model(images)
        logits.append(out.float())
        labels.append(torch.as_tensor(batch["label"]).long().to(ctx.device))
        indices.append(torch.as_tensor(batch["index"]).long().to(ctx.device))
    idx = torch.cat(indices)
    lg = torch.cat(logits)
    lb = torch.cat(labels)
    if ctx.is_distributed:
        # DistributedSampler pads every rank to the same length, so plain all_gather works.
        gathered = []
        for t in (idx, lg, lb):
            parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
            dist.all_gather(parts, t)
            gathered.append(torch.cat(parts))
        idx, lg, lb = gathered
    idx_np = idx.cpu().numpy()
    order = np.argsort(idx_np, kind="stable")
    _, first = np.unique(idx_np[order], return_index=True)  # drop the sampler's padded duplicates
    keep = order[first]
    return Predictions(idx_np[keep], lg.cpu().numpy()[keep], lb.cpu().numpy()[keep])


def write_predictions(
    path: Path,
    preds: Predictions,
    records: Sequence[dict],
    class_names: Sequence[str],
    root: str | Path,
    split: str,
    info: Mapping[str, Any] | None = None,
) -> None:
    """Write one row per image (path relative to ``root``, label, prediction, probabilities) atomically.

    With ``info`` (the run's ``model.json``) holding a ``calibration`` record, the probabilities are
    temperature-scaled and a ``prediction_set`` column is added
    (:func:`medvit.train.probabilities.calibrate_frame`); without one the file is as before.
    """
    probs = preds.probabilities
    predicted = probs.argmax(axis=1)
    root = Path(root)
    images = []
    for i in preds.indices:
        record = records[i]
        image = Path(str(record.get("path", record["image"])))
        with contextlib.suppress(ValueError):
            image = image.relative_to(root)
        images.append(image.as_posix())
    frame = pd.DataFrame(
        {
            "image": images,
            "split": split,
            "label": preds.labels,
            "label_name": [class_names[i] for i in preds.labels],
            "prediction": predicted,
            "prediction_name": [class_names[i] for i in predicted],
        }
    )
    for c, name in enumerate(class_names):
        frame[f"prob_{name}"] = probs[:, c]
    if info and info.get("calibration"):
        frame = calibrate_frame(frame, class_names, info)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.8g")
    atomic_write_text(path, buffer.getvalue())
