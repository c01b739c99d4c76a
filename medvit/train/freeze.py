"""Freezing for linear probes and ``freeze_stages:N``: frozen parameters AND frozen statistics.

``requires_grad=False`` alone is not a frozen layer: ``model.train()`` puts a frozen BatchNorm
back into training mode, its running statistics drift with every batch, and the head learns on
batch-statistics features that evaluation (running statistics) never produces. The frozen parts
found here are therefore kept in eval mode for the whole run (:func:`set_train_mode`), which also
silences dropout and drop-path inside them.

timm's ``timm.utils.model.freeze`` / ``freeze_batch_norm_2d`` reach the same statistics freeze by
swapping every BatchNorm for ``FrozenBatchNorm2d``. That changes the module classes and drops the
``num_batches_tracked`` buffers, so the run's weights would no longer load (strictly) into the plain
architecture that :func:`medvit.run_dir.load_run` builds, and it leaves LayerNorm models' dropout
and drop-path active. Pinning eval mode keeps the architecture and the state-dict keys unchanged.
"""

from __future__ import annotations

from torch import nn

from medvit.models import stage_modules

__all__ = ["apply_mode", "frozen_roots", "set_train_mode"]


def apply_mode(model: nn.Module, mode: str) -> list[str]:
    """Freeze parameters for a linear probe or ``freeze_stages:N``; returns the frozen names.

    ``linear`` trains only ``model.get_classifier()``. ``freeze_stages:N`` freezes the first N
    pyramid stages (``medvit.models.stage_modules``) and everything registered before the first
    stage (the stem / patch embedding). ``full`` freezes nothing.
    """
    if mode == "full":
        return []
    if mode == "linear":
        head = model.get_classifier()
        trainable = {id(p) for p in head.parameters()}
        if not trainable:
            raise ValueError(f"{type(model).__name__}.get_classifier() has no parameters; cannot train a linear probe")
    else:
        n = int(mode.split(":")[1])
        stages = stage_modules(model)
        frozen_stages = {id(p) for s in stages[:n] for p in s.parameters()}
        later = {id(p) for s in stages[n:] for p in s.parameters()}
        first_stage = {id(p) for p in stages[0].parameters()}
        before_first_stage = set()
        for _, p in model.named_parameters():
            if id(p) in first_stage:
                break
            before_first_stage.add(id(p))
        frozen = (frozen_stages | before_first_stage) - later
        trainable = {id(p) for p in model.parameters()} - frozen
    frozen_names = []
    for name, p in model.named_parameters():
        if id(p) not in trainable:
            p.requires_grad_(False)
            frozen_names.append(name)
    return frozen_names


def _all_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def frozen_roots(model: nn.Module) -> list[nn.Module]:
    """The largest submodules whose parameters are all frozen (each at least one parameter).

    Setting these to eval mode covers every norm layer, dropout and drop-path inside a frozen
    part; parameter-free modules outside them (pooling, activations) are left alone.
    """
    if _all_frozen(model):
        return [model]
    roots: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if _all_frozen(child):
                roots.append(child)
            else:
                visit(child)

    visit(model)
    return roots


def set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> nn.Module:
    """``model.train()``, then the ``frozen`` parts (see :func:`frozen_roots`) back to eval mode."""
    model.train()
    for module in frozen:
        module.eval()
    return model
