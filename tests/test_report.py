"""medvit.report: run reports and paper-style comparison tables from hand-made run directories."""

import json

import numpy as np
import pandas as pd
import pytest

from medvit.report import compare_runs, write_report

CLASSES = ["benign", "malignant", "normal"]


def _fake_run(path, model, predictions, labels, confidence=0.7):
    """A run directory with model.json and predictions.csv only (what report/compare read)."""
    path.mkdir()
    info = {
        "model": model, "class_names": CLASSES, "image_size": [64, 64], "mean": [0.5] * 3, "std": [0.5] * 3,
        "dataset": "busi", "preset": "ultrasound", "is_ordinal": False, "manifest": "busi.csv",
        "manifest_hash": "ab" * 32, "manifest_counts": {c: {"train": 10, "val": 2, "test": 4} for c in CLASSES},
        "manifest_num_rejected": 2, "manifest_num_duplicate_sets": 1, "manifest_duplicates": "group",
    }
    (path / "model.json").write_text(json.dumps(info))
    probs = np.full((len(labels), 3), (1 - confidence) / 2)
    probs[np.arange(len(labels)), predictions] = confidence
    frame = pd.DataFrame({"image": [f"img{i}.png" for i in range(len(labels))], "split": "test", "label": labels,
                          "label_name": [CLASSES[i] for i in labels], "prediction": predictions})
    for c, name in enumerate(CLASSES):
        frame[f"prob_{name}"] = probs[:, c]
    frame.to_csv(path / "predictions.csv", index=False)
    return path


def test_write_report_files_and_numbers(tmp_path):
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 0, 2])
    run = _fake_run(tmp_path / "run", "vvt_tiny", preds, labels)
    out = write_report(run, n_bootstrap=200)
    for name in ("per_class.csv", "per_class.md", "summary.json", "confusion.png", "roc.png", "index.md"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "per_class.csv").set_index("class")
    assert table.loc["benign", "recall"] == pytest.approx(3 / 4)
    assert table.loc["malignant", "precision"] == pytest.approx(4 / 5)
    assert table.loc["normal", "support"] == 4
    assert table.loc["macro avg", "recall"] == pytest.approx((3 / 4 + 1 + 3 / 4) / 3)
    assert (table["recall_low"] <= table["recall"]).all() and (table["recall"] <= table["recall_high"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"]["value"] == pytest.approx(10 / 12) and summary["n_bootstrap"] == 200
    index = (out / "index.md").read_text()
    assert "busi" in index and "Split sizes: train 30, val 6, test 12" in index and "Rejected files" in index
    assert "| benign | 4 | 1.000" not in (out / "per_class.md").read_text()  # precision of benign is 3/4


def test_compare_runs_table(tmp_path):
    labels = np.repeat([0, 1, 2], 5)
    good = _fake_run(tmp_path / "a", "vvt_tiny", labels.copy(), labels)
    worse_preds = labels.copy()
    worse_preds[:2] = 2
    worse = _fake_run(tmp_path / "b", "swin_tiny_patch4_window7_224", worse_preds, labels)
    paths = compare_runs([good, worse], tmp_path / "tables" / "busi.md", n_bootstrap=100)
    md = paths["md"].read_text()
    assert md.splitlines()[0].startswith("| Model | benign P | benign R | malignant P")
    assert "| vvt_tiny | 1.000" in md and "swin_tiny_patch4_window7_224" in md
    csv = pd.read_csv(paths["csv"]).set_index("Model")
    assert csv.loc["vvt_tiny", "Accuracy"] == pytest.approx(1.0)
    assert csv.loc["swin_tiny_patch4_window7_224", "benign R"] == pytest.approx(3 / 5)
    assert "benign R low" in csv.columns
    tex = paths["tex"].read_text()
    assert tex.startswith(r"\begin{tabular}") and r"swin\_tiny\_patch4\_window7\_224" in tex


def test_compare_rejects_different_classes(tmp_path):
    labels = np.repeat([0, 1, 2], 3)
    a = _fake_run(tmp_path / "a", "vvt_tiny", labels, labels)
    b = _fake_run(tmp_path / "b", "vvt_tiny", labels, labels)
    info = json.loads((b / "model.json").read_text())
    info["class_names"] = ["x", "y", "z"]
    (b / "model.json").write_text(json.dumps(info))
    frame = pd.read_csv(b / "predictions.csv").rename(columns={f"prob_{c}": f"prob_{n}" for c, n in zip(CLASSES, "xyz")})
    frame.to_csv(b / "predictions.csv", index=False)
    with pytest.raises(ValueError, match="differ from"):
        compare_runs([a, b], tmp_path / "t.md", n_bootstrap=10)
    with pytest.raises(FileNotFoundError, match="predictions.csv not found"):
        (a / "predictions.csv").unlink()
        write_report(a)
