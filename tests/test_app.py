"""The demo: ``medvit.demo`` (what the page computes) and the Streamlit page itself (``AppTest``).

Everything runs on the embedded default models in ``medvit/assets/demo_models/`` and the bundled samples in
``medvit/assets/samples/``; CPU-only and offline.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medvit import assets, demo
from medvit.data.images import ImageReadError, read_image

REPO = Path(__file__).resolve().parent.parent
APP = demo.PAGE_SCRIPT
EMBEDDED = assets.demo_models_dir()
SAMPLES = assets.samples_dir()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def entries() -> list[demo.RunEntry]:
    return demo.discover_runs(None, EMBEDDED)


@pytest.fixture(scope="module")
def busi_model(tiny_run) -> demo.DemoModel:
    """The shared tiny BUSI run (conftest): the page's pipeline is the same for every backbone, and
    test_shipped_assets.py loads every embedded model."""
    return demo.load_demo_model(tiny_run)


@pytest.fixture(scope="module")
def busi_sample() -> demo.Sample:
    return next(s for s in demo.load_samples(SAMPLES) if s.dataset == "busi" and s.label == "malignant")


# ------------------------------------------------------------------------------------------------
# Library: runs, samples, uploads
# ------------------------------------------------------------------------------------------------


def test_discover_runs_lists_runs_folder_including_broken(tmp_path):
    good = tmp_path / "runs" / "grid" / "busi_copy"
    shutil.copytree(demo.default_run(demo.discover_runs(None, EMBEDDED), "busi").path, good)
    broken = tmp_path / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{not json")
    found = demo.discover_runs(tmp_path / "runs", EMBEDDED)
    by_path = {e.path: e for e in found}
    assert by_path[good].dataset == "busi" and not by_path[good].is_embedded and not by_path[good].is_default
    assert by_path[broken].dataset == "" and by_path[broken].model_name == ""
    assert demo.default_run(found, "busi").is_embedded
    with pytest.raises(ValueError, match="not valid JSON"):
        demo.load_demo_model(broken)
    assert demo.discover_runs(tmp_path / "missing", tmp_path / "no_models") == []


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (40, 30), 128),
        Image.new("P", (40, 30), 3),
        Image.new("RGBA", (40, 30), (10, 20, 30, 128)),
        Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)),
        Image.new("RGB", (40, 30), (200, 100, 0)),
    ],
    ids=["gray", "palette", "rgba", "16bit", "rgb"],
)
def test_read_upload_modes(image):
    rgb = demo.read_upload(_png(image), "x.png")
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "JPEG", "GIF", "WEBP"])
def test_read_upload_formats(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (33, 17), (1, 2, 3)).save(buffer, format=fmt)
    assert fmt.lower() in demo.UPLOAD_TYPES  # the uploader widget takes it
    assert demo.read_upload(buffer.getvalue(), f"x.{fmt.lower()}").shape == (17, 33, 3)


def test_uploader_takes_what_prepare_takes():
    from medvit.data.datasets import IMAGE_EXTENSIONS

    assert {f".{t}" for t in demo.UPLOAD_TYPES} == IMAGE_EXTENSIONS
    assert demo.TRANSFER_LIMIT_BYTES > demo.MAX_UPLOAD_BYTES  # an oversized file reaches read_upload's message


def test_read_upload_rejects_bad_input():
    with pytest.raises(ImageReadError, match="notes.txt: not a readable image"):
        demo.read_upload(b"just some text, not an image", "notes.txt")
    good = _png(Image.new("RGB", (64, 64), (9, 9, 9)))
    with pytest.raises(ImageReadError, match="cut.png: truncated or corrupt"):
        demo.read_upload(good[: len(good) // 2] + b"\0" * 10, "cut.png")
    with pytest.raises(ImageReadError, match="empty.png: empty file"):
        demo.read_upload(b"", "empty.png")
    with pytest.raises(ValueError, match=r"big.png: the file is 2.0 MB, over the 1 MB upload limit"):
        demo.read_upload(b"\0" * (2 * 2**20), "big.png", max_bytes=2**20)
    huge = _png(Image.new("1", (8000, 7000)))  # 56 MP in a few kB: refused from the header
    assert len(huge) < demo.MAX_UPLOAD_BYTES
    with pytest.raises(ImageReadError, match=r"huge.png: decompression bomb refused: 8000x7000"):
        demo.read_upload(huge, "huge.png")


# ------------------------------------------------------------------------------------------------
# Library: explanations and model card
# ------------------------------------------------------------------------------------------------


def test_explain_image_with_mask(busi_model, busi_sample):
    from medvit.data.images import read_mask

    rgb = read_image(busi_sample.path)
    mask = read_mask([str(m) for m in busi_sample.mask], shape=rgb.shape[:2])
    explanation = demo.explain_image(busi_model, rgb, mask=mask)
    assert explanation.probabilities.shape == (3,)
    assert explanation.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert explanation.target == explanation.predicted == int(np.argmax(explanation.probabilities))
    assert [s.stride for s in explanation.stages] == [4, 8, 16, 32]
    height, width = busi_model.run.image_size
    assert [s.grid_size for s in explanation.stages] == [(height // r, width // r) for r in (4, 8, 16, 32)]
    for stage in explanation.stages:
        assert stage.overlay.shape == explanation.image.shape and stage.overlay.dtype == np.uint8
        assert stage.cam.shape == explanation.image.shape[:2] and 0 <= stage.cam.min() <= stage.cam.max() <= 1
        assert stage.localization and all(np.isfinite(v) for v in stage.localization.values())
    assert explanation.mask.shape == explanation.image.shape[:2] and explanation.mask.any()
    # no hook stays on the shared model, and it is still in eval mode
    for module in busi_model.run.model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module.training
    # another target class changes the maps, not the probabilities
    other = demo.explain_image(busi_model, rgb, target=(explanation.predicted + 1) % 3)
    np.testing.assert_allclose(other.probabilities, explanation.probabilities, atol=1e-6)
    assert not np.allclose(other.stages[3].cam, explanation.stages[3].cam)
    # downloads
    payload = demo.explanation_to_json(explanation, source=busi_sample.path.name)
    json.dumps(payload)
    assert sum(payload["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert [s["stride"] for s in payload["stages"]] == [4, 8, 16, 32]
    png = demo.render_explanation_png(explanation, alpha=0.4)
    assert Image.open(io.BytesIO(png)).format == "PNG"
    redrawn = demo.overlay_stages(explanation, 0.0)
    np.testing.assert_allclose(redrawn[0], explanation.image, atol=1)


def test_comparison_checks_count_and_dataset(entries):
    busi = [e for e in entries if e.dataset == "busi"]
    ham = next(e for e in entries if e.dataset == "ham10000")
    demo.check_comparison(busi[:2])
    with pytest.raises(ValueError, match="pick 2 to 4 models to compare \\(got 1\\)"):
        demo.check_comparison(busi[:1])
    with pytest.raises(ValueError, match="got 5"):
        demo.check_comparison(busi[:1] * 5)
    with pytest.raises(ValueError, match="one dataset; these are of busi, ham10000"):
        demo.check_comparison([busi[0], ham])


def test_comparison_table_has_each_models_numbers(busi_model, busi_sample):
    from medvit.data.images import read_mask

    rgb = read_image(busi_sample.path)
    mask = read_mask([str(m) for m in busi_sample.mask], shape=rgb.shape[:2])
    with_mask = demo.explain_image(busi_model, rgb, mask=mask)
    other_target = demo.explain_image(busi_model, rgb, mask=mask, method="gradcam++")
    table = demo.comparison_table({"a": with_mask, "b": other_target})
    assert list(table["model"]) == ["a", "b"]
    names = list(with_mask.class_names)
    for i, explanation in enumerate((with_mask, other_target)):
        assert table.loc[i, "predicted"] == names[explanation.predicted]
        np.testing.assert_allclose(
            table.loc[i, [f"p({n})" for n in names]].to_numpy(float), explanation.probabilities, atol=1e-7
        )
        for stage in explanation.stages:
            assert table.loc[i, f"stage {stage.index + 1} energy"] == pytest.approx(stage.localization["energy"])
    assert not np.allclose(table.loc[0, ["stage 4 energy"]].to_numpy(float), table.loc[1, ["stage 4 energy"]].to_numpy(float))
    no_mask = demo.comparison_table({"a": demo.explain_image(busi_model, rgb), "b": with_mask})
    assert np.isnan(no_mask.loc[0, "stage 1 energy"]) and no_mask.loc[1, "stage 1 energy"] == pytest.approx(
        with_mask.stages[0].localization["energy"]
    )


def test_explain_image_rejects_bad_arguments(busi_model):
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="out of range"):
        demo.explain_image(busi_model, rgb, target=7)
    with pytest.raises(ValueError, match="unknown CAM method"):
        demo.explain_image(busi_model, rgb, method="nope")
    with pytest.raises(ValueError, match="mask is 5x4"):
        demo.explain_image(busi_model, rgb, mask=np.zeros((4, 5)))


def test_model_cards_read_reports(entries):
    for entry in entries:
        card = demo.load_model_card(entry.path)
        assert card.backbone == entry.model_name
        assert card.dataset == entry.dataset
        assert set(card.split_sizes) == {"train", "val", "test"} and all(card.split_sizes.values())
        assert card.per_class and "(" in card.per_class[0]["recall"]  # value with its CI
        summary = json.loads((entry.path / "report" / "summary.json").read_text())
        assert card.summary["accuracy"].startswith(f"{summary['accuracy']['value']:.3f}")
        assert card.selection["chosen"] and card.selection["candidates"]
        if entry.model_name == "tf_efficientnet_lite0":
            assert "EfficientNet-Lite0" in card.pretrained and "sha256" in card.pretrained
        assert card.training["epochs"] and card.train_seconds and card.train_seconds > 0


def test_explanations_from_threads_match_serial(busi_model, busi_sample):
    from concurrent.futures import ThreadPoolExecutor

    rgb = read_image(busi_sample.path)
    serial = [demo.explain_image(busi_model, rgb, target=k) for k in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(lambda k: demo.explain_image(busi_model, rgb, target=k), range(3)))
    for one, other in zip(serial, threaded):
        np.testing.assert_allclose(one.probabilities, other.probabilities, atol=1e-6)
        for a, b in zip(one.stages, other.stages):
            np.testing.assert_allclose(a.cam, b.cam, atol=1e-5)
    assert all(not m._forward_hooks for m in busi_model.run.model.modules())


def test_demo_models_table_reads_reports(entries):
    table = demo.demo_models_markdown(EMBEDDED).strip().splitlines()
    assert len(table) == 2 + len(entries)
    for entry in entries:
        row = next(line for line in table if line.startswith(f"| {entry.path.name}"))
        summary = json.loads((entry.path / "report" / "summary.json").read_text())
        assert f"{summary['macro']['f1']['value']:.3f}" in row and entry.model_name in row


def _write_metrics(run, rows, monitor="val_balanced_accuracy"):
    columns = ["epoch", "val_loss", "val_balanced_accuracy", "val_macro_f1"]
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["early_stopping"] = {"metric": monitor, "patience": 0}
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_export_demo_model_chooses_on_validation_not_test(tmp_path, entries):
    source = demo.default_run(entries, "busi").path
    runs = []
    # run_a: better on test, worse on validation at its kept epoch (epoch 2, best balanced accuracy)
    for name, val_f1, test_f1 in (("run_a", 0.2, 0.9), ("run_b", 0.6, 0.1)):
        run = tmp_path / name
        shutil.copytree(source, run)
        _write_metrics(run, [(1, 1.0, 0.3, 0.95), (2, 0.9, 0.5, val_f1), (3, 0.8, 0.5, 0.99)])
        summary = json.loads((run / "report" / "summary.json").read_text())
        summary["macro"]["f1"]["value"] = test_f1
        (run / "report" / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    selection = demo.export_demo_model(runs, tmp_path / "out", metric="macro_f1", remeasure=False)
    assert selection["chosen"] == "run_b" and selection["split"] == "val"
    assert selection["score"] == pytest.approx(0.6)
    assert [(c["score"], c["epoch"], c["test_score"]) for c in selection["candidates"]] == [(0.2, 2, 0.9), (0.6, 2, 0.1)]
    saved = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert saved["chosen"] == "run_b"
    with pytest.raises(FileNotFoundError, match="medvit report"):
        demo.export_demo_model([tmp_path / "nothing"], tmp_path / "out2")
    with pytest.raises(KeyError, match="balanced_accuracy"):
        demo.export_demo_model(runs, tmp_path / "out3", metric="f1_typo", remeasure=False)


def test_validation_score_follows_the_kept_epoch(tmp_path, entries):
    run = tmp_path / "run"
    shutil.copytree(demo.default_run(entries, "busi").path, run)
    rows = [(1, 1.0, 0.3, 0.1), (2, 0.7, 0.6, 0.2), (3, 0.7, 0.6, 0.3), (4, 0.8, float("nan"), 0.4)]
    _write_metrics(run, rows)
    assert demo.validation_score(run, "macro_f1") == (pytest.approx(0.2), 2)  # first best, NaN skipped
    _write_metrics(run, rows, monitor="val_loss")
    assert demo.validation_score(run, "macro_f1") == (pytest.approx(0.2), 2)  # loss minimised, first minimum
    _write_metrics(run, rows, monitor="val_macro_f1")
    assert demo.validation_score(run, "balanced_accuracy")[1] == 4


def test_streamlit_command_is_headless_and_offline():
    command = demo.streamlit_command(port=8765, runs_dir="my_runs")
    line = " ".join(command)
    assert str(APP) in command
    for flag in ("--server.headless true", "--browser.gatherUsageStats false", "--server.port 8765",
                 "--server.maxUploadSize 200"):
        assert flag in line
    assert command[-2:] == ["--runs", "my_runs"]


# ------------------------------------------------------------------------------------------------
# The page (Streamlit AppTest)
# ------------------------------------------------------------------------------------------------


def _page(tmp_path: Path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.text_input(key="runs_dir").set_value(str(tmp_path / "runs")).run()
    return at


def _probability_table(at) -> "pd.DataFrame":
    return next(df.value for df in at.dataframe if list(df.value.columns) == ["class", "probability"])


@pytest.mark.slow
def test_page_default_model_with_sample(tmp_path):
    at = _page(tmp_path)
    assert not at.exception and not at.error
    assert any("Research use only" in w.value for w in at.warning)
    assert at.selectbox(key="dataset").value == "busi"
    assert at.selectbox(key="run-busi").value.is_default
    probabilities = _probability_table(at)
    assert probabilities["probability"].sum() == pytest.approx(1.0, abs=1e-5)
    assert list(probabilities["probability"]) == sorted(probabilities["probability"], reverse=True)
    captions = [c for image in at.image for c in image.captions]
    stage_captions = [c for c in captions if c.startswith("Stage ")]
    assert len(stage_captions) == 4 and "stride 32" in stage_captions[3]
    assert any("Lesion mask" in c for c in captions)
    assert any(m.label == "True label" for m in at.metric)
    # another dataset and another sample
    at.selectbox(key="dataset").set_value("ham10000").run()
    assert not at.exception and not at.error
    assert len(_probability_table(at)) == 7


def test_page_compares_models_on_one_image(tmp_path, entries):
    at = _page(tmp_path)
    at.radio(key="mode").set_value("Compare models").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="cmp-dataset").value == "busi"
    chosen = at.multiselect(key="cmp-runs-busi").value
    busi = [e for e in entries if e.dataset == "busi"]
    assert len(chosen) == len(busi) >= 3 and chosen[0].is_default
    table = next(df.value for df in at.dataframe if "backbone" in df.value.columns)
    assert len(table) == len(busi) and set(table["backbone"]) == {e.model_name for e in busi}
    stage_captions = [c for image in at.image for c in image.captions if c.startswith("Stage ")]
    assert len(stage_captions) == 4 * len(busi)
    assert all("energy in lesion" in c for c in stage_captions)  # the sample has a mask
    assert table[[f"stage {i} energy" for i in (1, 2, 3, 4)]].notna().all().all()
    probability_tables = [df.value for df in at.dataframe if list(df.value.columns) == ["class", "probability"]]
    assert len(probability_tables) == len(busi)
    for frame, (_, row) in zip(probability_tables, table.iterrows()):
        assert frame["probability"].sum() == pytest.approx(1.0, abs=1e-5)
        assert row["predicted"] == frame.loc[frame["probability"].idxmax(), "class"]
    # one model is not a comparison
    at.multiselect(key="cmp-runs-busi").set_value(chosen[:1]).run()
    assert not at.exception
    assert any("pick 2 to 4 models" in i.value for i in at.info)
    assert not [c for image in at.image for c in image.captions if c.startswith("Stage ")]
    # another dataset
    at.selectbox(key="cmp-dataset").set_value("ham10000").run()
    assert not at.exception and not at.error
    table = next(df.value for df in at.dataframe if "backbone" in df.value.columns)
    assert len(table) == len([e for e in entries if e.dataset == "ham10000"])
    assert "stage 1 energy" not in table.columns  # HAM10000 samples have no mask


@pytest.mark.slow
def test_page_bad_upload_then_good_upload(tmp_path):
    at = _page(tmp_path)
    at.radio(key="source").set_value("Upload an image").run()
    at.file_uploader(key="upload").set_value(("scan.png", b"\x89PNG\r\n\x1a\n broken", "image/png")).run()
    assert not at.exception
    assert any("scan.png" in e.value and "not a readable image" in e.value for e in at.error)
    big = b"\x89PNG\r\n\x1a\n" + bytes(demo.MAX_UPLOAD_BYTES)  # over the limit: a message, not only a red icon
    at.file_uploader(key="upload").set_value(("big.png", big, "image/png")).run()
    assert not at.exception
    assert any("big.png: the file is 20.0 MB, over the 20 MB upload limit" in e.value for e in at.error)
    sample = next(s for s in demo.load_samples(SAMPLES) if s.dataset == "busi")
    at.file_uploader(key="upload").set_value((sample.path.name, sample.path.read_bytes(), "image/png")).run()
    assert not at.exception and not at.error
    assert _probability_table(at)["probability"].sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_page_survives_a_run_that_does_not_load(tmp_path):
    broken = tmp_path / "runs" / "broken_busi"
    broken.mkdir(parents=True)
    info = json.loads((demo.default_run(demo.discover_runs(None, EMBEDDED), "busi").path / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps(info))  # no weights
    at = _page(tmp_path)
    choices = at.selectbox(key="run-busi").options
    assert any("broken_busi" in c for c in choices)
    entry = next(e for e in demo.discover_runs(tmp_path / "runs", EMBEDDED) if e.path == broken)
    at.selectbox(key="run-busi").set_value(entry).run()
    assert not at.exception
    assert any("does not load" in e.value and "best.safetensors" in e.value for e in at.error)
    at.selectbox(key="run-busi").set_value(demo.default_run(demo.discover_runs(None, EMBEDDED), "busi")).run()
    assert not at.exception and not at.error


# ------------------------------------------------------------------------------------------------
# Clinical reading: calibration, prediction set, operating point (card and page)
# ------------------------------------------------------------------------------------------------

_CALIBRATION = {
    "fitted_on": "val", "n_val": 70, "temperature": 0.5,
    "conformal": {"method": "lac", "alpha": 0.1, "q": 0.7},
    "questions": [{
        "name": "malignant", "positive_classes": ["malignant"],
        "operating_points": [{"name": "sens>=0.95", "description": "95 %-sensitivity threshold", "threshold": 0.2,
                              "target_sensitivity": 0.95, "val_sensitivity": 0.96, "val_specificity": 0.6}],
    }],
}


def _calibrated_copy(path: Path, entries) -> Path:
    """The default BUSI model with a hand-made calibration record and a report that has the clinical sections."""
    from medvit.report import write_report

    shutil.copytree(demo.default_run(entries, "busi").path, path)
    info = json.loads((path / "model.json").read_text())
    (path / "model.json").write_text(json.dumps({**info, "calibration": _CALIBRATION}))
    write_report(path, n_bootstrap=50)
    return path


def test_image_decision_sentences():
    from medvit.clinical.decision import decide

    info = {"calibration": _CALIBRATION}
    d = decide([0.6, 0.3, 0.1], ["benign", "malignant", "normal"], info)
    assert d.set_text == "benign or malignant"  # LAC: every class with 1 - p <= 0.7
    assert d.score == pytest.approx(0.3) and [x.above for x in d.decisions] == [True]
    assert "P(malignant) = 30.0% is above the 95 %-sensitivity threshold for malignant (20.0%)" in d.decisions[0].sentence
    assert "T = 0.500" in d.probability_sentence and "90%" in d.set_sentence
    low = decide([0.85, 0.1, 0.05], ["benign", "malignant", "normal"], info)
    assert low.set_text == "benign" and not low.decisions[0].above
    plain = decide([0.85, 0.1, 0.05], ["benign", "malignant", "normal"], {})
    assert plain.prediction_set is None and plain.decisions == [] and "not calibrated" in plain.probability_sentence


def test_model_card_shows_clinical_reading(tmp_path, entries):
    run = _calibrated_copy(tmp_path / "busi_calibrated", entries)
    card = demo.load_model_card(run)
    assert card.clinical["Calibration (test ECE, 15 bins)"].startswith("ECE 0.")
    assert "after (T = 0.500, fitted on validation)" in card.clinical["Calibration (test ECE, 15 bins)"]
    point = card.clinical["95 %-sensitivity threshold for malignant (t = 0.200)"]
    assert point.startswith("sensitivity ") and "PPV" in point and "NPV" in point
    assert card.clinical["Prediction sets (LAC, target coverage 90%)"].startswith("coverage 0.")
    from medvit.demo.card import clinical_card

    assert clinical_card({"accuracy": {"value": 0.8}}) == {}  # a report written before the clinical sections


@pytest.mark.slow
def test_page_shows_prediction_set_and_operating_point(tmp_path, entries):
    run = _calibrated_copy(tmp_path / "runs" / "busi_calibrated", entries)
    at = _page(tmp_path)
    entry = next(e for e in demo.discover_runs(tmp_path / "runs", EMBEDDED) if e.path == run)
    at.selectbox(key="run-busi").set_value(entry).run()
    assert not at.exception and not at.error
    texts = [m.value for m in at.markdown]
    assert any(t.startswith("**Prediction set:** ") for t in texts)
    assert any("the 95 %-sensitivity threshold for malignant**" in t for t in texts)
    captions = [c.value for c in at.caption]
    assert any("temperature-scaled (T = 0.500" in c for c in captions)
    assert any("held the true class for at least 90%" in c for c in captions)
    assert any(t.startswith("**Clinical reading**") for t in texts)  # the model card's section
