"""The GPU benchmark script's CPU-side behaviour (the GPU runs themselves are in docs/benchmarks.md)."""

import importlib.util
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("medvit_gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, spec.name, module)  # its dataclass resolves annotations through sys.modules
        spec.loader.exec_module(module)
        yield module


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


BENCHMARKS = SCRIPT.parent


@pytest.fixture(scope="module")
def training_bench():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))  # the scripts import their shared harness.py as a sibling
        spec = importlib.util.spec_from_file_location("medvit_training_bench", BENCHMARKS / "training.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def test_training_step_is_one_adamw_step(training_bench) -> None:
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    before = model.weight.detach().clone()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.05)
    images, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    expected_loss = torch.nn.functional.cross_entropy(model(images), labels).item()
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    grad_sign = model.weight.grad.sign()
    assert training_bench.training_step(model, optimizer, images, labels) == pytest.approx(expected_loss)
    # Adam's first step moves every weight by lr * sign(grad), after the decoupled decay lr * wd * w
    expected = before * (1 - 1e-2 * 0.05) - 1e-2 * grad_sign
    torch.testing.assert_close(model.weight.detach(), expected, atol=1e-6, rtol=0)


def test_training_measure_row(training_bench) -> None:
    row = training_bench.measure("vvt_tiny", 64, batch=2, threads=1, warmup=0, iters=1)
    assert (row.model, row.size, row.batch, row.threads, row.timed_iters, row.error) == ("vvt_tiny", 64, 2, 1, 1, "")
    assert (row.mode, row.compile_s) == ("fp32-eager", None)
    assert row.params_m == pytest.approx(12.88244)
    assert row.images_per_s_best == pytest.approx(2 / row.best_s_per_batch)
    assert row.gflops == pytest.approx(3.0 * (64 / 224) ** 2, rel=0.05)
    assert row.grad_cos == pytest.approx(1.0, abs=1e-6) and row.loss_rel_err < 1e-6  # fp32 eager is the reference
    assert row.peak_mem_mb is None or row.peak_mem_mb > 12.88 * 4  # at least the gradients


def test_training_bf16_row_is_checked_against_fp32(training_bench) -> None:
    row = training_bench.measure("vvt_tiny", 64, batch=2, threads=1, warmup=0, iters=1, mode="bf16-eager")
    assert row.mode == "bf16-eager" and not row.error
    assert 0.99 < row.grad_cos < 1.0 and row.loss_rel_err < 0.01
    assert training_bench.is_correct(row)
    assert not training_bench.is_correct(_row(training_bench, "vvt_tiny", 64, 1.0, mode="bf16-eager", grad_cos=0.9,
                                              loss_rel_err=0.0))
    with pytest.raises(ValueError, match="mode"):
        training_bench.parse_mode("fp16-eager")


def _row(bench, model: str, size: int, best_s: float, **kwargs):
    values = dict(params_m=1.0, gflops=1.0, batch=16, threads=2, timed_iters=3, mean_s_per_batch=best_s * 1.1,
                  best_s_per_batch=best_s, images_per_s_mean=16 / (best_s * 1.1), images_per_s_best=16 / best_s,
                  peak_mem_mb=100.0 * size / 160, load_1min=1.0, torch="x")
    return bench.BenchRow(model=model, size=size, **{**values, **kwargs})


