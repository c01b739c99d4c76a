"""The training engine on synthetic BUSI data with a tiny VVT: run directory, modes, resume, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medvit.run_dir import export_run, load_run
from medvit.train import load_config, train
from medvit.train.engine import NonFiniteLossError, evaluate_run
from medvit.workflows import train_run
from medvit.run_dir import TIMING_COLUMNS

RUN_FILES = (
    "config.yaml", "model.json", "metrics.csv", "best.safetensors", "last.safetensors", "last_state.pt",
    "predictions.csv", "train.log",
)
REPORT_FILES = ("per_class.csv", "per_class.md", "summary.json", "confusion.png", "roc.png", "index.md")
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # bitwise comparable with the one-thread subprocesses


@pytest.fixture(scope="module")
def busi(tiny_train_config) -> Callable[..., dict]:
    """``busi(**overrides)``: the conftest one-epoch tiny-VVT config on synthetic BUSI (24 train, 6 val, 6 test)."""
    return tiny_train_config


def _overrides(cfg: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in cfg.items()]


def _train(busi: Callable[..., dict], out: Path, **overrides):
    """``medvit train``'s workflow: train, calibrate on validation, report."""
    cfg = load_config(None, _overrides(busi(**overrides)))
    return train_run(cfg, out)


def _metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns=list(TIMING_COLUMNS), errors="ignore")


