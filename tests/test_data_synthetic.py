"""medvit synth / medvit prepare: synthetic raw layouts and the CLI wrappers."""

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medvit.commands import data as data_commands
from medvit.data.images import read_image
from medvit.data.manifest import read_manifest
from medvit.data.synthetic import make_synthetic


def run_cli(*argv: str) -> int:
    """What ``medvit`` does for the data commands: parse, call the function."""
    parser = argparse.ArgumentParser(prog="medvit")
    data_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([str(arg) for arg in argv])
    return args.func(args)


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("dataset", ["busi", "ham10000", "eyepacs"])
def test_synth_prepare_cli(tmp_path, dataset, capsys):
    raw = tmp_path / "raw"
    assert run_cli("synth", "--out", raw, "--dataset", dataset, "--per-class", 6, "--seed", 1) == 0
    assert run_cli("prepare", dataset, raw, "--out", tmp_path / "m.csv", "--seed", 0) == 0
    printed = capsys.readouterr().out
    assert "rejected: 0" in printed and "train" in printed
    frame = read_manifest(tmp_path / "m.csv")
    assert (frame.groupby("label_name").size() == 6).all()
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    assert set(frame["split"]) == {"train", "val", "test"}
    assert run_cli("prepare", "--check", tmp_path / "m.csv") == 0
    make_synthetic(tmp_path / "again", dataset, per_class=6, seed=1)
    assert tree_digest(raw) == tree_digest(tmp_path / "again")  # deterministic
    with pytest.raises(ValueError, match="not empty"):
        make_synthetic(raw, dataset)


def test_synth_layout_details(tmp_path):
    busi = make_synthetic(tmp_path / "busi", "busi", per_class=5)
    assert (busi / "Dataset_BUSI_with_GT/benign/benign (5)_mask_1.png").is_file()
    ham = make_synthetic(tmp_path / "ham", "ham10000", per_class=6)
    meta = pd.read_csv(ham / "HAM10000_metadata.csv")
    assert (meta.groupby("lesion_id").size() > 1).any()
    assert any((ham / "HAM10000_images_part_2").iterdir())
    eye = make_synthetic(tmp_path / "eye", "eyepacs", per_class=4)
    labels = pd.read_csv(eye / "trainLabels.csv")
    labels["patient"] = labels["image"].str.split("_").str[0]
    assert (labels.groupby("patient").size() == 2).all()
    assert (labels.groupby("patient")["level"].nunique() > 1).any()  # some patients: two grades
    assert read_image(eye / "train" / f"{labels['image'][0]}.jpeg").shape == (72, 96, 3)


@pytest.mark.parametrize("dataset", ["busi", "ham10000", "eyepacs"])
def test_synthetic_classes_are_learnable(tmp_path, dataset):
    """A nearest-centroid classifier on colour histograms beats chance by far on held-out images."""
    raw = make_synthetic(tmp_path / "raw", dataset, per_class=10, seed=0)
    run_cli("prepare", dataset, raw, "--out", tmp_path / "m.csv")
    frame = read_manifest(tmp_path / "m.csv")
    def describe(path: Path) -> np.ndarray:
        rgb = read_image(path)
        histogram = np.concatenate([np.histogram(rgb[..., c], bins=16, range=(0, 256))[0] for c in range(3)])
        return histogram / rgb[..., 0].size

    features = np.stack([describe(raw / p) for p in frame["image"]])
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    train = (frame["split"] == "train").to_numpy()
    labels = frame["label"].to_numpy()
    classes = np.unique(labels[train])
    centroids = np.stack([features[train & (labels == c)].mean(0) for c in classes])
    predicted = classes[np.argmin(((features[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    accuracy = (predicted == labels[~train]).mean()
    chance = 1 / len(classes)
    assert accuracy > chance + 0.4, f"{dataset}: held-out accuracy {accuracy:.2f}"


def test_prepare_cli_errors(tmp_path):
    with pytest.raises(ValueError, match="missing arguments"):
        run_cli("prepare", "busi", tmp_path)
    with pytest.raises(ValueError, match="either"):
        run_cli("prepare", "busi", tmp_path, "--check", tmp_path / "m.csv")
    with pytest.raises(FileNotFoundError, match="benign"):
        run_cli("prepare", "busi", tmp_path, "--out", tmp_path / "m.csv")
