"""medvit.config_files: a config file's ``base:`` chain, expanded by one reader for train, pretrain and the study."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medvit.config_files import load_yaml_config, merge_config
from medvit.pretrain.config import load_pretrain_config
from medvit.train.config import config_from_dict, config_to_dict, load_config


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_merge_config_merges_mappings_and_replaces_everything_else():
    base = {"lr": 1e-3, "image_size": [160, 160], "distill": {"teacher": "runs/t", "alpha": 0.5}, "pretrained": "w"}
    variant = {"image_size": [224], "distill": {"alpha": 0.9}, "pretrained": None, "seed": 1}
    assert merge_config(base, variant) == {
        "lr": 1e-3, "image_size": [224], "distill": {"teacher": "runs/t", "alpha": 0.9}, "pretrained": None, "seed": 1,
    }
    assert base["distill"] == {"teacher": "runs/t", "alpha": 0.5}  # inputs untouched
    # a mapping over a scalar (or the reverse) replaces it
    assert merge_config({"distill": None}, {"distill": {"alpha": 0.9}}) == {"distill": {"alpha": 0.9}}
    assert merge_config({"distill": {"alpha": 0.9}}, {"distill": None}) == {"distill": None}


def test_a_variant_is_its_base_with_its_keys_merged_over(tmp_path):
    _write(tmp_path / "base.yaml", "lr: 1.0e-3\nepochs: 10\nimage_size: [160, 160]\n"
                                   "early_stopping: {metric: val_qwk, patience: 4}\ndata: [{manifest: a.csv, root: a}]\n")
    _write(tmp_path / "variant.yaml", "# comment\nbase: base.yaml\nepochs: 30\nimage_size: [224, 224]\n"
                                      "early_stopping: {patience: 10}\ndata: [{manifest: b.csv, root: b}]\n")
    assert load_yaml_config(tmp_path / "variant.yaml") == {
        "lr": 1e-3, "epochs": 30, "image_size": [224, 224],
        "early_stopping": {"metric": "val_qwk", "patience": 10},  # the section merged key by key
        "data": [{"manifest": "b.csv", "root": "b"}],  # a list replaced whole, not merged item by item
    }
    assert load_yaml_config(tmp_path / "base.yaml")["epochs"] == 10  # a base stays a complete config itself


def test_a_base_may_have_a_base_and_paths_are_relative_to_the_file_naming_them(tmp_path):
    _write(tmp_path / "recipes" / "root.yaml", "epochs: 10\nlr: 1.0e-3\nseed: 0\n")
    _write(tmp_path / "recipes" / "middle.yaml", "base: root.yaml\nlr: 5.0e-4\n")
    _write(tmp_path / "runs" / "leaf.yaml", "base: ../recipes/middle.yaml\nseed: 1\n")
    assert load_yaml_config(tmp_path / "runs" / "leaf.yaml") == {"epochs": 10, "lr": 5e-4, "seed": 1}


def test_a_cycle_of_bases_is_an_error_listing_it(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\nepochs: 1\n")
    _write(tmp_path / "b.yaml", "base: c.yaml\n")
    _write(tmp_path / "c.yaml", "base: a.yaml\n")
    with pytest.raises(ValueError, match=r"a\.yaml -> b\.yaml -> c\.yaml -> a\.yaml"):
        load_yaml_config(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ValueError, match=r"self\.yaml: 'base: self\.yaml' makes a cycle"):
        load_yaml_config(tmp_path / "self.yaml")


def test_a_missing_base_names_the_file_that_names_it(tmp_path):
    _write(tmp_path / "top.yaml", "base: middle.yaml\n")
    _write(tmp_path / "middle.yaml", "base: gone.yaml\nepochs: 3\n")
    with pytest.raises(FileNotFoundError, match=r"middle\.yaml: 'base: gone\.yaml' not found .*relative to the file"):
        load_yaml_config(tmp_path / "top.yaml")
    with pytest.raises(FileNotFoundError, match=r"config file .*absent\.yaml not found; see examples"):
        load_yaml_config(tmp_path / "absent.yaml", not_found_hint="see examples")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: [a.yaml, b.yaml]\n", "config key 'base': expected the file name"),
        ("base: null\n", "config key 'base': expected the file name"),
        ("- epochs\n", "expected a mapping of config keys at the top level"),
        ("epochs: [1\n", "not valid YAML"),
    ],
)
def test_a_bad_file_or_base_value_is_an_error_naming_the_file(tmp_path, text, message):
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ValueError, match=message) as caught:
        load_yaml_config(path)
    assert str(path) in str(caught.value)


def test_an_empty_file_is_an_empty_config(tmp_path):
    assert load_yaml_config(_write(tmp_path / "empty.yaml", "# nothing\n")) == {}


def test_medvit_train_reads_a_variant_and_records_it_expanded(tmp_path):
    """load_config is what `medvit train --config` calls; config.yaml holds config_to_dict of its result."""
    _write(tmp_path / "base.yaml", "model: vvt_nano\nepochs: 10\nlr: 1.0e-3\nlabel_smoothing: 0.1\n"
                                   "distill: {teacher: runs/teacher, alpha: 0.5}\n")
    _write(tmp_path / "variant.yaml", "base: base.yaml\nlr: 3.0e-4\nlabel_smoothing: 0.0\nordinal_labels: 2.0\n"
                                      "distill: {alpha: 0.9}\n")
    cfg = load_config(tmp_path / "variant.yaml", ["epochs=4"])  # --set applies after the expansion
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.ordinal_labels) == ("vvt_nano", 4, 3e-4, 2.0)
    assert (cfg.distill.teacher, cfg.distill.alpha) == ("runs/teacher", 0.9)
    written = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    assert "base" not in written and config_from_dict(written) == cfg  # the run's config.yaml stands alone


def test_medvit_pretrain_reads_a_variant(tmp_path):
    _write(tmp_path / "base.yaml", "student: vvt_nano\nteacher: tf_efficientnet_lite2\nepochs: 8\n"
                                   "data: [{manifest: a.csv, root: a}, {manifest: b.csv, root: b}]\n")
    _write(tmp_path / "variant.yaml", "base: base.yaml\nstudent: vvt_tiny\ndata: [{manifest: c.csv, root: c}]\n")
    cfg = load_pretrain_config(tmp_path / "variant.yaml", ["data.0.root=elsewhere"])
    assert (cfg.student, cfg.teacher, cfg.epochs) == ("vvt_tiny", "tf_efficientnet_lite2", 8)
    assert [(s.manifest, s.root) for s in cfg.sources] == [("c.csv", "elsewhere")]


def test_base_is_not_a_config_key_outside_a_file():
    """Only a file names a base; a mapping handed to the validator with one is an unknown key."""
    with pytest.raises(ValueError, match="unknown config key 'base'"):
        config_from_dict({"base": "other.yaml"})