def test_training_table_targets_at_every_size_and_merge(training_bench, tmp_path) -> None:
    fast = dict(grad_cos=0.9995, loss_rel_err=1e-3)
    rows = [_row(training_bench, m, s, t, mode=mode, **(fast if mode != "fp32-eager" else {})) for m, s, t, mode in [
        ("acc_vit_tiny", 160, 1.0, "fp32-eager"), ("acc_vit_tiny", 160, 0.5, "fp32-compiled"),
        ("maxvit_tiny_tf_224", 160, 1.4, "fp32-eager"), ("maxvit_tiny_tf_224", 160, 1.0, "bf16-eager"),
        ("acc_vit_tiny", 224, 2.0, "fp32-eager"), ("maxvit_tiny_tf_224", 224, 2.0, "fp32-eager"),
        ("vvt_tiny", 224, 1.0, "fp32-eager"), ("pvt_v2_b1", 224, 0.5, "fp32-eager")]]
    rows.append(_row(training_bench, "vvt_tiny", 224, 0.1, mode="bf16-eager", grad_cos=0.5, loss_rel_err=0.0))
    training_bench.write_results(rows, tmp_path, "note")
    # --models with no names measures nothing: the table is rebuilt from the merged CSV
    assert training_bench.main(["--models", "--merge", "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "training.md").read_text()
    # fastest correct modes: acc_vit fp32-compiled (32 img/s), maxvit bf16-eager (16); the incorrect vvt row is ignored
    assert "- acc_vit_tiny (fp32-compiled) / maxvit_tiny_tf_224 (bf16-eager) at 160: 2.00x; target >= 1.3x: met" in text
    assert "- acc_vit_tiny fp32-compiled / fp32-eager at 160: 2.00x; target >= 1.5x: met" in text
    assert "- maxvit_tiny_tf_224 bf16-eager / fp32-eager at 160: 1.40x; target >= 1.5x: NOT met" in text
    assert "- vvt_tiny (fp32-eager) / pvt_v2_b1 (fp32-eager) at 224: 0.50x; target >= 0.8x: NOT met" in text
    assert "vvt_tiny / pvt_v2_b1 at 160" not in text and "vvt_tiny (fp32-eager) / pvt_v2_b1 (fp32-eager) at 160" not in text
    assert "| vvt_tiny | 224 | bf16-eager (incorrect) |" in text
    assert "| acc_vit_tiny | 160 | fp32-compiled | 32.00 | 29.09 | 2.00x |" in text
    keys = [tuple(line.split(" | ")[i].strip("| ") for i in (0, 1, 2)) for line in text.splitlines()[2:11]]
    assert keys[:4] == [("acc_vit_tiny", "160", "fp32-eager"), ("acc_vit_tiny", "160", "fp32-compiled"),
                        ("acc_vit_tiny", "224", "fp32-eager"), ("vvt_tiny", "224", "fp32-eager")]


def test_training_table_lists_missing_runs_with_their_command(training_bench) -> None:
    rows = [_row(training_bench, "convnext_tiny", s, 1.0, mode="fp32-eager") for s in (128, 160, 224)]
    rows.append(_row(training_bench, "convnext_tiny", 128, 1.0, mode="bf16-eager", error="timed out after 9 s"))
    missing = training_bench.missing_runs(rows)
    assert ("convnext_tiny", "fp32-eager", [128, 160, 224]) not in [m for m in missing]
    assert ("convnext_tiny", "bf16-eager", [128, 160, 224]) in missing  # a failed row counts as missing
    assert len(missing) == len(training_bench.DEFAULT_MODELS) * len(training_bench.MODES) - 1
    text = training_bench.format_markdown(rows, "note")
    assert ("- convnext_tiny fp32-compiled at 128, 160, 224: `.venv/bin/python experiments/benchmarks/training.py "
            "--models convnext_tiny --modes fp32-compiled --sizes 128 160 224 --merge`") in text


def test_training_quick_is_128_eager_merged(training_bench, tmp_path, monkeypatch) -> None:
    seen = {}

    def fake_rounds(script, names, args, logger, modes):
        seen.update(sizes=args.sizes, modes=list(modes), merge=args.merge)
        return {}

    monkeypatch.setattr(training_bench, "run_rounds", fake_rounds)
    assert training_bench.main(["--quick", "--models", "vvt_tiny", "--out-dir", str(tmp_path)]) == 0
    assert seen == {"sizes": [128], "modes": ["fp32-eager", "bf16-eager"], "merge": True}
    assert training_bench.main(["--quick", "--sizes", "160", "--models", "vvt_tiny", "--out-dir", str(tmp_path)]) == 0
    assert seen["sizes"] == [160]


@pytest.fixture(scope="module")
def loader_bench():
    spec = importlib.util.spec_from_file_location("medvit_loader_bench", BENCHMARKS / "loader.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, spec.name, module)  # its dataclass resolves annotations through sys.modules
        spec.loader.exec_module(module)
        yield module


def test_loader_row_times_the_epoch_and_the_steps(loader_bench, synthetic_busi, tiny_vvt_kwargs) -> None:
    row = loader_bench.measure(
        "busi", Path(synthetic_busi["manifest"]), Path(synthetic_busi["root"]), "vvt_tiny", 32, images=8, batch=4,
        cache=True, workers=0, rounds=1, model_kwargs=tiny_vvt_kwargs)
    assert (row.dataset, row.images, row.batch, row.cache, row.workers) == ("busi", 8, 4, True, 0)
    assert 0 <= row.data_wait_s < row.epoch_s and row.step_s > 0
    assert row.ratio == pytest.approx(row.epoch_s / row.step_s)


def test_loader_table_verdict_per_dataset(loader_bench) -> None:
    def row(dataset, cache, ratio):
        return loader_bench.LoaderRow(dataset, "convnext_tiny", 128, 256, 16, cache, 0, 1.0, 10.0 * ratio, 1.0, 10.0,
                                      ratio, 2.0)

    text = loader_bench.format_markdown([row("busi", False, 1.5), row("busi", True, 1.1), row("ham10000", True, 1.3)],
                                        "note")
    assert "| busi | convnext_tiny | 128 | 256 | on | 0 | 1.0 | 11.0 | 1.0 | 10.0 | 1.10x | 2.0 |" in text
    assert "- busi: 1.10x with cache on, 0 workers; target <= 1.2x: met" in text
    assert "- ham10000: 1.30x with cache on, 0 workers; target <= 1.2x: NOT met" in text


def test_workers_import_this_checkouts_medvit(training_bench, monkeypatch) -> None:
    harness = sys.modules["harness"]
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    first, rest = harness.checkout_pythonpath().split(os.pathsep, 1)
    assert (Path(first) / "medvit" / "__init__.py").is_file() and Path(first) == BENCHMARKS.parents[1]
    assert rest == "elsewhere"
