"""A run killed at any moment continues with ``--resume``; frozen layers stay frozen (BN included)."""

import json
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import medvit.train.engine as engine
import medvit.train.loop as loop  # the shared loop commits each epoch
from medvit.train import load_config, train
from medvit.run_dir import TIMING_COLUMNS

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """Stands for SIGKILL at a chosen point (BaseException: no handler of the engine catches it)."""


@pytest.fixture(scope="module")
def busi(tiny_train_config) -> Callable[..., dict]:
    """``busi(**overrides)``: the conftest tiny-VVT config on synthetic BUSI."""
    return tiny_train_config


def _cfg(busi: Callable[..., dict], **overrides):
    """Two epochs, label smoothing at the engine's default 0.1, 20 bootstrap resamples."""
    cfg = busi(**{"epochs": 2, "label_smoothing": 0.1, "n_bootstrap": 20, **overrides})
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in cfg.items()])


@pytest.fixture(scope="module")
def reference(busi, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    train(_cfg(busi), out)
    return out


def _assert_same_run(run: Path, reference: Path) -> None:
    metrics = pd.read_csv(run / "metrics.csv").drop(columns=list(TIMING_COLUMNS), errors="ignore")
    pd.testing.assert_frame_equal(metrics, pd.read_csv(reference / "metrics.csv").drop(columns=list(TIMING_COLUMNS), errors="ignore"), atol=1e-6, rtol=0)
    for name in ("best.safetensors", "last.safetensors"):
        a, b = load_file(run / name), load_file(reference / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(
        pd.read_csv(run / "predictions.csv"), pd.read_csv(reference / "predictions.csv"), atol=1e-6, rtol=0
    )


def _killed_in_first_epoch(busi: Callable[..., dict], run: Path, monkeypatch) -> None:
    """Train into ``run`` and stand for a kill during epoch 1, before its checkpoint commit."""

    def killed(self, epoch):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(engine._Trainer, "_validate", killed)
        with pytest.raises(Killed):
            train(_cfg(busi), run)


def test_killed_in_epoch_1_resumes_from_epoch_0(busi, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _killed_in_first_epoch(busi, run, monkeypatch)
    assert {p.name for p in run.iterdir()} == {"config.yaml", "model.json", "train.log"}
    (run / ".metrics.csv.abc123.tmp").write_bytes(b"")  # a write the kill interrupted

    train(None, run, resume=True)
    assert "no completed epoch to resume; starting from epoch 1" in (run / "train.log").read_text()
    assert not list(run.glob(".*.tmp"))
    _assert_same_run(run, reference)


def test_killed_in_epoch_1_can_start_again_without_resume(busi, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _killed_in_first_epoch(busi, run, monkeypatch)
    train(_cfg(busi), run)
    _assert_same_run(run, reference)
    with pytest.raises(ValueError, match="already holds a run; continue it with --resume"):
        train(_cfg(busi), run)


def test_unreadable_state_is_kept_aside_and_the_run_restarts(busi, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _killed_in_first_epoch(busi, run, monkeypatch)
    (run / "last_state.pt").write_bytes(b"\x00 truncated")
    train(None, run, resume=True)
    assert (run / "last_state.pt.unusable").read_bytes() == b"\x00 truncated"  # kept, not deleted
    _assert_same_run(run, reference)


def test_fault_right_after_the_last_commit_keeps_every_metrics_row(busi, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_commit = loop.commit_checkpoint

    def commit_then_die(out, model, state):
        real_commit(out, model, state)
        if state["finished"]:
            raise Killed  # before metrics.csv is rewritten with the last row

    with monkeypatch.context() as patch:
        patch.setattr(loop, "commit_checkpoint", commit_then_die)
        with pytest.raises(Killed):
            train(_cfg(busi), run)
    assert len(pd.read_csv(run / "metrics.csv")) == 1  # the window the kill hit
    train(None, run, resume=True)
    assert "already finished; re-running the final evaluation only" in (run / "train.log").read_text()
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    _assert_same_run(run, reference)


def test_fresh_start_refuses_a_folder_with_results(busi, tmp_path):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "predictions.csv").write_text("image\n")
    with pytest.raises(ValueError, match="holds results of a run \\(predictions.csv\\)"):
        train(_cfg(busi), out)


@pytest.mark.parametrize("mode", ["linear", "freeze_stages:2"])
def test_frozen_parameters_and_batchnorm_statistics_stay_pretrained(busi, tmp_path, mode):
    from medvit.models import create_model
    from medvit.train.freeze import apply_mode, frozen_roots

    run = tmp_path / "run"
    train(_cfg(busi, model="tf_efficientnet_lite0", model_kwargs={}, pretrained=True, image_size=64, epochs=1,
               mode=mode, report=False), run)
    pretrained = create_model("tf_efficientnet_lite0", num_classes=3, pretrained=True)
    frozen_params = set(apply_mode(pretrained, mode))
    initial = pretrained.state_dict()
    module_names = {id(m): n for n, m in pretrained.named_modules()}
    frozen_prefixes = [module_names[id(m)] for m in frozen_roots(pretrained)]
    frozen_buffers = {
        name for name, _ in pretrained.named_buffers()
        if any(name.startswith(prefix + ".") or prefix == "" for prefix in frozen_prefixes)
    }
    assert frozen_buffers and any("running_mean" in name for name in frozen_buffers)
    trained = load_file(run / "last.safetensors")
    for name in frozen_params | frozen_buffers:
        assert torch.equal(trained[name], initial[name]), f"{name} changed although frozen ({mode})"
    trainable = [n for n, p in pretrained.named_parameters() if n not in frozen_params]
    assert trainable and all(n.startswith("classifier") for n in trainable) == (mode == "linear")
    assert any(not torch.equal(trained[n], initial[n]) for n in trainable)
    if mode == "freeze_stages:2":  # BN layers of the trainable stages do update their statistics
        later_stats = [n for n in initial if n.endswith("running_mean") and n not in frozen_buffers]
        assert later_stats and any(not torch.equal(trained[n], initial[n]) for n in later_stats)
