"""medvit.clinical: calibrate_run, the clinical report sections, external validation, the CLI."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from medvit.metrics.calibration import nll
from medvit.report import write_report
from medvit.clinical.calibrate import calibrate_run
from medvit.train.probabilities import calibrate_frame, unscaled_probabilities
from medvit.clinical.external import check_external_classes, external_markdown, external_record

CLASSES = ["benign", "malignant", "normal"]


def _probabilities(n, seed, sharpen=3.0):
    """Labels drawn from softmax(z); the model reports softmax(sharpen * z): overconfident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 1.2 + np.array([0.5, 0.0, -0.3])
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (true.cumsum(1) > rng.random((n, 1))).argmax(1)
    shown = np.exp(sharpen * z) / np.exp(sharpen * z).sum(1, keepdims=True)
    return labels, shown


def _frame(labels, probs, split, prefix):
    frame = pd.DataFrame({"image": [f"{prefix}{i}.png" for i in range(len(labels))], "split": split, "label": labels,
                          "label_name": [CLASSES[i] for i in labels], "prediction": probs.argmax(1),
                          "prediction_name": [CLASSES[i] for i in probs.argmax(1)]})
    for c, name in enumerate(CLASSES):
        frame[f"prob_{name}"] = probs[:, c]
    return frame


@pytest.fixture()
def fake_run(tmp_path):
    """model.json + predictions_val.csv + predictions.csv of an overconfident 3-class BUSI model, and a
    manifest with reporting-only columns (sex, age) for the test images."""
    run = tmp_path / "run"
    run.mkdir()
    val_labels, val_probs = _probabilities(300, seed=1)
    test_labels, test_probs = _probabilities(300, seed=2)
    test = _frame(test_labels, test_probs, "test", "t")
    _frame(val_labels, val_probs, "val", "v").to_csv(run / "predictions_val.csv", index=False, float_format="%.8g")
    test.to_csv(run / "predictions.csv", index=False, float_format="%.8g")
    manifest = tmp_path / "busi.csv"
    pd.DataFrame({"image": test["image"], "label": test_labels, "label_name": test["label_name"], "group": test["image"],
                  "split": "test", "sex": np.where(np.arange(300) % 2, "male", "female"),
                  "age": np.where(np.arange(300) < 295, 50, 85)}).to_csv(manifest, index=False)
    manifest.with_suffix(".json").write_text(json.dumps({"dataset": "busi", "class_names": CLASSES, "subgroup_columns": ["sex", "age"]}))
    info = {"model": "vvt_tiny", "class_names": CLASSES, "image_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
            "dataset": "busi", "preset": "ultrasound", "manifest": str(manifest), "manifest_hash": "ab" * 32}
    (run / "model.json").write_text(json.dumps(info))
    return run, test_labels, test_probs


