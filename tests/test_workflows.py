"""The training workflow: the engine trains and predicts; ``finish_run`` calibrates on validation and reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from medvit.run_dir import MODEL_JSON, PREDICTIONS_CSV, REPORT_DIR
from medvit.train import train
from medvit.train.config import config_from_dict
from medvit.train.probabilities import unscaled_probabilities
from medvit.workflows import finish_run


def test_the_engine_leaves_calibration_and_report_to_finish_run(tiny_train_config, tmp_path):
    run = tmp_path / "run"
    train(config_from_dict(tiny_train_config(n_bootstrap=20)), run)
    assert not (run / REPORT_DIR).exists() and "calibration" not in json.loads((run / MODEL_JSON).read_text())
    before = pd.read_csv(run / PREDICTIONS_CSV)
    class_names = json.loads((run / MODEL_JSON).read_text())["class_names"]

    finish_run(run)

    info = json.loads((run / MODEL_JSON).read_text())
    assert info["calibration"]["temperature"] > 0
    summary = json.loads((run / REPORT_DIR / "summary.json").read_text())
    assert summary["n"] == len(before) and summary["n_bootstrap"] == 20
    after = pd.read_csv(run / PREDICTIONS_CSV)  # rewritten with the temperature; the raw probabilities recoverable
    raw = before[[f"prob_{name}" for name in class_names]].to_numpy()
    np.testing.assert_allclose(unscaled_probabilities(after, class_names), raw, atol=1e-6)
