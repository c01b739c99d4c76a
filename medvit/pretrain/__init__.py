"""``medvit pretrain``: stage-wise distillation from a bundled ImageNet teacher on unlabeled images.

:func:`pretrain` writes a run directory whose ``backbone.safetensors`` starts any fine-tuning run
(``pretrained: RUN_DIR``); see ``docs/pretraining.md``.
"""

from medvit.pretrain.config import PretrainConfig, load_pretrain_config, pretrain_config_from_dict
from medvit.pretrain.engine import PretrainResult, pretrain

__all__ = ["PretrainConfig", "PretrainResult", "load_pretrain_config", "pretrain", "pretrain_config_from_dict"]
