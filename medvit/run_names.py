"""The file names of a run directory, in one place (the bottom layer: every package may import it).

:mod:`medvit.run_dir` re-exports them with the readers and writers of those files; code below it
(:mod:`medvit.models.pretrained` reads a pretrain run's ``model.json``) imports them from here.
"""

from __future__ import annotations

__all__ = [
    "BEST_WEIGHTS",
    "CONFIG_YAML",
    "FOLDS_CSV",
    "LAST_STATE",
    "LAST_WEIGHTS",
    "METRICS_CSV",
    "MODEL_JSON",
    "OOF_SPLIT",
    "PREDICTIONS_CSV",
    "PRETRAIN_WEIGHTS",
    "REPORT_DIR",
    "SELECTION_JSON",
    "TRAIN_LOG",
]

MODEL_JSON = "model.json"
"""What the run is: model name and kwargs, class names, image size, normalisation, data, calibration."""
CONFIG_YAML = "config.yaml"
BEST_WEIGHTS = "best.safetensors"
LAST_WEIGHTS = "last.safetensors"
LAST_STATE = "last_state.pt"
METRICS_CSV = "metrics.csv"
PREDICTIONS_CSV = "predictions.csv"
TRAIN_LOG = "train.log"
SELECTION_JSON = "selection.json"
REPORT_DIR = "report"
PRETRAIN_WEIGHTS = "backbone.safetensors"
"""The distilled backbone of a ``medvit pretrain`` run (no adapters, no classifier)."""
OOF_SPLIT = "oof"
"""The out-of-fold predictions of a cross-validated run: ``predictions_oof.csv``, every train+val image once."""
FOLDS_CSV = "folds.csv"
"""A cross-validated run's fold assignment: ``image, label, group, split, fold`` of every train+val row."""
