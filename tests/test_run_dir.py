"""The run directory's readers: kept epoch, split sizes, training time, selection, config; report summaries."""

from __future__ import annotations

import json
import math

import pytest

from medvit.report import format_estimate, read_summary, summary_estimate
from medvit.run_dir import (
    METRICS_CSV,
    REPORT_DIR,
    SELECTION_JSON,
    ReportFiles,
    kept_epoch,
    monitored_metric,
    read_config,
    read_metrics,
    read_model_info,
    read_selection,
    split_sizes,
    training_seconds,
    write_metrics_csv,
)

NAN = float("nan")


def test_monitored_metric_is_the_configs_or_the_engines_default():
    from medvit.train.config import TrainConfig

    assert monitored_metric({"early_stopping": {"metric": "val_qwk", "patience": 3}}) == "val_qwk"
    assert monitored_metric({"epochs": 3}) == TrainConfig().early_stopping.metric == "val_balanced_accuracy"
    assert monitored_metric({"early_stopping": None}) == "val_balanced_accuracy"


def test_kept_epoch_is_the_first_improvement():
    history = [
        {"val_loss": 1.0, "val_macro_f1": 0.1},
        {"val_loss": 0.7, "val_macro_f1": 0.6},
        {"val_loss": 0.7, "val_macro_f1": 0.6},  # a tie does not improve
        {"val_loss": 0.8, "val_macro_f1": NAN},  # NaN never improves
    ]
    assert kept_epoch(history, "val_loss") == 1  # minimised
    assert kept_epoch(history, "val_macro_f1") == 1  # maximised
    assert kept_epoch([{"val_loss": NAN}, {"val_loss": NAN}], "val_loss") == 1  # none improved: the last
    assert kept_epoch([{"val_loss": 2.0}, {}, {"val_loss": 1.0}], "val_loss") == 2  # a missing value is skipped
    with pytest.raises(KeyError, match="val_qwk"):
        kept_epoch(history, "val_qwk")
    with pytest.raises(ValueError, match="no epochs"):
        kept_epoch([], "val_loss")


def test_metrics_csv_round_trip_and_training_time(tmp_path):
    history = [{"epoch": 1, "val_loss": 0.5, "epoch_time_s": 2.5}, {"epoch": 2, "val_loss": 0.25, "epoch_time_s": 3.0}]
    write_metrics_csv(tmp_path / METRICS_CSV, history)
    rows = read_metrics(tmp_path)
    assert rows == [{"epoch": 1.0, "val_loss": 0.5, "epoch_time_s": 2.5}, {"epoch": 2.0, "val_loss": 0.25, "epoch_time_s": 3.0}]
    assert training_seconds(rows) == pytest.approx(5.5)
    assert training_seconds([{"val_loss": 1.0}]) is None
    assert read_metrics(tmp_path / "missing") == []


def test_split_sizes_from_manifest_counts():
    counts = {"a": {"train": 3, "val": 1, "test": 2}, "b": {"train": 4, "val": 2, "test": 1}}
    assert split_sizes({"manifest_counts": counts}) == {"train": 7, "val": 3, "test": 3}
    with_total = {**counts, "total": {"train": 7, "val": 3, "test": 3, "total": 13}}
    assert split_sizes({"manifest_counts": with_total}) == {"train": 7, "val": 3, "test": 3}
    assert split_sizes({}) == {}


def test_selection_and_config_readers(tmp_path):
    assert read_selection(tmp_path) == {} and read_config(tmp_path) == {}
    (tmp_path / SELECTION_JSON).write_text(json.dumps({"chosen": "run_b", "default": True}))
    assert read_selection(tmp_path) == {"chosen": "run_b", "default": True}
    (tmp_path / SELECTION_JSON).write_text("[1, 2")
    assert read_selection(tmp_path) == {}  # unreadable: treated as absent
    (tmp_path / "config.yaml").write_text("epochs: 3\nmodel: vvt_tiny\n")
    assert read_config(tmp_path) == {"epochs": 3, "model": "vvt_tiny"}
    (tmp_path / "config.yaml").write_text("epochs: [3\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_config(tmp_path)


def test_summary_readers_and_the_estimate_format(tmp_path):
    assert read_summary(tmp_path) is None
    summary = {
        "accuracy": {"value": 0.8, "low": 0.7, "high": 0.9},
        "macro": {"f1": {"value": 0.75, "low": None, "high": None}},
        "qwk": None,
    }
    (tmp_path / REPORT_DIR).mkdir()
    (tmp_path / REPORT_DIR / ReportFiles.summary_json).write_text(json.dumps(summary))
    assert read_summary(tmp_path) == summary
    assert format_estimate(summary_estimate(summary, "accuracy")) == "0.800 (0.700–0.900)"
    assert format_estimate(summary_estimate(summary, "macro_f1")) == "0.750"  # no interval
    assert summary_estimate(summary, "qwk") is None and summary_estimate(summary, "weighted_f1") is None
    assert format_estimate(None) == "n/a" and format_estimate({"value": None}) == "n/a"
    assert format_estimate({"value": math.pi, "low": 3.0, "high": 3.5}, digits=2) == "3.14 (3.00–3.50)"
    (tmp_path / REPORT_DIR / ReportFiles.summary_json).write_text("{")
    with pytest.raises(ValueError, match="medvit report"):
        read_summary(tmp_path)


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"model": "x"}, "model.json key 'class_names' is missing"),
        ({"model": "x", "class_names": ["a"], "image_size": [64, 64], "mean": [0.5], "std": [1, 1, 1]},
         "model.json key 'mean': expected three numbers"),
        ({"model": "x", "class_names": "ab", "image_size": [64, 64], "mean": [0.5] * 3, "std": [1] * 3},
         "model.json key 'class_names': expected a list of strings"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_a_corrupt_model_json_names_the_key_and_the_file(tmp_path, info, message):
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=message) as raised:
        read_model_info(tmp_path)
    assert str(tmp_path / "model.json") in str(raised.value) and "the run directory is corrupt" in str(raised.value)
