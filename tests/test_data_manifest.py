"""medvit.data.manifest on the real layouts (tests/data) and on broken inputs."""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medvit.data import get_spec
from medvit.data.datasets import LayoutError
from medvit.boundary.manifest import check_manifest
from medvit.data.manifest import (
    assign_splits,
    manifest_hash,
    prepare_manifest,
    read_manifest,
    read_manifest_info,
)

DATA = Path(__file__).parent / "data"
BUSI = "Dataset_BUSI_with_GT"


def groups_in_one_split(frame: pd.DataFrame) -> bool:
    return bool((frame.groupby("group")["split"].nunique() == 1).all())


def rejected(result) -> pd.DataFrame:
    return pd.read_csv(result.rejected, dtype=str, keep_default_na=False)


def test_ham10000_layout(tmp_path):
    result = prepare_manifest("ham10000", DATA / "ham10000", tmp_path / "ham.csv", num_workers=1)
    frame = read_manifest(result.manifest)
    files = sorted(p.relative_to(DATA / "ham10000").as_posix() for p in (DATA / "ham10000").rglob("*.jpg"))
    assert sorted(frame["image"]) == files  # every image, nothing else
    # sex, age, localization: reporting-only subgroup columns; dx_type is never read
    assert list(frame.columns) == ["image", "label", "label_name", "group", "split", "sex", "age", "localization"]
    assert groups_in_one_split(frame)
    lesion = frame[frame["group"] == "HAM_0000778"]
    assert len(lesion) == 3 and lesion["split"].nunique() == 1
    assert {"HAM10000_images_part_2/ISIC_0031039.jpg"} <= set(lesion["image"])
    spec = get_spec("ham10000")
    assert all(spec.class_names[label] == name for label, name in zip(frame["label"], frame["label_name"]))
    assert result.counts.loc["nv", "total"] == 3 and result.counts.loc["bcc", "total"] == 2
    assert result.counts.loc["total", "total"] == 7
    missing = rejected(result)
    assert sorted(missing["reason"]) == ["metadata row without image"] * 3  # reported, not fatal
    assert any("ISIC_0030652" in path for path in missing["path"])
    info = read_manifest_info(result.manifest)
    assert info["class_names"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert info["seed"] == 0 and len(info["raw_hash"]) == 64 and info["num_rejected"] == 3


def test_eyepacs_layout(tmp_path):
    result = prepare_manifest("eyepacs", DATA / "eyepacs", tmp_path / "eye.csv", num_workers=1)
    frame = read_manifest(result.manifest)
    assert len(frame) == len(list((DATA / "eyepacs/train").glob("*.jpeg"))) == 10
    assert sorted(frame["group"].unique()) == ["1051", "15", "317", "457", "72"]
    assert (frame.groupby("group").size() == 2).all() and groups_in_one_split(frame)
    patient15 = frame[frame["group"] == "15"].set_index("image")
    assert patient15.loc["train/15_left.jpeg", "label"] == 1 and patient15.loc["train/15_right.jpeg", "label"] == 2
    assert sorted(rejected(result)["reason"]) == ["label row without image"] * 4
    assert get_spec("eyepacs").is_ordinal


def test_busi_layout_masks_and_conflicting_duplicate(tmp_path):
    result = prepare_manifest("busi", DATA / "busi", tmp_path / "busi.csv", num_workers=1)
    frame = read_manifest(result.manifest).set_index("image")
    assert len(frame) == 4  # 6 images minus the conflicting identical pair
    drop = rejected(result)
    assert sorted(drop["path"]) == [f"{BUSI}/benign/benign (433).png", f"{BUSI}/malignant/malignant (145).png"]
    assert set(drop["reason"]) == {"duplicate with conflicting label"}
    masks = frame.loc[f"{BUSI}/benign/benign (195).png", "mask"].split(";")
    assert [Path(m).name for m in masks] == [f"benign (195){s}.png" for s in ("_mask", "_mask_1", "_mask_2")]
    assert result.duplicate_sets == [[f"{BUSI}/benign/benign (433).png", f"{BUSI}/malignant/malignant (145).png"]]

    kept = prepare_manifest("busi", DATA / "busi", tmp_path / "keep.csv", keep_conflicting=True, num_workers=1)
    frame = read_manifest(kept.manifest)
    pair = frame[frame["image"].str.contains(r"\(433\)|\(145\)")]
    assert len(pair) == 2 and pair["group"].nunique() == 1 and pair["split"].nunique() == 1


def copy_busi(tmp_path: Path) -> Path:
    raw = tmp_path / "busi"
    shutil.copytree(DATA / "busi", raw)
    return raw


def test_busi_same_label_duplicates_group_or_drop(tmp_path):
    raw = copy_busi(tmp_path)
    folder = raw / BUSI / "benign"
    shutil.copy(folder / "benign (253).png", folder / "benign (999).png")
    shutil.copy(folder / "benign (253)_mask.png", folder / "benign (999)_mask.png")
    grouped = read_manifest(prepare_manifest("busi", raw, tmp_path / "g.csv", num_workers=1).manifest)
    pair = grouped[grouped["image"].str.contains(r"\(253\)|\(999\)")]
    assert len(pair) == 2 and pair["group"].nunique() == 1 and groups_in_one_split(grouped)
    result = prepare_manifest("busi", raw, tmp_path / "d.csv", duplicates="drop", num_workers=1)
    dropped = read_manifest(result.manifest)
    assert f"{BUSI}/benign/benign (253).png" in set(dropped["image"])
    assert f"{BUSI}/benign/benign (999).png" not in set(dropped["image"])
    assert "duplicate dropped" in set(rejected(result)["reason"])


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_bad_files_rejected_legal_ones_converted(tmp_path):
    """Folder layout with every kind of bad and odd file: each rejected with its reason or converted."""
    raw = tmp_path / "raw"
    for name in ("cat", "dog"):
        (raw / name).mkdir(parents=True)
        for index in range(4):
            colour = (index * 40, 100, 50 if name == "cat" else 200)
            Image.new("RGB", (40, 30), colour).save(raw / name / f"ok{index}.png")
    cat = raw / "cat"
    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 128))
    rgba.save(cat / "rgba.png")
    palette = Image.new("P", (40, 30), 3)
    palette.putpalette(list(range(256)) * 3)
    palette.save(cat / "palette.png")
    Image.fromarray(np.full((30, 40), 40_000, np.uint16)).save(cat / "gray16.png")
    good_png = encoded(Image.new("RGB", (40, 30)))
    (cat / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (cat / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (cat / "empty.png").write_bytes(b"")
    from test_data_images import png_header_only

    (cat / "bomb.png").write_bytes(png_header_only(20_000, 10_000))
    (cat / "notes.txt").write_text("not an image")
    result = prepare_manifest("folder", raw, tmp_path / "m.csv", num_workers=1)
    frame = read_manifest(result.manifest)
    reasons = dict(zip(rejected(result)["path"], rejected(result)["reason"]))
    assert reasons == {
        "cat/truncated.png": "truncated or corrupt",
        "cat/corrupt.jpg": reasons["cat/corrupt.jpg"],
        "cat/empty.png": "empty file",
        "cat/bomb.png": "decompression bomb",
        "cat/notes.txt": "not an image file",
    }
    assert reasons["cat/corrupt.jpg"] in ("not a readable image", "truncated or corrupt")
    legal = {f"cat/ok{i}.png" for i in range(4)} | {f"dog/ok{i}.png" for i in range(4)}
    legal |= {"cat/rgba.png", "cat/palette.png", "cat/gray16.png"}
    assert set(frame["image"]) == legal  # nothing else is lost
    assert read_manifest_info(result.manifest)["class_names"] == ["cat", "dog"]


def test_label_rows_pointing_nowhere_and_unknown_labels(tmp_path):
    raw = tmp_path / "ham"
    shutil.copytree(DATA / "ham10000", raw)
    meta = raw / "HAM10000_metadata.csv"
    meta.write_text(
        meta.read_text()
        + "HAM_9999999,ISIC_9999999,nv,histo,50.0,male,back\n"  # no image
        + "HAM_0005392,ISIC_0024436,bcc,histo,80.0,male,back\n"  # duplicate row
    )
    text = meta.read_text().replace("HAM_0002954,ISIC_0024329,akiec", "HAM_0002954,ISIC_0024329,melanoma-ish")
    meta.write_text(text)
    result = prepare_manifest("ham10000", raw, tmp_path / "ham.csv", num_workers=1)
    table = rejected(result).set_index("path")
    assert table.loc["HAM10000_images_part_1/ISIC_0024329.jpg", "reason"] == "unknown label"
    assert table.loc["HAM10000_metadata.csv:12 (ISIC_9999999)", "reason"] == "metadata row without image"
    assert "duplicate metadata row" in set(table["reason"])
    assert len(read_manifest(result.manifest)) == 6
    # the Kaggle download holds lower-case copies of the image folders: the second copy is reported
    (raw / "ham10000_images_part_1").mkdir()
    shutil.copy(raw / "HAM10000_images_part_1/ISIC_0024432.jpg", raw / "ham10000_images_part_1")
    result = prepare_manifest("ham10000", raw, tmp_path / "ham2.csv", num_workers=1)
    table = rejected(result).set_index("path")
    assert table.loc["ham10000_images_part_1/ISIC_0024432.jpg", "reason"] == "second copy of an image id"
    assert "HAM10000_images_part_1/ISIC_0024432.jpg" in set(read_manifest(result.manifest)["image"])

    eye = tmp_path / "eye"
    shutil.copytree(DATA / "eyepacs", eye)
    labels = eye / "trainLabels.csv"
    labels.write_text(labels.read_text().replace("72_left,0", "72_left,7"))
    (eye / "train" / "99_left.jpeg").write_bytes((eye / "train" / "72_right.jpeg").read_bytes())
    result = prepare_manifest("eyepacs", eye, tmp_path / "eye.csv", num_workers=1)
    table = rejected(result).set_index("path")
    assert table.loc["train/72_left.jpeg", "reason"] == "unknown label"
    assert table.loc["train/99_left.jpeg", "reason"] == "image without label row"
    assert len(read_manifest(result.manifest)) == 9


def test_unrecognised_layout_and_nothing_usable(tmp_path):
    with pytest.raises(LayoutError, match="HAM10000_metadata.csv"):
        prepare_manifest("ham10000", DATA / "eyepacs", tmp_path / "x.csv")
    with pytest.raises(LayoutError, match="benign"):
        prepare_manifest("busi", DATA / "eyepacs", tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        prepare_manifest("eyepacs", tmp_path / "nowhere", tmp_path / "x.csv")
    raw = tmp_path / "raw" / "a"
    raw.mkdir(parents=True)
    (raw / "empty.png").write_bytes(b"")
    with pytest.raises(RuntimeError, match="no usable"):
        prepare_manifest("folder", raw.parent, tmp_path / "x.csv")
    assert (tmp_path / "x.rejected.csv").is_file()
    with pytest.raises(KeyError, match="unknown dataset"):
        get_spec("mnist")


def test_same_seed_identical_different_seed_differs(tmp_path):
    raw = tmp_path / "syn"
    from medvit.data.synthetic import make_synthetic

    make_synthetic(raw, "ham10000", per_class=6, seed=3)
    first = prepare_manifest("ham10000", raw, tmp_path / "a.csv", seed=0, num_workers=1)
    again = prepare_manifest("ham10000", raw, tmp_path / "b.csv", seed=0, num_workers=2)
    other = prepare_manifest("ham10000", raw, tmp_path / "c.csv", seed=1, num_workers=1)
    assert first.manifest.read_bytes() == again.manifest.read_bytes()
    assert manifest_hash(first.manifest) == manifest_hash(again.manifest)
    assert first.info.read_bytes() == again.info.read_bytes()
    a, c = read_manifest(first.manifest), read_manifest(other.manifest)
    assert (a["image"] == c["image"]).all() and (a["split"] != c["split"]).any()
    largest = int(a.groupby("group").size().max())
    assert (first.counts - other.counts).abs().drop(index="total", columns="total").to_numpy().max() <= largest
    assert groups_in_one_split(a) and groups_in_one_split(c)


def test_assign_splits_rare_classes_and_groups():
    labels = [0] * 200 + [1] * 3 + [2] * 5 + [3] * 2
    groups = [f"g{i // 2}" for i in range(200)] + [f"r{i}" for i in range(3)]
    groups += [f"s{i // 2}" for i in range(5)] + ["t0", "t1"]
    for seed in range(5):
        splits = assign_splits(labels, groups, val=0.15, test=0.15, seed=seed)
        frame = pd.DataFrame({"label": labels, "group": groups, "split": splits})
        assert groups_in_one_split(frame)
        assert set(frame[frame["label"] == 1]["split"]) == {"train", "val", "test"}  # 3 groups: one each
        assert set(frame[frame["label"] == 2]["split"]) == {"train", "val", "test"}
        major = frame[frame["label"] == 0]["split"].value_counts()
        assert abs(major["train"] - 140) <= 2 and abs(major["test"] - 30) <= 2
        np.testing.assert_array_equal(splits, assign_splits(labels, groups, 0.15, 0.15, seed))
    assert set(assign_splits(labels, groups, val=0.0, test=0.2, seed=0)) == {"train", "test"}
    with pytest.raises(ValueError, match="val"):
        assign_splits(labels, groups, val=0.6, test=0.5)


def test_check_manifest_reports_changes(tmp_path):
    raw = copy_busi(tmp_path)
    result = prepare_manifest("busi", raw, tmp_path / "busi.csv", num_workers=1)
    assert check_manifest(result.manifest).ok
    shutil.move(raw, tmp_path / "moved")
    raw = tmp_path / "moved"
    assert check_manifest(result.manifest, root=raw).ok
    folder = raw / BUSI / "benign"
    (folder / "benign (253)_mask.png").write_bytes((folder / "benign (195)_mask.png").read_bytes())
    (folder / "benign (195)_mask_2.png").unlink()
    shutil.copy(folder / "benign (195).png", folder / "benign (500).png")
    check = check_manifest(result.manifest, root=raw)
    assert not check.ok and check.raw_hash_matches is False
    assert check.modified == [f"{BUSI}/benign/benign (253)_mask.png"]
    assert check.removed == [f"{BUSI}/benign/benign (195)_mask_2.png"]
    assert check.added == [f"{BUSI}/benign/benign (500).png"]
    assert any("missing" in problem for problem in check.problems)
    frame = read_manifest(result.manifest)
    frame.loc[0, "group"] = frame.loc[1, "group"]
    frame.loc[0, "split"] = "test" if frame.loc[1, "split"] != "test" else "train"
    frame.loc[2, "label"] = 9
    frame.to_csv(result.manifest, index=False)
    problems = " ".join(check_manifest(result.manifest, root=raw, verify_hash=False).problems)
    assert "more than one split" in problems and "row(s) 4 (9) outside 0..2" in problems


def _cat_dog(raw: Path) -> Path:
    for name in ("cat", "dog"):
        (raw / name).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (40, 30), (index * 40, 100, 50 if name == "cat" else 200)).save(raw / name / f"ok{index}.png")
    return raw


def test_rejections_are_deterministic_and_name_broken_symlinks(tmp_path):
    raw = _cat_dog(tmp_path / "raw")
    cat = raw / "cat"
    (cat / "text.png").write_bytes(b"not an image, only text")
    (cat / "gone.png").symlink_to("nowhere.png")
    (cat / "loop_a.png").symlink_to("loop_b.png")
    (cat / "loop_b.png").symlink_to("loop_a.png")
    (cat / "alias.png").symlink_to("ok0.png")  # a working link is an image like any other
    Image.new("RGB", (40, 30), (1, 2, 3)).save(cat / "photo.webp", lossless=True)
    first = prepare_manifest("folder", raw, tmp_path / "a" / "m.csv", num_workers=2)
    again = prepare_manifest("folder", raw, tmp_path / "b" / "m.csv", num_workers=1)
    assert first.rejected.read_bytes() == again.rejected.read_bytes()
    assert first.manifest.read_bytes() == again.manifest.read_bytes()
    table = rejected(first).set_index("path")
    assert dict(table["reason"]) == {
        "cat/gone.png": "dangling symlink",
        "cat/loop_a.png": "symlink loop",
        "cat/loop_b.png": "symlink loop",
        "cat/text.png": "not a readable image",
    }
    assert table.loc["cat/gone.png", "detail"] == "link to nowhere.png, which does not exist"
    assert " at 0x" not in first.rejected.read_text()
    images = set(read_manifest(first.manifest)["image"])
    assert {"cat/photo.webp", "cat/alias.png"} <= images and len(images) == 10


def test_prepare_into_an_unwritable_folder_is_one_line(tmp_path, capsys):
    from medvit.cli import main

    raw = _cat_dog(tmp_path / "raw")
    (tmp_path / "file").write_text("a file, not a folder")
    assert main(["prepare", "folder", str(raw), "--out", str(tmp_path / "file" / "m.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"medvit prepare: error: cannot write the manifest into {tmp_path / 'file'} (a file, not a folder); "
        "choose a writable --out folder"
    )
    assert not any("Traceback" in line for line in err)


def test_prepare_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    from medvit.cli import main

    raw = _cat_dog(tmp_path / "raw")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user (root) can write into a mode 555 folder")
        assert main(["prepare", "folder", str(raw), "--out", str(locked / "m.csv")]) == 1
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"medvit prepare: error: cannot write the manifest into {locked} (Permission denied); "
        "choose a writable --out folder"
    )
    assert not list(locked.iterdir())


def test_clinical_questions_and_subgroup_columns_recorded(tmp_path):
    ham = read_manifest_info(prepare_manifest("ham10000", DATA / "ham10000", tmp_path / "ham.csv", num_workers=1).manifest)
    assert ham["questions"] == [
        {"name": "melanoma", "positive_classes": ["mel"]},
        {"name": "malignant", "positive_classes": ["mel", "bcc", "akiec"]},
    ]
    assert ham["subgroup_columns"] == ["sex", "age", "localization"]  # this metadata has no 'dataset' column
    eye = prepare_manifest("eyepacs", DATA / "eyepacs", tmp_path / "eye.csv", num_workers=1)
    frame = read_manifest(eye.manifest).set_index("image")
    assert frame.loc["train/15_left.jpeg", "eye"] == "left" and frame.loc["train/15_right.jpeg", "eye"] == "right"
    assert read_manifest_info(eye.manifest)["questions"][0]["positive_classes"] == ["2", "3", "4"]
    assert read_manifest_info(eye.manifest)["raw_dir"] == str(DATA / "eyepacs")  # as given, not resolved


def test_folder_positive_classes_option(tmp_path):
    raw = tmp_path / "raw"
    for name in ("benign", "malignant"):
        (raw / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0) if name == "benign" else (0, i * 40, 0)).save(raw / name / f"{i}.png")
    result = prepare_manifest("folder", raw, tmp_path / "f.csv", positive_classes=["malignant"], num_workers=1)
    assert read_manifest_info(result.manifest)["questions"] == [{"name": "malignant", "positive_classes": ["malignant"]}]
    assert read_manifest_info(prepare_manifest("folder", raw, tmp_path / "g.csv", num_workers=1).manifest)["questions"] == []
    with pytest.raises(ValueError, match=r"--positive \['cancer'\].*\['benign', 'malignant'\]"):
        prepare_manifest("folder", raw, tmp_path / "h.csv", positive_classes=["cancer"], num_workers=1)
    from medvit.cli import main

    assert main(["prepare", "folder", str(raw), "--out", str(tmp_path / "cli.csv"), "--positive", "malignant"]) == 0
    assert read_manifest_info(tmp_path / "cli.csv")["questions"][0]["positive_classes"] == ["malignant"]
