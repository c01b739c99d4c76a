"""Precision (bf16 autocast) and ``torch.compile`` of the training step, in ``train`` and ``pretrain``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from medvit.models import create_model
from medvit.train import acceleration, train
from medvit.train.acceleration import TrainStep, inference_amp, resolve_precision
from medvit.train.config import config_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("requested", "device", "amx", "expected"),
    [
        ("auto", "cpu", False, "fp32"),  # AVX-512-BF16 without AMX: bf16 measured slower (docs/benchmarks.md)
        ("auto", "cpu", True, "bf16"),
        ("auto", "cuda", False, "bf16"),
        ("fp32", "cuda", True, "fp32"),
        ("bf16", "cpu", False, "bf16"),
    ],
)
def test_resolve_precision(monkeypatch, requested, device, amx, expected):
    monkeypatch.setattr(acceleration, "bf16_pays_on_cpu", lambda: amx)
    assert resolve_precision(requested, torch.device(device)) == expected


def test_resolve_precision_names_the_allowed_values():
    with pytest.raises(ValueError, match="'precision'.*fp16.*auto, fp32, bf16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_cpu_evaluation_stays_fp32():
    assert not inference_amp(torch.device("cpu"), "bf16")
    assert inference_amp(torch.device("cuda"), "bf16")


def _one_step(model: torch.nn.Module, state: dict, images, labels, precision: str) -> tuple[float, torch.Tensor]:
    """Loss and flattened parameter gradients of one step from ``state``."""
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same drop-path draws in both precisions
    loss = TrainStep(model, torch.device("cpu"), precision, compile=False)(lambda net: F.cross_entropy(net(images), labels))
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert grads.dtype == torch.float32  # parameters and gradients stay fp32 (autocast casts per op)
    return float(loss.detach()), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["vvt_tiny", "acc_vit_nano"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bf16_step_matches_fp32(name, mode, tiny_vvt_kwargs):
    """One bf16 step's loss and gradients agree with fp32 within what bf16's 8-bit mantissa implies.

    bf16 rounds every matmul/conv input to 2^-8 relative (0.4%), which keeps the loss within 2%. The
    gradients of an untrained network are far more sensitive than its loss: merely rounding the weights
    and images to bf16 and stepping in fp32 moves the tiny VVT's gradient by ~30% and, in train mode
    (BatchNorm statistics over a batch of 8), acc_vit_nano's by ~60%, while acc_vit_nano in eval mode
    moves <1%. So the justified bound is relative to that least perturbation bf16 implies: bf16's
    gradient error is at most twice the error of rounding the inputs alone (and 5% when that is tiny).
    """
    torch.manual_seed(0)
    kwargs = tiny_vvt_kwargs if name == "vvt_tiny" else {"img_size": 64}
    model = getattr(create_model(name, num_classes=3, **kwargs), mode)()
    images, labels = torch.randn(8, 3, 64, 64), torch.tensor([0, 1, 2, 1, 0, 1, 2, 0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rounded = {k: v.bfloat16().float() if v.is_floating_point() else v for k, v in state.items()}
    loss32, grads32 = _one_step(model, state, images, labels, "fp32")
    loss16, grads16 = _one_step(model, state, images, labels, "bf16")
    _, grads_rounded = _one_step(model, rounded, images.bfloat16().float(), labels, "fp32")
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32)
    assert _relative(grads16, grads32) <= max(2 * _relative(grads_rounded, grads32), 0.05)


def test_bf16_run_records_precision(tiny_train_config, tmp_path):
    run = tmp_path / "run"
    result = train(config_from_dict(tiny_train_config(precision="bf16")), run)
    assert result.epochs_run == 1
    card = json.loads((run / "model.json").read_text())
    assert card["precision"] == "bf16" and card["compile"] is False
    assert "training step: bf16 on cpu" in (run / "train.log").read_text()
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["train_loss"].notna().all() and (metrics["compiled"] == 0).all()


def test_compile_failure_falls_back_to_eager(monkeypatch, tiny_train_config, tmp_path):
    """A compiler that fails on the first step: the step is redone eagerly and the run finishes."""

    def broken_compile(module, **_):
        def fails(*args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler found\nlong trace")
        return fails

    monkeypatch.setattr(acceleration.torch, "compile", broken_compile)
    run = tmp_path / "run"
    result = train(config_from_dict(tiny_train_config(compile=True, epochs=2)), run)
    assert result.epochs_run == 2
    log = (run / "train.log").read_text()
    assert "torch.compile failed (RuntimeError: inductor: no C++ compiler found); continuing eagerly" in log
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["compiled"]) == [0.0, 0.0]
    assert json.loads((run / "model.json").read_text())["compile"] is True  # what was asked; the log says what ran


def test_fallback_redoes_the_step_from_clean_gradients():
    """Gradients a failed compiled backward left behind are cleared before the eager redo."""
    model = torch.nn.Linear(3, 2)
    step = TrainStep(model, torch.device("cpu"), "fp32", compile=False)
    calls = []

    def half_done(*args, **kwargs):  # a compiled forward that leaves garbage gradients, then fails
        for p in model.parameters():
            p.grad = torch.full_like(p, 99.0)
        calls.append("compiled")
        raise RuntimeError("backend failed")

    step._compiled_module = half_done
    x = torch.randn(5, 3)
    loss = step(lambda net: net(x).square().mean())
    expected = torch.autograd.grad(model(x).square().mean(), list(model.parameters()))
    assert calls == ["compiled"] and not step.compiled and step.fallback_reason == "RuntimeError: backend failed"
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
    with torch.no_grad():
        assert float(loss.detach()) == pytest.approx(float(model(x).square().mean()))


@pytest.mark.slow
def test_compiled_run_saves_uncompiled_weights(tiny_train_config, tmp_path):
    """A compiled run trains, reports its compile time, and its checkpoints load into a plain model."""
    run = tmp_path / "run"
    result = train(config_from_dict(tiny_train_config(compile=True, epochs=2)), run)
    assert result.epochs_run == 2
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["compiled"]) == [1.0, 1.0]
    assert metrics["compile_s"].iloc[0] > 0 and metrics["compile_s"].iloc[1] == 0
    for name in ("best.safetensors", "last.safetensors"):
        weights = load_file(run / name)
        assert not any(key.startswith("_orig_mod.") for key in weights), name
    card = json.loads((run / "model.json").read_text())
    model = create_model(card["model"], num_classes=3, **card["model_kwargs"])
    model.load_state_dict(load_file(run / "best.safetensors"))


@pytest.mark.parametrize("precision", ["bf16"])
def test_pretrain_precision_and_fallback(monkeypatch, synthetic_busi, tiny_vvt_kwargs, tmp_path, precision):
    from medvit.pretrain import pretrain, pretrain_config_from_dict

    def broken_compile(module, **_):
        def fails(*args, **kwargs):
            raise RuntimeError("inductor failed")
        return fails

    monkeypatch.setattr(acceleration.torch, "compile", broken_compile)
    cfg = {
        "student": "vvt_tiny", "student_kwargs": tiny_vvt_kwargs, "teacher": "tf_efficientnet_lite0",
        "data": [dict(synthetic_busi)], "image_size": 64, "epochs": 1, "batch_size": 4, "lr": 3e-3,
        "warmup_epochs": 0, "device": "cpu", "precision": precision, "compile": True,
    }
    out = tmp_path / "pretrain"
    result = pretrain(pretrain_config_from_dict(cfg), out)
    assert len(result.history) == 1
    card = json.loads((out / "model.json").read_text())
    assert card["precision"] == precision and card["compile"] is True
    assert pd.read_csv(out / "metrics.csv")["compiled"].tolist() == [0.0]
    assert not any(key.startswith("_orig_mod.") for key in load_file(out / "backbone.safetensors")) and not any(key.startswith("_orig_mod.") for key in load_file(out / "last.safetensors"))
