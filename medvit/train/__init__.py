"""The fine-tuning engine: configuration, training loop (single process or DDP), distillation."""

from medvit.train.config import DistillConfig, EarlyStoppingConfig, TrainConfig, load_config
from medvit.train.engine import TrainResult, evaluate_run, train

__all__ = [
    "DistillConfig",
    "EarlyStoppingConfig",
    "TrainConfig",
    "TrainResult",
    "evaluate_run",
    "load_config",
    "train",
]
