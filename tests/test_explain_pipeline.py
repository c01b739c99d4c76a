"""One explanation pipeline for the CLI and the page; robust batches with all-or-nothing output folders."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medvit.explain.pipeline import explain, resize_mask

from tiny_pyramid import TinyPyramid


def _save_case(folder: Path, name: str = "case.png", size: tuple[int, int] = (75, 93)) -> tuple[Path, Path]:
    """An odd-sized image and lesion mask (odd sizes: 'nearest' and 'nearest-exact' resizes differ)."""
    rgb = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[11:47, 23:70] = 255
    image_path, mask_path = folder / name, folder / name.replace(".png", "_mask.png")
    Image.fromarray(rgb).save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


def test_resize_mask_is_the_eval_pipelines_nearest_exact() -> None:
    mask = np.zeros((75, 93), np.uint8)
    mask[11:47, 23:70] = 1
    resized = resize_mask(mask * 255, (64, 64))
    expected = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), (64, 64), mode="nearest-exact")
    assert resized.dtype == bool and np.array_equal(resized, expected[0, 0].numpy() > 0.5)
    plain = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), (64, 64), mode="nearest")
    assert not np.array_equal(resized, plain[0, 0].numpy() > 0.5)  # the page's old resize scored other pixels


def test_cli_and_page_write_the_same_json(tiny_run, tmp_path) -> None:
    from medvit import demo
    from medvit.cli import main
    from medvit.data.images import read_image, read_mask

    image_path, mask_path = _save_case(tmp_path)
    out = tmp_path / "out"
    assert main(["explain", str(tiny_run), str(image_path), "--mask", str(mask_path), "--out", str(out)]) == 0
    cli = json.loads((out / "case" / "explanation.json").read_text())
    rgb = read_image(image_path)
    page = demo.explain_image(demo.load_demo_model(tiny_run), rgb, mask=read_mask(mask_path, shape=rgb.shape[:2]))
    download = json.loads(json.dumps(demo.explanation_to_json(page, source=str(image_path), mask_source=str(mask_path))))
    assert cli.pop("seconds") > 0 and download.pop("seconds") > 0
    assert download == cli
    assert cli["image"] == str(image_path) and cli["mask"] == str(mask_path) and cli["mask_is_empty"] is False
    assert all(set(stage["localization"]) == {"pointing", "energy", "iou"} for stage in cli["stages"])
    assert cli["notice"] == "research use only, not for diagnosis"
    assert cli["temperature"] == pytest.approx(page.result.temperature)  # the run's calibration, if any


def test_calibrated_probabilities_use_the_runs_temperature() -> None:
    model = TinyPyramid()
    run = SimpleNamespace(
        path="run", model=model, model_name="tiny", class_names=["dark", "bright"], image_size=(64, 64),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )
    rgb = np.full((64, 64, 3), 200, np.uint8)
    plain = explain(run, rgb)
    with torch.no_grad():
        logits = model(torch.full((1, 3, 64, 64), 200 / 255))[0].double()
    np.testing.assert_allclose(plain.probabilities, torch.softmax(logits, 0).numpy(), atol=1e-6)
    run.temperature = 1.0  # what load_run gives an uncalibrated run: today's probabilities, bit for bit
    np.testing.assert_array_equal(explain(run, rgb).probabilities, plain.probabilities)
    run.temperature = 2.5
    calibrated = explain(run, rgb)
    np.testing.assert_allclose(calibrated.probabilities, torch.softmax(logits / 2.5, 0).numpy(), atol=1e-6)
    assert calibrated.to_json()["temperature"] == 2.5 and calibrated.predicted == plain.predicted
    for a, b in zip(plain.stages, calibrated.stages):
        np.testing.assert_array_equal(a.cam, b.cam)


def _bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (8000, 7000)).save(buffer, format="PNG")  # 56 MP in a few kB
    return buffer.getvalue()


def test_batch_processes_every_good_file_and_names_the_bad_ones(tiny_run, tmp_path, capsys) -> None:
    from medvit.cli import main

    good_a, _ = _save_case(tmp_path, "a.png")
    good_c, _ = _save_case(tmp_path, "c.png")
    (tmp_path / "bomb.png").write_bytes(_bomb_png())
    (tmp_path / "cut.png").write_bytes(good_a.read_bytes()[:200])
    (tmp_path / "empty.png").write_bytes(b"")
    names = ["a.png", "bomb.png", "cut.png", "empty.png", "missing.png", "c.png"]
    out = tmp_path / "out"
    code = main(["explain", str(tiny_run), *[str(tmp_path / n) for n in names], "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a", "c"]  # nothing partial, no hidden staging folder
    reasons = {line.split(": ", 2)[1].split("/")[-1]: line for line in captured.err.splitlines() if "skipped" in line}
    assert set(reasons) == {"bomb.png", "cut.png", "empty.png", "missing.png"}
    assert "decompression bomb" in reasons["bomb.png"] and "empty file" in reasons["empty.png"]
    assert "truncated or corrupt" in reasons["cut.png"] and "no such file" in reasons["missing.png"]
    assert "4 of 6 image(s) failed: bomb.png, cut.png, empty.png, missing.png" in captured.err
    assert "wrote 2 of 6 explanation(s)" in captured.out
    assert main(["explain", str(tiny_run), str(good_a), str(good_c), "--out", str(out)]) == 0


def test_a_mask_of_another_size_writes_nothing_for_that_image(tiny_run, tmp_path, capsys) -> None:
    from medvit.cli import main

    image_path, _ = _save_case(tmp_path, "a.png")
    other_path, other_mask = _save_case(tmp_path, "b.png", size=(40, 50))
    out = tmp_path / "out"
    argv = ["explain", str(tiny_run), str(image_path), str(other_path), "--mask", str(other_mask), str(other_mask)]
    assert main(argv + ["--out", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert "mask size 50x40 (WxH) differs from the image's 93x75" in capsys.readouterr().err
    with pytest.raises(ValueError, match="2 masks for 1 images"):
        from medvit.explain.files import explain_images

        explain_images(tiny_run, [image_path], out, masks=[other_mask, other_mask])


def test_write_explanation_is_all_or_nothing(tmp_path, monkeypatch) -> None:
    from medvit.explain.files import write_explanation

    folder = write_explanation({"explanation.json": b"{}", "grid.png": b"1"}, tmp_path / "case")
    assert sorted(p.name for p in folder.iterdir()) == ["explanation.json", "grid.png"]
    calls = []
    original = Path.write_bytes

    def failing(self, data):
        calls.append(self.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(OSError, match="No space"):
        write_explanation({"explanation.json": b'{"new": 1}', "grid.png": b"2"}, tmp_path / "case")
    monkeypatch.setattr(Path, "write_bytes", original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]  # the old folder, untouched; no staging left
    assert (tmp_path / "case" / "explanation.json").read_bytes() == b"{}"
    write_explanation({"explanation.json": b'{"new": 1}'}, tmp_path / "case")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == ["explanation.json"]


def test_cli_faithfulness_and_sanity_in_the_json(tiny_run, tmp_path) -> None:
    from medvit.cli import main

    image_path, mask_path = _save_case(tmp_path)
    out = tmp_path / "out"
    argv = ["explain", str(tiny_run), str(image_path), "--mask", str(mask_path), "--out", str(out)]
    assert main(argv + ["--faithfulness", "--road-percentiles", "50", "--curve-steps", "2", "--sanity"]) == 0
    assert (out / "case" / "curves.png").read_bytes().startswith(b"\x89PNG")
    record = json.loads((out / "case" / "explanation.json").read_text())
    assert record["faithfulness"]["road_percentiles"] == [50] and record["faithfulness"]["curve_fractions"] == [0, 0.5, 1]
    assert record["sanity"]["cascade"] == ["head", "stage4", "stage3", "stage2", "stage1"]
    probability = record["target"]["probability"]
    for stage in record["stages"]:
        scores = stage["faithfulness"]
        assert len(scores["deletion_curve"]) == len(scores["insertion_curve"]) == 3
        assert scores["deletion_curve"][0] == pytest.approx(probability, abs=1e-5)
        assert scores["insertion_curve"][-1] == pytest.approx(probability, abs=1e-5)
        assert scores["deletion_auc"] == pytest.approx(np.trapezoid(scores["deletion_curve"], [0, 0.5, 1]))
        if scores["road_combined"] is not None:
            assert scores["road_combined"] == pytest.approx((scores["road_lerf"] - scores["road_morf"]) / 2)
        sanity = stage["sanity"]
        assert len(sanity["spearman_steps"]) == 5 and sanity["after_step"] == ["stage2", "stage3", "stage4", "head"][stage["stage"] - 1]
        assert sanity["spearman"] is None or -1 <= sanity["spearman"] <= 1


def test_split_scores_with_faithfulness_and_sanity(tiny_run, synthetic_busi, tmp_path) -> None:
    from medvit.explain.files import write_split_scores
    from medvit.explain.faithfulness import FaithfulnessConfig

    config = FaithfulnessConfig(percentiles=(50,), curve_steps=2)
    result = write_split_scores(
        tiny_run, synthetic_busi["manifest"], tmp_path, root=synthetic_busi["root"], max_images=2, sample_seed=0,
        faithfulness=config, sanity=True,
    )
    table = pd.read_csv(tmp_path / "stage_scores_test.csv")
    per_image = pd.read_csv(tmp_path / "stage_scores_test_per_image.csv")
    assert list(table["stride"]) == [4, 8, 16, 32] and (table["n"] == 2).all() and len(per_image) == 8
    assert per_image["image"].nunique() == 2 and table["sampled"].iloc[0] == "2 drawn with seed 0"
    for name in ("energy", "road_combined", "deletion_auc", "spearman", "ssim_all", "flagged"):
        means = per_image.groupby("stage")[name].mean().to_numpy()
        np.testing.assert_allclose(table[name].to_numpy(), means, atol=1e-9)
    assert result.scores[:3] == ["pointing", "energy", "iou"] and "road_combined" in result.scores
    markdown = (tmp_path / "stage_scores_test.md").read_text()
    assert "| stage | stride | n | pointing | energy | iou | road_combined |" in markdown
    assert "2 drawn with seed 0" in markdown and "ROAD at percentiles 50" in markdown


@pytest.mark.slow
def test_page_faithfulness_toggle(tmp_path) -> None:
    from streamlit.testing.v1 import AppTest

    from medvit.demo.serve import PAGE_SCRIPT

    at = AppTest.from_file(str(PAGE_SCRIPT), default_timeout=300)
    at.run()
    at.text_input(key="runs_dir").set_value(str(tmp_path / "runs")).run()
    assert not at.exception and not any("road_combined" in df.value.columns for df in at.dataframe)
    at.toggle(key="faithfulness").set_value(True).run()
    assert not at.exception and not at.error
    table = next(df.value for df in at.dataframe if "road_combined" in df.value.columns)
    assert list(table["stage"].str[:7]) == ["Stage 1", "Stage 2", "Stage 3", "Stage 4"]
    assert table["road_combined"].dropna().between(-0.5, 0.5).all()
    assert sum("ROAD" in c.value for c in at.caption) == 4
