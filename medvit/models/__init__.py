"""The model zoo: pyramid backbones (ours and timm's), their stages, and pretrained weights.

Importing this package registers our families in timm (``acc_vit_*``, ``vvt_*``), so
``timm.create_model("vvt_tiny", features_only=True)`` works once ``medvit.models`` is imported.
"""

from medvit.models import acc_vit, vvt  # noqa: F401  (register acc_vit_* and vvt_* in timm)
from medvit.models.checkpoints import load_pretrained, sha256_file
from medvit.models.layout import StageInfo, pyramid_stages, stage_modules, to_nchw
from medvit.models.registry import ModelInfo, create_model, get_model_info, list_models, sized_model_kwargs

__all__ = [
    "ModelInfo",
    "StageInfo",
    "create_model",
    "get_model_info",
    "list_models",
    "sized_model_kwargs",
    "load_pretrained",
    "pyramid_stages",
    "sha256_file",
    "stage_modules",
    "to_nchw",
]
