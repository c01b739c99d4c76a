"""demo-export stores small weights, measures them as stored, keeps paths portable; defaults chosen on validation."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from medvit.demo.export import export_demo_model, mark_defaults, portable_config
from medvit.run_dir import load_run


def test_portable_config_makes_absolute_paths_relative(tmp_path):
    config = {"root": str(tmp_path / "data"), "manifest": "data_manifests/x.csv", "lr": 1e-3,
              "distill": {"teacher": str(tmp_path / "teacher"), "alpha": 0.5}, "pretrained": True}
    portable = portable_config(config, base=tmp_path / "repo")
    assert portable["root"] == os.path.join("..", "data") and portable["manifest"] == "data_manifests/x.csv"
    assert portable["distill"] == {"teacher": os.path.join("..", "teacher"), "alpha": 0.5}
    assert portable["pretrained"] is True and portable["lr"] == 1e-3


def test_int8_export_is_remeasured_as_stored_and_defaults_follow_validation(tiny_run, tmp_path):
    embedded = tmp_path / "demo_models"
    selection = export_demo_model([tiny_run], embedded / "busi_a", metric="balanced_accuracy")
    out = embedded / "busi_a"
    assert selection["storage"] == "int8"
    # the tiny test model's kernels are all under MIN_INT8_VALUES, so stored fp16 (half the bytes); a full-size
    # lite0 stores in about a quarter (test_storage.py)
    assert (out / "best.safetensors").stat().st_size < 0.55 * (tiny_run / "best.safetensors").stat().st_size
    assert not os.path.isabs(yaml.safe_load((out / "config.yaml").read_text())["root"])
    info = json.loads((out / "model.json").read_text())
    assert "calibration" in info and info["calibration"]["temperature"] > 0

    # predictions.csv is what the stored (int8) weights predict, not a copy of the float run's file
    run = load_run(out)
    frame = pd.read_csv(out / "predictions_val.csv")
    assert len(frame) == 6 and (out / "report" / "summary.json").is_file()
    original = pd.read_csv(tiny_run / "predictions_val.csv")
    assert list(frame["image"]) == list(original["image"])
    assert not np.array_equal(frame.filter(like="prob_").to_numpy(), original.filter(like="prob_").to_numpy())
    assert run.model_name == "vvt_tiny"

    # a second model of the same dataset with worse validation predictions is not the default
    shutil.copytree(out, embedded / "busi_b")
    worse = pd.read_csv(embedded / "busi_b" / "predictions_val.csv")
    probs = np.zeros((len(worse), 3))
    probs[:, 0] = 1.0  # always "benign": balanced accuracy 1/3
    for c, name in enumerate(("benign", "malignant", "normal")):
        worse[f"prob_{name}"] = probs[:, c]
    worse.to_csv(embedded / "busi_b" / "predictions_val.csv", index=False)
    chosen = mark_defaults(embedded)
    score_a = json.loads((out / "selection.json").read_text())["default_score"]
    if score_a > 1 / 3:
        assert chosen == {"busi": "busi_a"}
    assert json.loads((embedded / "busi_b" / "selection.json").read_text())["default_score"] == pytest.approx(1 / 3)
    assert sum(json.loads((embedded / d / "selection.json").read_text())["default"] for d in ("busi_a", "busi_b")) == 1


def test_model_card_says_which_family(tiny_run):
    from medvit.demo import load_model_card, model_family

    assert load_model_card(tiny_run).family == "pyramid vision transformer (VVT, linear vicinity attention)"
    assert model_family("tf_efficientnet_lite0") == "CNN (EfficientNet-Lite)"
    assert model_family("acc_vit_nano").startswith("pyramid vision transformer (ACC-ViT")
    assert model_family("not_a_model") == ""


def test_pretrain_runs_are_not_offered_as_models_on_the_page(tiny_run, tmp_path):
    from medvit.demo import discover_runs

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run, runs / "finetuned")
    (runs / "pretrain" / "vvt_tiny").mkdir(parents=True)
    (runs / "pretrain" / "vvt_tiny" / "model.json").write_text(json.dumps({"kind": "pretrain", "model": "vvt_tiny"}))
    found = [e.path.name for e in discover_runs(runs, embedded_dir=tmp_path / "none")]
    assert found == ["finetuned"]


def test_how_a_run_was_trained_names_ordinal_labels_and_the_teacher():
    from medvit.demo.export import _describe_how

    config = {"pretrained": True, "mode": "full", "ordinal_labels": 2.0,
              "distill": {"teacher": "runs/demo_models/eyepacs_lite0", "temperature": 4.0, "alpha": 0.5}}
    assert _describe_how(config) == (
        "fine-tuned (all layers) from ImageNet weights on SORD ordinal soft labels (scale 2.0), "
        "distilled from eyepacs_lite0 (DeiT soft targets, T=4.0, alpha=0.5)"
    )
    assert _describe_how({"pretrained": None}) == "trained from scratch"


def test_the_card_says_how_many_epochs_ran_and_which_was_kept():
    from medvit.demo.card import _describe_epochs

    config = {"epochs": 16, "early_stopping": {"metric": "val_balanced_accuracy", "patience": 6}}
    history = [{"val_balanced_accuracy": v} for v in (0.79, 0.65, 0.72, 0.73, 0.72, 0.73, 0.74)]
    assert _describe_epochs(config, history) == "7 of 16, kept epoch 1"
    by_loss = {"epochs": 3, "early_stopping": {"metric": "val_loss"}}
    assert _describe_epochs(by_loss, [{"val_loss": v} for v in (1.0, 0.5, 0.7)]) == "3, kept epoch 2"
    # unset: the engine's default monitor (val_balanced_accuracy), as the engine kept it
    assert _describe_epochs({"epochs": 3}, [{"val_balanced_accuracy": v} for v in (0.5, 0.4, 0.6)]) == "3, kept epoch 3"
    assert _describe_epochs({"epochs": 3}, []) == "3"
