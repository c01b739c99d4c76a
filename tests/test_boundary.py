"""Issue 27: bad input at the boundary ends in one named line (or is written beside), never a wrong result.

Each test is one case of the issue: the silent wrong results, the tracebacks, the errors that named
nothing, the pretrain dead end and the overwrites. CLI cases go through ``medvit.cli.main`` and check
the exit code, the one-line message and that nothing already computed changed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dicom_samples import PATIENT, write_dicom
from medvit.assets import samples_dir
from medvit.boundary.manifest import ManifestError, check_manifest, require_valid_manifest
from medvit.cli import main
from medvit.data.images import ImageReadError, read_image, read_mask
from medvit.data.manifest import prepare_manifest, read_manifest
from medvit.run_dir import PREDICTIONS_CSV

SAMPLES = samples_dir()
TINY_VVT = {"embed_dims": [8, 16, 16, 32], "num_heads": [1, 1, 1, 2], "depths": [1, 1, 1, 1], "mlp_ratios": [2, 2, 2, 2]}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def _folder_dataset(raw: Path, classes: tuple[str, ...], per_class: int = 2, suffix: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        for index in range(per_class):
            rgb = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            path = raw / name / f"img{index}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".dcm":
                write_dicom(path, rgb[..., c % 3])
            else:
                Image.fromarray(rgb).save(path)
    return raw


def _edited_manifest(synthetic_busi, tmp_path, edit) -> Path:
    """A copy of the shared synthetic BUSI manifest (and its side JSON), edited by ``edit(frame)``."""
    source = Path(synthetic_busi["manifest"])
    manifest = tmp_path / "edited.csv"
    frame = read_manifest(source)
    edit(frame)
    frame.to_csv(manifest, index=False)
    shutil.copy(source.with_suffix(".json"), manifest.with_suffix(".json"))
    return manifest


# ------------------------------------------------------------------------------ wrong results (silent)
def test_evaluate_refuses_other_class_names_and_never_overwrites_predictions(run_copy, tmp_path, capsys):
    raw = _folder_dataset(tmp_path / "pets", ("bird", "cat", "dog"))  # 3 classes, as the run, other names
    prepare_manifest("folder", raw, tmp_path / "pets.csv", num_workers=1)
    before = (run_copy / PREDICTIONS_CSV).read_bytes()
    code, _, err = run_cli(capsys, "evaluate", run_copy, "--manifest", tmp_path / "pets.csv", "--root", raw, "--split", "all")
    line = one_error_line(err)
    assert code == 1 and "classes ['bird', 'cat', 'dog'] differ from the run's ['benign', 'malignant', 'normal']" in line
    assert (run_copy / PREDICTIONS_CSV).read_bytes() == before
    # the run's own data again: written beside the run's predictions, never over them
    code, out, _ = run_cli(capsys, "evaluate", run_copy)
    assert code == 0 and (run_copy / PREDICTIONS_CSV).read_bytes() == before
    beside = Path(out.strip().splitlines()[-1])
    assert beside.parent.parent == run_copy / "evaluations" and beside.name == PREDICTIONS_CSV
    assert len(pd.read_csv(beside)) == len(pd.read_csv(run_copy / PREDICTIONS_CSV))
    code, out, _ = run_cli(capsys, "evaluate", run_copy)  # a second time: a new folder
    assert code == 0 and Path(out.strip().splitlines()[-1]).parent.name.endswith("_2")
    code, _, err = run_cli(capsys, "evaluate", run_copy, "--out", run_copy / PREDICTIONS_CSV)
    assert code == 1 and "never overwritten" in one_error_line(err)
    assert (run_copy / PREDICTIONS_CSV).read_bytes() == before


@pytest.mark.parametrize("value", ["7.0", "-3.0"])
def test_probabilities_outside_0_1_are_refused_by_report_and_calibrate(run_copy, capsys, value):
    frame = pd.read_csv(run_copy / PREDICTIONS_CSV)
    frame.loc[1, "prob_benign"] = float(value)
    frame.to_csv(run_copy / PREDICTIONS_CSV, index=False)
    code, _, err = run_cli(capsys, "report", run_copy)
    line = one_error_line(err)
    assert code == 1 and "predictions.csv: column 'prob_benign', row(s) 3: " in line and "not a probability" in line
    val = run_copy / "predictions_val.csv"
    frame = pd.read_csv(val)
    frame.loc[0, "prob_normal"] = float(value)
    frame.to_csv(val, index=False)
    files = {p.name: p.read_bytes() for p in run_copy.glob("*.csv")} | {"model.json": (run_copy / "model.json").read_bytes()}
    code, _, err = run_cli(capsys, "calibrate", run_copy)
    assert code == 1 and "predictions_val.csv: column 'prob_normal', row(s) 2" in one_error_line(err)
    assert files == {p.name: p.read_bytes() for p in run_copy.glob("*.csv")} | {"model.json": (run_copy / "model.json").read_bytes()}


def test_manifest_paths_that_leave_the_data_folder_are_refused(synthetic_busi, tiny_run, tmp_path, capsys):
    def escape(frame):
        frame.loc[0, "image"] = "../../etc/passwd"
        frame.loc[1, "image"] = "/etc/passwd"
        frame.loc[2, "mask"] = "../../etc/shadow"

    manifest = _edited_manifest(synthetic_busi, tmp_path, escape)
    check = check_manifest(manifest, root=synthetic_busi["root"], verify_hash=False)
    problems = " ".join(check.problems)
    assert not check.ok
    assert "column 'image': row(s) 2 (../../etc/passwd), 3 (/etc/passwd) leave the data folder" in problems
    assert "column 'mask': row(s) 4 (../../etc/shadow) leave the data folder" in problems
    code, out, _ = run_cli(capsys, "prepare", "--check", manifest, "--root", synthetic_busi["root"])
    assert code == 1 and "leave the data folder" in out
    code, _, err = run_cli(capsys, "evaluate", tiny_run, "--manifest", manifest, "--root", synthetic_busi["root"],
                           "--split", "all", "--out", tmp_path / "out")
    assert code == 1 and "leave the data folder" in one_error_line(err)
    assert not (tmp_path / "out" / PREDICTIONS_CSV).exists()


@pytest.mark.parametrize("case", ["leak", "duplicate", "bogus split", "label out of range", "missing image"])
def test_train_runs_the_checks_of_prepare_check(case, synthetic_busi, tiny_train_config, tmp_path):
    from medvit.train import train
    from medvit.train.config import config_from_dict

    def edit(frame):
        test_row = frame.index[frame["split"] == "test"][0]
        train_row = frame.index[frame["split"] == "train"][0]
        if case == "leak":  # the same image (its group) in train and test
            frame.loc[test_row, ["image", "group", "label", "label_name", "mask"]] = frame.loc[
                train_row, ["image", "group", "label", "label_name", "mask"]
            ].values
        elif case == "duplicate":
            frame.loc[test_row] = frame.loc[train_row]
        elif case == "bogus split":
            frame.loc[train_row, "split"] = "bogus"
        elif case == "label out of range":
            frame.loc[train_row, "label"] = 9
        else:
            frame.loc[train_row, "image"] = "Dataset_BUSI_with_GT/benign/gone.png"

    manifest = _edited_manifest(synthetic_busi, tmp_path, edit)
    expected = {
        "leak": "group(s) in more than one split",
        "duplicate": "list the same image more than once",
        "bogus split": "column 'split': row(s) ",
        "label out of range": "column 'label': row(s) ",
        "missing image": "1 file(s) missing under",
    }[case]
    assert expected in " ".join(check_manifest(manifest, root=synthetic_busi["root"], verify_hash=False).problems)
    out = tmp_path / "run"
    with pytest.raises(ManifestError, match=re.escape(expected)) as caught:
        train(config_from_dict(tiny_train_config(manifest=str(manifest))), out)
    message = str(caught.value)
    assert "\n" not in message and "applying transform" not in message and "0x" not in message
    if case == "missing image":
        assert "Dataset_BUSI_with_GT/benign/gone.png" in message
    assert not (out / "metrics.csv").exists() and not (out / "last_state.pt").exists()


def test_a_colour_photograph_is_no_mask(tmp_path, tiny_run, capsys):
    photo = tmp_path / "photo.png"
    shutil.copy(SAMPLES / "ham10000" / "ISIC_0024375.jpg", tmp_path / "photo.jpg")
    Image.open(tmp_path / "photo.jpg").save(photo)
    with pytest.raises(ImageReadError, match="photo.png: not a binary mask") as caught:
        read_mask(photo)
    assert caught.value.reason == "not a binary mask"
    assert read_mask(photo, label_map=True).max() == 1  # a declared label map: any non-zero label is lesion
    image = tmp_path / "image.png"
    Image.fromarray(read_image(photo)[..., ::-1].copy()).save(image)
    code, _, err = run_cli(capsys, "explain", tiny_run, image, "--mask", photo, "--out", tmp_path / "cams")
    assert code == 1 and "not a binary mask" in err and not (tmp_path / "cams" / "image").exists()


# ----------------------------------------------------------------------------------------- tracebacks
@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "an empty file (0 bytes)"),
        (b"\x80\x04\x95 pickled", "a pickled PyTorch checkpoint"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{broken", "no valid safetensors header"),
    ],
)
def test_a_broken_safetensors_as_pretrained_is_named(content, expected, tmp_path, tiny_train_config, capsys):
    from medvit.models import create_model

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"weights.safetensors: not a readable safetensors file: {expected}")):
        create_model("vvt_tiny", num_classes=3, pretrained=weights, **TINY_VVT)
    code, _, err = run_cli(capsys, "train", "--config", _yaml(tmp_path, tiny_train_config(pretrained=str(weights))),
                           "--out", tmp_path / "run")
    assert code == 1 and expected in one_error_line(err)


def _yaml(tmp_path: Path, cfg: dict) -> Path:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_evaluate_with_a_7_class_manifest_on_a_3_class_run(tiny_run, tmp_path, capsys):
    raw = _folder_dataset(tmp_path / "seven", tuple("abcdefg"), per_class=1)
    prepare_manifest("folder", raw, tmp_path / "seven.csv", num_workers=1, val=0, test=0)
    code, _, err = run_cli(capsys, "evaluate", tiny_run, "--manifest", tmp_path / "seven.csv", "--root", raw,
                           "--split", "all", "--out", tmp_path / "seven_eval")
    assert code == 1 and "classes ['a', 'b', 'c', 'd', 'e', 'f', 'g'] differ from the run's" in one_error_line(err)


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda text: text[: len(text) * 2 // 3], "row(s) "),  # cut mid-row: the last row's probabilities are empty
        (lambda text: "", "empty file (no header, no rows)"),
        (lambda text: text.replace("label,", "lbl,", 1), "missing column(s) ['label']"),
        (lambda text: text.splitlines()[0] + "\n", "no rows (only a header)"),
    ],
)
def test_calibrate_and_report_name_a_corrupt_predictions_file(corrupt, expected, run_copy, capsys):
    val = run_copy / "predictions_val.csv"
    val.write_text(corrupt(val.read_text()))
    info = (run_copy / "model.json").read_bytes()
    code, _, err = run_cli(capsys, "calibrate", run_copy)
    line = one_error_line(err)
    assert code == 1 and "predictions_val.csv: " in line and expected in line
    assert (run_copy / "model.json").read_bytes() == info
    code, _, err = run_cli(capsys, "report", run_copy, "--split", "val")
    assert code == 1 and expected in one_error_line(err)


def test_a_nan_probability_names_file_and_column(run_copy, capsys):
    frame = pd.read_csv(run_copy / PREDICTIONS_CSV)
    frame.loc[0, "prob_malignant"] = np.nan
    frame.to_csv(run_copy / PREDICTIONS_CSV, index=False)
    code, _, err = run_cli(capsys, "report", run_copy)
    assert code == 1 and "predictions.csv: column 'prob_malignant', row(s) 2: nan is not a probability" in one_error_line(err)


# ---------------------------------------------------------------------------------- pretrain dead end
def _pretrain_config(synthetic_busi, **overrides):
    from medvit.pretrain import pretrain_config_from_dict

    cfg = {"student": "vvt_tiny", "student_kwargs": TINY_VVT, "teacher": "tf_efficientnet_lite0",
           "data": [dict(synthetic_busi)], "image_size": 64, "epochs": 1, "batch_size": 8, "lr": 3e-3,
           "warmup_epochs": 0, "device": "cpu", "max_images": 8}
    cfg.update(overrides)
    return pretrain_config_from_dict(cfg)


@pytest.mark.slow
def test_pretrain_validates_before_writing_and_restarts_like_train(synthetic_busi, tiny_run, tmp_path):
    from medvit.pretrain import pretrain

    out = tmp_path / "pretrain"
    with pytest.raises(ValueError, match=r"config key 'image_size' = \[63, 63\]: .*multiples of 32"):
        pretrain(_pretrain_config(synthetic_busi, image_size=[63, 63]), out)
    assert not out.exists()  # nothing written
    out.mkdir()  # a run killed in its first epoch: its description, no committed epoch
    (out / "config.yaml").write_text("student: vvt_tiny\n")
    (out / "model.json").write_text('{"kind": "pretrain"}')
    result = pretrain(_pretrain_config(synthetic_busi), out)  # a fresh start is allowed, as for train
    assert result.epochs_run == 1 and (out / "backbone.safetensors").is_file()
    with pytest.raises(ValueError, match="already holds a run"):
        pretrain(_pretrain_config(synthetic_busi), out)
    with pytest.raises(ValueError, match=r"is a pretrain run \(medvit pretrain\), not a fine-tuned one"):
        pretrain(_pretrain_config(synthetic_busi, teacher=str(out)), tmp_path / "second")
    assert not (tmp_path / "second").exists()


# ---------------------------------------------------------------------------------------- overwrites
def test_explain_never_replaces_the_folder_of_another_image(tiny_run, tmp_path, capsys):
    first, second = tmp_path / "d1" / "img.png", tmp_path / "d2" / "img.png"
    for path, sample in ((first, "benign (345).png"), (second, "malignant (126).png")):
        path.parent.mkdir()
        shutil.copy(SAMPLES / "busi" / sample, path)
    out = tmp_path / "cams"
    assert run_cli(capsys, "explain", tiny_run, first, "--out", out)[0] == 0
    assert run_cli(capsys, "explain", tiny_run, second, "--out", out)[0] == 0
    records = {p.parent.name: json.loads(p.read_text())["image"] for p in out.glob("*/explanation.json")}
    assert records == {"img": str(first), "img_2": str(second)}
    assert run_cli(capsys, "explain", tiny_run, first, "--out", out)[0] == 0  # the same file again: its own folder
    assert sorted(p.name for p in out.iterdir()) == ["img", "img_2"]


# --------------------------------------------------------------------------------------------- small
def test_resuming_a_finished_run_says_so(run_copy, caplog):
    from medvit.train import train

    with caplog.at_level(logging.INFO, logger="medvit"):
        train(None, run_copy, resume=True)
    text = caplog.text
    assert "already finished; re-running the final evaluation only" in text and "at epoch 2/1" not in text


def test_rejected_rows_sort_by_number(tmp_path):
    raw = _folder_dataset(tmp_path / "raw", ("cat", "dog"))
    for index in (1, 2, 9, 10, 100):
        (raw / "cat" / f"note{index}.txt").write_text("not an image")
    result = prepare_manifest("folder", raw, tmp_path / "m.csv", num_workers=1)
    paths = [p for p in pd.read_csv(result.rejected)["path"] if p.startswith("cat/note")]
    assert paths == ["cat/note1.txt", "cat/note2.txt", "cat/note9.txt", "cat/note10.txt", "cat/note100.txt"]


# ------------------------------------------------------------------------------------- DICOM, end to end
def test_prepare_and_evaluate_a_folder_of_dicom_files(tiny_run, tmp_path, capsys):
    raw = _folder_dataset(tmp_path / "dicom", ("benign", "malignant", "normal"), per_class=3, suffix=".dcm")
    (raw / "benign" / "report.dcm").write_bytes(Path(__import__("pydicom").data.get_testdata_file("test-SR.dcm", download=False)).read_bytes())
    cut = raw / "normal" / "img0.dcm"
    cut.write_bytes(cut.read_bytes()[:-300])
    result = prepare_manifest("folder", raw, tmp_path / "dicom.csv", num_workers=1)
    rejected = pd.read_csv(result.rejected).set_index("path")["reason"].to_dict()
    assert rejected == {"benign/report.dcm": "no pixel data", "normal/img0.dcm": "truncated pixel data"}
    assert result.num_images == 8 and check_manifest(result.manifest).ok
    require_valid_manifest(result.manifest)
    code, out, _ = run_cli(capsys, "evaluate", tiny_run, "--manifest", result.manifest, "--root", raw, "--split", "all",
                           "--out", tmp_path / "eval")
    assert code == 0
    predictions = (tmp_path / "eval" / PREDICTIONS_CSV).read_text()
    assert len(pd.read_csv(tmp_path / "eval" / PREDICTIONS_CSV)) == 8
    assert not any(value in predictions + out for value in PATIENT.values())


def test_explain_a_dicom_writes_no_header_data(tiny_run, tmp_path, capsys):
    gray = read_image(SAMPLES / "busi" / "malignant (126).png")[..., 0]
    image = write_dicom(tmp_path / "scan.dcm", np.stack([gray, 255 - gray]))
    sr = Path(__import__("pydicom").data.get_testdata_file("rtplan.dcm", download=False))
    code, out, err = run_cli(capsys, "explain", tiny_run, image, sr, "--out", tmp_path / "cams", "--frame", "2")
    assert code == 1 and "rtplan.dcm: no pixel data (SOP class RT Plan Storage)" in err  # the batch went on
    folder = tmp_path / "cams" / "scan"
    written = b"".join(p.read_bytes() for p in folder.iterdir())
    assert (folder / "explanation.json").is_file() and (folder / "grid.png").is_file()
    assert not any(value.encode() in written for value in PATIENT.values())
    assert not any(value in out + err for value in PATIENT.values())