def test_calibrate_run_stores_temperature_and_rewrites_predictions(fake_run):
    run, test_labels, test_probs = fake_run
    t = calibrate_run(run)
    info = json.loads((run / "model.json").read_text())
    record = info["calibration"]
    assert record["temperature"] == t and t == pytest.approx(3.0, rel=0.3)  # undoes the sharpening
    assert record["val_nll_after"] <= record["val_nll_before"]
    assert record["n_val"] == 300 and record["conformal"]["method"] == "lac" and record["conformal"]["alpha"] == 0.1
    (question,) = record["questions"]
    assert question["name"] == "malignant" and question["positive_classes"] == ["malignant"]
    assert [p["name"] for p in question["operating_points"]] == ["sens>=0.9", "sens>=0.95", "youden"]
    assert question["operating_points"][1]["val_sensitivity"] >= 0.95
    assert info["questions"] == [{"name": "malignant", "positive_classes": ["malignant"]}]
    test = pd.read_csv(run / "predictions.csv")
    assert (test["temperature"] == t).all()
    assert test["prediction_set"].str.split("|").map(len).between(1, 3).all()
    assert np.allclose(unscaled_probabilities(test, CLASSES), test_probs, atol=1e-6)  # "before" is recoverable
    scaled = test[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert nll(test_labels, scaled) < nll(test_labels, test_probs)  # better on test too (same distribution)
    assert calibrate_run(run) == pytest.approx(t, rel=1e-6)  # idempotent: fits on the unscaled probabilities


def test_temperature_one_leaves_probabilities_bit_identical(fake_run):
    run, _, test_probs = fake_run
    frame = pd.read_csv(run / "predictions.csv")
    info = {"class_names": CLASSES, "calibration": {"temperature": 1.0, "conformal": None}}
    out = calibrate_frame(frame, CLASSES, info)
    for name in CLASSES:
        assert np.array_equal(out[f"prob_{name}"].to_numpy(), frame[f"prob_{name}"].to_numpy())
    assert "temperature" not in out.columns and "prediction_set" not in out.columns
    assert calibrate_frame(frame, CLASSES, {"class_names": CLASSES}) is frame  # never calibrated: untouched


def test_report_has_the_clinical_sections(fake_run):
    run, test_labels, _ = fake_run
    calibrate_run(run)
    out = write_report(run, n_bootstrap=100)
    for name in ("reliability.png", "operating_points.png"):
        assert (out / name).stat().st_size > 10_000, name
    clinical = json.loads((out / "summary.json").read_text())["clinical"]
    cal = clinical["calibration"]
    assert cal["stored"] and cal["after"]["nll"]["value"] < cal["before"]["nll"]["value"]
    assert cal["after"]["ece"]["value"] < cal["before"]["ece"]["value"]
    assert sum(cal["before"]["bins"]["counts"]) == 300
    (q,) = clinical["questions"]
    assert q["n_positive"] == int((test_labels == 1).sum())
    points = {p["point"]["name"]: p for p in q["points"]}
    r = points["sens>=0.95"]
    assert r["tp"] + r["fn"] == q["n_positive"] and r["tp"] + r["fp"] + r["tn"] + r["fn"] == 300
    assert r["sensitivity"]["value"] == pytest.approx(r["tp"] / (r["tp"] + r["fn"]))
    assert r["sensitivity"]["low"] <= r["sensitivity"]["value"] <= r["sensitivity"]["high"]
    conformal = clinical["conformal"]
    assert conformal["coverage"]["value"] >= 0.9 - 3 * np.sqrt(0.09 / 300)
    assert sum(c["n"] for c in conformal["per_class"].values()) == 300
    tables = {t["column"]: t for t in clinical["subgroups"]}
    assert [g["n"] for g in tables["sex"]["groups"]] == [150, 150]
    bands = {g["value"]: g for g in tables["age band"]["groups"]}
    assert bands["80+"]["n"] == 5 and bands["80+"]["small"] and bands["80+"]["recall"]["low"] is None
    assert tables["sex"]["worst"]["recall"] in ("female", "male")
    index = (out / "index.md").read_text()
    for heading in ("## Calibration on `test`", "## Operating points: malignant vs not", "## Prediction sets", "### sex",
                    "95 %-sensitivity threshold", "Worst group:"):
        assert heading in index, heading


def test_report_without_calibration_fits_on_val_for_the_report_only(fake_run):
    run, _, _ = fake_run
    out = write_report(run, n_bootstrap=0)
    clinical = json.loads((out / "summary.json").read_text())["clinical"]
    assert not clinical["calibration"]["stored"] and clinical["calibration"]["temperature"] > 1
    assert "calibration" not in json.loads((run / "model.json").read_text())
    (run / "predictions_val.csv").unlink()
    clinical = json.loads((write_report(run, n_bootstrap=0) / "summary.json").read_text())["clinical"]
    assert clinical["calibration"]["after"] is None and clinical["questions"] == [] and clinical["conformal"] is None
    assert "medvit calibrate" in clinical["notes"][0]


def test_external_classes_checked_and_described(tmp_path, fake_run):
    run, _, _ = fake_run
    info = json.loads((run / "model.json").read_text())
    other = tmp_path / "other.csv"
    pd.DataFrame({"image": ["a.png", "b.png"], "label": [0, 1], "label_name": ["cyst", "tumour"], "group": ["a", "b"],
                  "split": "test"}).to_csv(other, index=False)
    with pytest.raises(ValueError, match=r"\['cyst', 'tumour'\] differ from the run's \['benign', 'malignant', 'normal'\]"):
        check_external_classes(info, other)
    folder = tmp_path / "site2.csv"
    pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "label": [0, 1, 2], "label_name": CLASSES, "group": list("abc"),
                  "split": "test"}).to_csv(folder, index=False)
    folder.with_suffix(".json").write_text(json.dumps({"dataset": "folder", "class_names": CLASSES}))
    record = external_record(info, folder, "site2", "all", 3)
    assert record["dataset"] == "folder" and not record["same_dataset_kind"] and not record["same_manifest_as_training"]
    text = external_markdown({**info, "external": record, "source_run": "runs/busi"})
    assert "another dataset kind (folder; the run was trained on busi) with the same classes" in text
    assert "split `all`, 3 images" in text


def test_calibrate_and_external_evaluation_on_a_trained_run(tmp_path, tiny_run, synthetic_busi):
    from medvit.cli import main
    from medvit.run_dir import load_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert "calibration" in json.loads((run / "model.json").read_text())  # medvit train ends with calibrate_run
    info = json.loads((run / "model.json").read_text())
    del info["calibration"]
    (run / "model.json").write_text(json.dumps(info))
    assert load_run(run).temperature == 1.0
    before = (run / "predictions.csv").read_bytes()
    assert main(["calibrate", str(run)]) == 0
    t = json.loads((run / "model.json").read_text())["calibration"]["temperature"]
    assert load_run(run).temperature == t  # round-trips through model.json
    assert "prediction_set" in pd.read_csv(run / "predictions.csv").columns
    own_report = (run / "report" / "index.md").read_bytes()

    out = tmp_path / "site2"
    code = main(["evaluate", str(run), "--manifest", synthetic_busi["manifest"], "--root", synthetic_busi["root"],
                 "--split", "all", "--out", str(out), "--report", "--bootstrap", "50"])
    assert code == 0
    external = pd.read_csv(out / "predictions.csv")
    assert len(external) == 36 and (external["split"] == "all").all() and "prediction_set" in external.columns
    if t != 1.0:
        assert (external["temperature"] == t).all()
    info = json.loads((out / "model.json").read_text())
    assert info["external"]["n_images"] == 36 and info["external"]["same_manifest_as_training"]
    index = (out / "report" / "index.md").read_text()
    assert "## External validation" in index and "split `all`, 36 images" in index
    assert index.index("## External validation") < index.index("## Results on `all` of `busi.csv` (external)")
    assert (run / "report" / "index.md").read_bytes() == own_report  # the run's own report is untouched
    assert before == (run / "predictions.csv").read_bytes()  # same record fitted again: the same file