def test_smoke_run_writes_every_file_and_loads(busi, tmp_path):
    run = tmp_path / "run"
    result = _train(busi, run)
    assert result.epochs_run == 1
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    for name in REPORT_FILES:
        assert (run / "report" / name).is_file(), name
    assert not list(run.glob(".*")), "no temporary files left behind"

    info = json.loads((run / "model.json").read_text())
    assert info["class_names"] == ["benign", "malignant", "normal"]
    assert info["dataset"] == "busi" and info["preset"] == "ultrasound"
    assert len(info["manifest_hash"]) == 64 and info["image_size"] == [32, 32]
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1]
    assert {"train_loss", "val_loss", "val_balanced_accuracy", "lr"} <= set(metrics.columns)
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == 6 and (preds["split"] == "test").all()
    probs = preds[["prob_benign", "prob_malignant", "prob_normal"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert (probs.argmax(1) == preds["prediction"]).all()
    state = torch.load(run / "last_state.pt", weights_only=True)
    assert state["epoch"] == 0 and state["finished"]
    assert "epoch 1/1" in (run / "train.log").read_text()
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["n"] == 6 and summary["n_bootstrap"] == 100

    loaded = load_run(run)
    assert not loaded.model.training and loaded.class_names == info["class_names"]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = loaded.model(images)
    # evaluate reproduces the training run's predictions
    out = evaluate_run(run, device="cpu", out=tmp_path / "again.csv")
    again = pd.read_csv(out)
    np.testing.assert_allclose(again[["prob_benign", "prob_malignant", "prob_normal"]].to_numpy(), probs, atol=1e-6)
    # fp16 export loads back (cast to fp32) and predicts almost the same
    exported = export_run(run, tmp_path / "export")
    assert all(t.dtype == torch.float16 for t in load_file(exported / "best.safetensors").values() if t.is_floating_point())
    assert (exported / "report" / "per_class.md").is_file() and not (exported / "last_state.pt").exists()
    with torch.no_grad():
        half = load_run(exported).model(images)
    torch.testing.assert_close(half, reference, atol=2e-2, rtol=0)

    with pytest.raises(ValueError, match="already holds a run"):
        _train(busi, run)


def test_linear_probe_keeps_backbone_bitwise(busi, tiny_vvt_kwargs, tmp_path):
    from medvit.models import create_model

    run = tmp_path / "linear"
    _train(busi, run, mode="linear", seed=3)
    torch.manual_seed(3)
    initial = create_model("vvt_tiny", num_classes=3, **tiny_vvt_kwargs).state_dict()
    trained = load_file(run / "last.safetensors")
    head = [k for k in trained if k.startswith("head")]
    assert head
    for name, tensor in trained.items():
        if name in head:
            continue
        assert torch.equal(tensor, initial[name]), f"{name} changed in a linear probe"
    assert any(not torch.equal(trained[k], initial[k]) for k in head if trained[k].is_floating_point())


def test_config_typo_and_range_are_clear_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: vvt_tiny\nepoch: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key 'epoch' \(did you mean 'epochs'\?\)"):
        load_config(path)
    with pytest.raises(ValueError, match=r"'early_stopping.patiense'"):
        load_config(None, ["early_stopping.patiense=3"])
    with pytest.raises(ValueError, match=r"config key 'distill.alpha': 1.5 is out of range; allowed: \[0.0, 1.0\]"):
        load_config(None, ["distill.alpha=1.5"])
    with pytest.raises(ValueError, match="config key 'mode'"):
        load_config(None, ["mode=freeze_stages:7"])
    cfg = load_config(None, ["image_size=64", "early_stopping.metric=val_loss", "mode=freeze_stages:2"])
    assert cfg.image_size == [64, 64] and cfg.early_stopping.mode == "min" and cfg.freeze_stages == 2


def test_config_pretrained_takes_bundled_weights_or_a_file(tmp_path):
    from medvit.models.checkpoints import sha256_file
    from medvit.models.efficientnet_lite import bundled_weights_path
    from medvit.train.run_files import _pretrained_record

    bundled = load_config(None, ["model=tf_efficientnet_lite0", "pretrained=true"])
    assert bundled.pretrained is True
    record = _pretrained_record(bundled)  # portable: a name, not the site-packages path
    assert record["pretrained"] == "bundled:tf_efficientnet_lite0"
    assert record["pretrained_sha256"] == sha256_file(bundled_weights_path("tf_efficientnet_lite0"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    assert _pretrained_record(load_config(None, [f"pretrained={weights}"]))["pretrained"] == str(weights)
    scratch = _pretrained_record(load_config(None, ["pretrained=null"]))
    assert scratch["pretrained"] is None and scratch["pretrained_sha256"] is None
    with pytest.raises(ValueError, match="config key 'pretrained': expected true/false or a file path"):
        load_config(None, ["pretrained=3"])


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(busi, tmp_path, monkeypatch):
    import medvit.train.engine as engine

    calls = {"n": 0}
    real = engine.nn.CrossEntropyLoss

    class PoisonedLoss(real):
        def forward(self, logits, labels):
            calls["n"] += 1
            loss = super().forward(logits, labels)
            return loss * float("nan") if calls["n"] > 4 else loss  # 3 train steps + 1 val per epoch

    monkeypatch.setattr(engine.nn, "CrossEntropyLoss", PoisonedLoss)
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="non-finite training loss at epoch 2"):
        _train(busi, run, epochs=3)
    state = torch.load(run / "last_state.pt", weights_only=True)
    assert state["epoch"] == 0 and len(pd.read_csv(run / "metrics.csv")) == 1
    assert all(torch.isfinite(t).all() for t in load_file(run / "last.safetensors").values() if t.is_floating_point())


def test_early_stopping_and_freeze_stages(busi, tmp_path):
    run = tmp_path / "early"
    result = _train(busi, run, epochs=5, lr=0.0, mode="freeze_stages:2", early_stopping={"metric": "val_loss", "patience": 1})
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1


def test_distillation_from_a_run(busi, tmp_path):
    from medvit.train.distill import DistillationLoss, load_teacher

    teacher = tmp_path / "teacher"
    _train(busi, teacher, report=False)
    loaded = load_teacher(teacher, ["benign", "malignant", "normal"], torch.device("cpu"))
    ce = torch.nn.CrossEntropyLoss()
    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        teacher_logits = loaded.model(images)
    kd = DistillationLoss(ce, loaded, temperature=2.0, alpha=1.0, student_mean=loaded.mean, student_std=loaded.std)
    assert kd(images, teacher_logits, labels).item() == pytest.approx(0.0, abs=1e-6)  # student == teacher
    plain = DistillationLoss(ce, loaded, temperature=2.0, alpha=0.0, student_mean=loaded.mean, student_std=loaded.std)
    logits = torch.randn(4, 3)
    assert plain(images, logits, labels).item() == pytest.approx(ce(logits, labels).item())
    with pytest.raises(ValueError, match="differ from the student's"):
        load_teacher(teacher, ["x", "y", "z"], torch.device("cpu"))

    student = tmp_path / "student"
    _train(busi, student, report=False, distill={"teacher": str(teacher), "temperature": 2.0, "alpha": 0.5})
    assert (student / "best.safetensors").is_file()
    info = json.loads((student / "model.json").read_text())
    from medvit.hashing import sha256_file

    assert info["distill_teacher_sha256"] == sha256_file(teacher / "best.safetensors")  # holds if the teacher is retrained


def _subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return env


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(busi, tmp_path):
    cfg = busi(epochs=4, batch_size=2, n_bootstrap=50)
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    killed = tmp_path / "killed"
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from medvit.train import load_config, train\n"
        "train(load_config(sys.argv[1]), sys.argv[2])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(config_path), str(killed)], env=_subprocess_env())
    try:
        deadline = time.monotonic() + 240
        while not (killed / "metrics.csv").is_file():  # epoch 1 committed: now inside epoch 2
            assert proc.poll() is None, "training subprocess died"
            assert time.monotonic() < deadline, "training subprocess too slow"
            time.sleep(0.01)
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    state = torch.load(killed / "last_state.pt", weights_only=True)
    assert not state["finished"], "the run finished before it could be killed"

    train(None, killed, resume=True)
    reference = tmp_path / "reference"
    train(load_config(config_path), reference)

    pd.testing.assert_frame_equal(_metrics(killed), _metrics(reference), atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(
        pd.read_csv(killed / "predictions.csv"), pd.read_csv(reference / "predictions.csv"), atol=1e-6, rtol=0
    )


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(busi, tmp_path):
    # 24 train images, global batch 8: DDP (2 x 4) sees the same global batches as one process
    # (EpochSampler), gradients are averaged, and evaluation gathers all ranks' logits.
    cfg = busi(epochs=2, batch_size=8, n_bootstrap=50, report=False)
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    ddp = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medvit.cli", "train", "--config", str(config_path), "--out", str(ddp),
    ]
    done = subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    single = tmp_path / "single"
    train_run(load_config(config_path), single)  # medvit train's workflow, as the DDP command ran it

    a, b = _metrics(ddp), _metrics(single)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, atol=1e-4, rtol=0)
    pa, pb = pd.read_csv(ddp / "predictions.csv"), pd.read_csv(single / "predictions.csv")
    assert list(pa["image"]) == list(pb["image"])  # padding dropped, dataset order restored
    prob_columns = [c for c in pa.columns if c.startswith("prob_")]
    np.testing.assert_allclose(pa[prob_columns].to_numpy(), pb[prob_columns].to_numpy(), atol=1e-4)


def test_run_grid_skips_finished_runs_and_compares(busi, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_grid", REPO / "experiments" / "run_grid.py")
    run_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_grid)
    configs = []
    for name, seed in (("busi_a", 0), ("busi_b", 1)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(busi(seed=seed, n_bootstrap=20)))
        configs.append(path)
    grid = tmp_path / "grid"
    tables = run_grid.run_grid(configs, grid)
    table = tables["busi"].read_text()
    assert "vvt_tiny (busi_a)" in table and "vvt_tiny (busi_b)" in table
    assert run_grid.run_state(grid / "busi_a") == "finished"
    stamp = (grid / "busi_a" / "best.safetensors").stat().st_mtime_ns
    run_grid.run_grid(configs, grid)  # finished runs are skipped, not retrained
    assert (grid / "busi_a" / "best.safetensors").stat().st_mtime_ns == stamp


def test_class_weights_and_balanced_epoch_sampler():
    from medvit.train.engine import class_weights
    from medvit.train.sampling import EpochSampler

    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    inverse = class_weights(labels, 3, "inverse")
    np.testing.assert_allclose(inverse.numpy() / inverse[0].item(), [1, 80 / 15, 16], rtol=1e-6)
    effective = class_weights(labels, 3, "effective", beta=0.9)
    assert effective.mean().item() == pytest.approx(1.0) and effective[2] > effective[1] > effective[0]
    assert class_weights(labels, 3, "none") is None
    with pytest.raises(ValueError, match="no training images"):
        class_weights(labels, 4, "inverse")

    weights = torch.tensor(1.0 / np.bincount(labels)[labels])
    single = EpochSampler(range(100), seed=1, weights=weights)
    single.set_epoch(3)
    drawn = np.bincount(labels[list(single)], minlength=3)
    assert drawn.min() > 15  # ~33 each instead of 80/15/5
    shards = []
    for rank in range(2):
        s = EpochSampler(range(100), num_replicas=2, rank=rank, seed=1, weights=weights)
        s.set_epoch(3)
        shards.append(list(s))
    interleaved = [i for pair in zip(*shards) for i in pair]
    assert interleaved == list(single)  # same global order for 1 or 2 processes
    s.set_epoch(4)
    assert list(s) != shards[1]  # a new order every epoch


def test_layer_decay_scales_learning_rates(tiny_vvt_kwargs):
    from timm.optim import create_optimizer_v2

    from medvit.models import create_model

    model = create_model("vvt_tiny", num_classes=3, **tiny_vvt_kwargs)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in optimizer.param_groups})
    assert len(scales) > 2 and scales[-1] == 1.0 and scales[0] < 0.1


def test_load_run_errors_name_the_file(tiny_vvt_kwargs, tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory .* not found"):
        load_run(tmp_path / "missing")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="model.json not found"):
        load_run(run)
    (run / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json: not valid JSON"):
        load_run(run)
    info = {"model": "vvt_tiny", "model_kwargs": tiny_vvt_kwargs, "class_names": ["a", "b"], "image_size": [32, 32],
            "mean": [0.5] * 3, "std": [0.5] * 3}
    (run / "model.json").write_text(json.dumps(info))
    with pytest.raises(FileNotFoundError, match="best.safetensors not found"):
        load_run(run)
    (run / "best.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="best.safetensors: not a readable safetensors file"):
        load_run(run)
