"""The GPU benchmark script's CPU-side behaviour (the GPU runs themselves are in the README)."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("medvit_gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_exits_2_and_writes_nothing(gpu_bench, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_bench.main(["--out", str(tmp_path / "out")]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_markdown_rows_and_errors(gpu_bench, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    table = pd.DataFrame([
        {"model": "vvt_tiny", "logit_diff": 1.7e-7, "cam_diff": 2e-6, "cam_s": 0.0576, "infer_img_s": 4315.6,
         "train_img_s": 1042.8, "train_peak_gib": 6.28},
        {"model": "broken", "error": "RuntimeError: boom"},
    ])
    text = gpu_bench.to_markdown(table, 128, 64, 10)
    lines = text.splitlines()
    assert lines[2] == "| vvt_tiny | 1.7e-07 | 2.0e-06 | 0.058 | 4,316 | 1,043 | 6.3 |"
    assert lines[3] == "| broken | error: RuntimeError: boom | | | | | |"
    assert "Test GPU" in text and "batch 128" in lines[0] and "batch 64" in lines[0]
