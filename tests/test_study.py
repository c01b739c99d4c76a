"""``medvit study``: config, cells, resume, the submitit LocalExecutor path, paired statistics, verdicts, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import precision_score, recall_score

from medvit.metrics import Estimate, compute_metrics
from medvit.study import load_study_config, run_study, study_config_from_dict, write_study_report
from medvit.study.cells import cell_state, plan_cells, select_cells
from medvit.study.paired import paired_difference, resampled_scores, shared_resamples
from medvit.study.report import CellResult, claim_verdict, dataset_table, did_not_train, load_results
from medvit.study.verdicts import HOLDS, NOT_HOLD, NOT_RESOLVED, verdict

REPO = Path(__file__).resolve().parents[1]
TINY_ACC_VIT = {"embed_dim": [16, 32, 32, 64], "depths": [1, 1, 1, 1], "stem_width": 16, "dim_head": 16}
TINY_VVT = {"embed_dims": [8, 16, 16, 32], "num_heads": [1, 1, 1, 2], "depths": [1, 1, 1, 1], "mlp_ratios": [2, 2, 2, 2]}

pytestmark = pytest.mark.usefixtures("one_thread")


def _study(synthetic_busi: dict, start: str = "distilled", **train) -> dict:
    return {
        "name": "tiny",
        "reference": "acc",
        "backbones": {"acc": {"model": "acc_vit_tiny", "model_kwargs": TINY_ACC_VIT},
                      "vvt": {"model": "vvt_tiny", "model_kwargs": TINY_VVT}},
        "datasets": {"busi": {"manifest": synthetic_busi["manifest"], "root": synthetic_busi["root"],
                              "train": {"class_weighting": "inverse"}}},
        "protocol": {
            "start": start, "image_size": 64, "seeds": [0],
            "pretrain": {"teacher": "tf_efficientnet_lite0", "epochs": 1, "batch_size": 8, "warmup_epochs": 0,
                         "device": "cpu"},
            "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 0.5, "device": "cpu",
                      "n_bootstrap": 50, "early_stopping": {"patience": 0}, **train},
        },
        "cam": {"dataset": "busi", "figure_images": 2},
        "claims": [
            {"id": "precision", "kind": "highest_macro_precision", "datasets": ["busi"]},
            {"id": "malignant_recall", "kind": "highest_recall", "dataset": "busi", "class": "malignant"},
            {"id": "ratio", "kind": "recall_ratio", "dataset": "busi", "class": "benign", "ratio": 2},
            {"id": "focus", "kind": "highest_localization", "dataset": "busi", "score": "energy", "stage": 4},
        ],
        "n_bootstrap": 200,
    }


@pytest.fixture(scope="module")
def study(synthetic_busi, tmp_path_factory):
    """A finished two-backbone study on synthetic BUSI (distilled start): its config and folder."""
    cfg = study_config_from_dict(_study(synthetic_busi))
    out = tmp_path_factory.mktemp("study") / "study"
    outcome = run_study(cfg, out, results=out.parent / "published")
    return cfg, out, outcome


# -- config ---------------------------------------------------------------------------------------------------


def test_cpu_preset_validates_and_compares_four_papers_backbones():
    cfg = load_study_config(REPO / "experiments/study/cpu.yaml")
    assert cfg.start == "distilled" and cfg.image_size == [128, 128] and cfg.reference == "acc_vit_tiny"
    assert set(cfg.datasets) == {"busi", "eyepacs", "ham10000"} and len(cfg.backbones) == 4
    assert [c.id for c in cfg.claims] == ["precision", "mild_recall", "malignant_recall", "focus"]
    ham = cfg.cell_train_config("ham10000", "swin_tiny", 0, "runs/x")
    assert ham.balanced_sampler and ham.train_images_per_epoch == 1500 and ham.early_stopping.patience == 4
    assert ham.early_stopping.metric == "val_balanced_accuracy" and ham.lr == cfg.train["lr"]
    assert cfg.pretrain_config("acc_vit_tiny").image_size == [128, 128]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(backbone={}), "unknown study config key 'backbone' \\(did you mean 'backbones'\\?\\)"),
        (lambda d: d["protocol"].update(start="imagenet1k"), "'protocol.start': got 'imagenet1k'"),
        (lambda d: d["protocol"].update(start="imagenet"), "start 'imagenet' needs protocol.weights.acc"),
        (lambda d: d["claims"][0].update(datasets=["ham"]), "dataset 'ham' is not one of \\['busi'\\]"),
        (lambda d: d["protocol"]["train"].update(lr=-1), "study cell busi/acc: .*lr"),
        (lambda d: d.update(reference="swin"), "'reference': 'swin' is not one of the backbones"),
    ],
)
def test_config_errors_name_the_key(synthetic_busi, change, message):
    data = _study(synthetic_busi)
    change(data)
    with pytest.raises(ValueError, match=message):
        study_config_from_dict(data)


def test_only_selects_cells_and_their_pretrain(synthetic_busi):
    cells = plan_cells(study_config_from_dict(_study(synthetic_busi)))
    assert [c.name for c in cells] == ["pretrain/acc", "pretrain/vvt", "busi/acc", "busi/vvt"]
    assert [c.name for c in select_cells(cells, ["busi/vvt"])] == ["pretrain/vvt", "busi/vvt"]
    assert len(select_cells(cells, ["busi"])) == 4
    with pytest.raises(ValueError, match="--only 'busi/swin': no such cell; cells: pretrain/acc"):
        select_cells(cells, ["busi/swin"])



def test_backbone_start_overrides_the_protocols(synthetic_busi):
    """paper.yaml's case: ImageNet weights for the baselines, ACC-ViT (no public checkpoint) distilled."""
    from medvit.study.report import _starts

    data = _study(synthetic_busi, start="scratch")
    data["backbones"]["acc"]["start"] = "distilled"
    cfg = study_config_from_dict(data)
    cells = plan_cells(cfg)
    assert [c.name for c in cells] == ["pretrain/acc", "busi/acc", "busi/vvt"]
    assert [c.needs for c in cells[1:]] == ["pretrain/acc", None]
    assert _starts(cfg) == "acc `distilled`, vvt `scratch`"
    data = _study(synthetic_busi, start="imagenet")
    data["backbones"]["acc"]["start"] = "distilled"
    with pytest.raises(ValueError, match="needs protocol.weights.vvt .*or backbones.vvt.start: distilled"):
        study_config_from_dict(data)
    data["backbones"]["acc"]["start"] = "imagenet1k"
    with pytest.raises(ValueError, match="'backbones.acc.start': got 'imagenet1k'"):
        study_config_from_dict(data)

def test_slurm_parameters_are_submitits(tmp_path):
    import submitit

    from medvit.study.launch import slurm_parameters

    params = slurm_parameters("gpu", 600, nproc=4, cpus_per_task=32, mem_gb=200)
    assert params == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 4, "slurm_partition": "gpu",
                      "timeout_min": 600, "cpus_per_task": 32, "mem_gb": 200}
    submitit.AutoExecutor(folder=tmp_path, cluster="local").update_parameters(**params)  # every key is known
    assert slurm_parameters(gpus_per_node=2, nproc=1)["gpus_per_node"] == 2
    with pytest.raises(ValueError, match="--cpus-per-task 0: must be at least 1"):
        slurm_parameters(cpus_per_task=0)

def test_local_launcher_finishes_backbones_in_config_order(synthetic_busi, tmp_path, monkeypatch):
    """A restart after the first backbone's pretrain finished goes on with that backbone's fine-tunes
    (not with the next backbone's pretrain)."""
    from medvit.study import launch

    cfg = study_config_from_dict(_study(synthetic_busi))
    ran = []
    monkeypatch.setattr(launch, "_cell_job", lambda cfg, cell, out, nproc: ran.append(cell.name) or "finished")
    monkeypatch.setattr(launch, "cell_state", lambda cell, out: "finished" if cell.name == "pretrain/acc" else "new")
    launch.run_study(cfg, tmp_path / "study", report=False)
    assert ran == ["busi/acc", "pretrain/vvt", "busi/vvt"]

# -- paired statistics and verdicts -----------------------------------------------------------------------------


def test_resampled_scores_match_sklearn():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    names = ["a", "b", "c"]
    point = {k: v[0] for k, v in resampled_scores(labels, predictions, np.arange(60)[None], names).items()}
    np.testing.assert_allclose([point[f"precision:{n}"] for n in names], precision_score(labels, predictions, average=None))
    np.testing.assert_allclose([point[f"recall:{n}"] for n in names], recall_score(labels, predictions, average=None))
    assert point["balanced_accuracy"] == pytest.approx(recall_score(labels, predictions, average="macro"))


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(1)
    labels, predictions = rng.integers(0, 3, 80), rng.integers(0, 3, 80)
    idx = shared_resamples(labels, 300, seed=0)
    a = resampled_scores(labels, predictions, idx, ["a", "b", "c"])["balanced_accuracy"]
    assert paired_difference(0.0, a, a) == Estimate(0.0, 0.0, 0.0)


def test_paired_interval_is_narrower_than_unpaired_for_correlated_models():
    """Two models that agree on most images: the shared resamples cancel the images' difficulty."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    a = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    b = a.copy()
    b[rng.choice(200, 10, replace=False)] = labels[:10]  # b differs from a on 10 images
    idx = shared_resamples(labels, 500, seed=0)
    sa, sb = (resampled_scores(labels, p, idx, ["x", "y"])["balanced_accuracy"] for p in (a, b))
    paired = paired_difference(0.0, sa, sb)
    independent = np.percentile(sa - np.random.default_rng(3).permutation(sb), [2.5, 97.5])
    assert paired.high - paired.low < 0.6 * (independent[1] - independent[0])


def test_verdict_clear_win_clear_loss_and_overlap():
    assert verdict([("vs swin", Estimate(0.10, 0.05, 0.15)), ("vs convnext", Estimate(0.2, 0.01, 0.3))], 100).verdict == HOLDS
    loss = verdict([("vs swin", Estimate(0.10, 0.05, 0.15)), ("vs maxvit", Estimate(-0.2, -0.3, -0.1))], 100)
    assert loss.verdict == NOT_HOLD and loss.reason.startswith("vs maxvit")
    open_ = verdict([("vs swin", Estimate(0.05, -0.05, 0.15)), ("vs maxvit", Estimate(0.2, 0.1, 0.3))], 100)
    assert open_.verdict == NOT_RESOLVED and "vs swin" in open_.reason and "vs maxvit" not in open_.reason
    assert open_.n_to_resolve == 400  # half-width 0.1 at n=100 shrinks to 0.05 (= |d|) at n = 100 * (0.1/0.05)^2
    assert verdict([("vs swin", Estimate(0.0, -0.1, 0.1))], 70).n_to_resolve is None
    with pytest.raises(ValueError, match="no confidence interval"):
        verdict([("vs swin", Estimate(0.1))], 10)


# -- end to end -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_study_end_to_end(study):
    cfg, out, outcome = study
    assert outcome.states == {"pretrain/acc": "new", "pretrain/vvt": "new", "busi/acc": "new", "busi/vvt": "new"}
    for cell in plan_cells(cfg):
        assert cell_state(cell, out) == "finished", cell.name
    pretrained = yaml.safe_load((out / "busi/acc/config.yaml").read_text())["pretrained"]
    assert Path(pretrained) == out / "pretrain/acc"
    report = outcome.report
    for name in ("index.md", "busi_table.md", "busi_table.csv", "busi_table.tex", "busi_paired.csv", "claims.csv",
                 "cam_localization.csv", "cam_figure.png", "curves_busi.png", "compute.csv"):
        assert (report / name).is_file(), name
    claims = pd.read_csv(report / "claims.csv")
    assert list(claims["claim"]) == ["precision", "malignant_recall", "ratio", "focus"]
    assert set(claims["verdict"]) <= {HOLDS, NOT_HOLD, NOT_RESOLVED}
    paired = pd.read_csv(report / "busi_paired.csv")
    assert set(paired["baseline"]) == {"vvt"} and "recall:malignant" in set(paired["statistic"])
    # the table's numbers are the metrics of the predictions
    table = pd.read_csv(report / "busi_table.csv").set_index("Backbone")
    test = pd.read_csv(out / "busi/vvt/predictions.csv")
    names = ["benign", "malignant", "normal"]
    m = compute_metrics(test["label"], test[[f"prob_{n}" for n in names]].to_numpy(), names, n_bootstrap=cfg.n_bootstrap)
    assert table.loc["vvt", "Bal. acc."] == pytest.approx(m.balanced_accuracy.value, abs=1e-6)
    assert table.loc["vvt", "malignant R low"] == pytest.approx(m.per_class[1].recall.low, abs=1e-6)
    assert list(table.index) == ["acc", "vvt"]  # the reference first
    # every cell was published without weights, and a report regenerates from the published copy alone
    published = out.parent / "published"
    assert not list(published.rglob("*.safetensors")) and (published / "busi/acc/cam/figure.npz").is_file()
    again = write_study_report(cfg, published, out=out.parent / "from_published")
    pd.testing.assert_frame_equal(pd.read_csv(again / "busi_table.csv"), pd.read_csv(report / "busi_table.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(again / "claims.csv"), pd.read_csv(report / "claims.csv"))


@pytest.mark.slow
def test_rerun_skips_finished_cells_and_adopts_published_results(study, tmp_path):
    cfg, out, _ = study
    start = time.perf_counter()
    assert set(run_study(cfg, out, report=False).states.values()) == {"finished"}
    assert time.perf_counter() - start < 5
    fresh = tmp_path / "fresh"  # a fresh machine: only the committed results
    outcome = run_study(cfg, fresh, results=out.parent / "published")
    assert set(outcome.states.values()) == {"finished"} and (fresh / "report/claims.csv").is_file()


@pytest.mark.slow
def test_killed_cell_resumes_to_the_same_result(study, synthetic_busi, tmp_path):
    """A study killed in the middle of a fine-tuning cell resumes it (state 'partial') to the uninterrupted result."""
    cfg, uninterrupted, _ = study
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(_study(synthetic_busi, epochs=4)))
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "medvit.cli", "study", "--config", str(config), "--out", str(out),
               "--only", "busi/vvt", "--no-report"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state_file = out / "busi/vvt/last_state.pt"
    deadline = time.time() + 240
    while not state_file.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert state_file.is_file(), "the cell never committed an epoch"
    assert cell_state(plan_cells(load_study_config(config))[-1], out) == "partial"
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "busi/vvt: done (was partial)" in resumed.stdout
    reference = tmp_path / "reference"
    subprocess.run(command[:7] + [str(reference)] + command[8:], env=env, check=True, capture_output=True, timeout=600)
    pd.testing.assert_frame_equal(pd.read_csv(out / "busi/vvt/predictions.csv"),
                                  pd.read_csv(reference / "busi/vvt/predictions.csv"))


@pytest.mark.slow
def test_submitit_local_executor_runs_cells_in_parallel_then_reports(synthetic_busi, tmp_path):
    pytest.importorskip("submitit")
    cfg = study_config_from_dict(_study(synthetic_busi, start="scratch"))
    outcome = run_study(cfg, tmp_path / "study", launcher="submitit-local")
    assert outcome.states == {"busi/acc": "new", "busi/vvt": "new"}
    logs = sorted((tmp_path / "study/.submitit").glob("*_log.out"))
    assert len(logs) == 2  # one job per cell
    starts = [json.loads((tmp_path / "study" / c / "model.json").read_text())["model"] for c in ("busi/acc", "busi/vvt")]
    assert starts == ["acc_vit_tiny", "vvt_tiny"]
    assert (outcome.report / "claims.csv").is_file()
    results, missing = load_results(cfg, tmp_path / "study")
    assert not missing and set(results["busi"]) == {"acc", "vvt"}
    shown, numbers = dataset_table(cfg, "busi", results["busi"])
    assert list(shown["Backbone"].str.split().str[0]) == ["acc", "vvt"] and numbers["Params (M)"].gt(0).all()


def test_committed_results_reproduce_the_committed_tables():
    """docs/transfer_study: every table recomputes from the committed cells' result files."""
    cells = REPO / "docs/transfer_study/cells"
    report = REPO / "docs/transfer_study/report"
    if not any(cells.glob("*/*/predictions.csv")):
        pytest.skip("no study cell committed yet")
    cfg = load_study_config(REPO / "experiments/study/cpu.yaml")
    results, _ = load_results(cfg, cells)
    for dataset, by_backbone in results.items():
        if not by_backbone:
            continue
        _, numbers = dataset_table(cfg, dataset, by_backbone)
        committed = pd.read_csv(report / f"{dataset}_table.csv")
        drop = ["Flag"]  # "" reads back as NaN
        pd.testing.assert_frame_equal(numbers.drop(columns=drop).reset_index(drop=True),
                                      committed.drop(columns=drop), check_dtype=False, atol=1e-5)


def test_results_page_keeps_its_text_and_takes_the_report(tmp_path):
    from medvit.study.report import PAGE_MARKER, write_results_page

    report = tmp_path / "docs" / "study" / "report"
    report.mkdir(parents=True)
    (report / "index.md").write_text("# Report\n\n## busi\n\n![curves](curves_busi.png) [x](https://a.b/c)\n")
    page = tmp_path / "docs" / "study.md"
    page.write_text(f"# Study\n\nprotocol text\n\n{PAGE_MARKER}\n\nold tables\n")
    write_results_page(page, report)
    text = page.read_text()
    assert text.startswith(f"# Study\n\nprotocol text\n\n{PAGE_MARKER}\n") and "old tables" not in text
    assert "## Report\n" in text and "### busi\n" in text
    assert "![curves](study/report/curves_busi.png)" in text and "[x](https://a.b/c)" in text
    write_results_page(page, report)
    assert page.read_text() == text  # idempotent
    page.write_text("hand-written only\n")
    with pytest.raises(ValueError, match="no line '<!-- medvit study"):
        write_results_page(page, report)
    assert page.read_text() == "hand-written only\n"


def test_published_logs_hold_no_absolute_path_of_this_machine():
    from medvit.study.cells import machine_neutral

    import site

    log = (f"loaded {site.getsitepackages()[0]}/pkg/w.pth into X\nfrom {sys.prefix}/share/t.bin\n"
           f"wrote {Path.cwd()}/runs/study/busi\n")
    assert machine_neutral(log) == ("loaded <site-packages>/pkg/w.pth into X\nfrom <python>/share/t.bin\n"
                                    "wrote ./runs/study/busi\n")


def _cell(predicted: np.ndarray, labels: np.ndarray, names: list[str]) -> CellResult:
    """A finished cell whose test predictions are ``predicted`` (one-hot probabilities)."""
    test = pd.DataFrame({"image": [f"img{i}.png" for i in range(labels.size)], "label": labels})
    for c, name in enumerate(names):
        test[f"prob_{name}"] = (predicted == c).astype(float)
    return CellResult(None, {"class_names": names}, pd.DataFrame(), test, test, None, None)


def test_a_cell_that_did_not_train_decides_no_claim(synthetic_busi):
    cfg = study_config_from_dict(_study(synthetic_busi))
    names = ["benign", "malignant", "normal"]
    labels = np.repeat([0, 1, 2], 20)
    learned, constant = _cell(labels, labels, names), _cell(np.ones_like(labels), labels, names)  # all "malignant"
    assert not did_not_train(learned) and did_not_train(constant)
    claim = next(c for c in cfg.claims if c.id == "malignant_recall")
    beats = {"recall:malignant": Estimate(0.3, 0.1, 0.5), "macro_precision": Estimate(0.3, 0.1, 0.5)}

    untrained_reference = claim_verdict(cfg, claim, {"busi": {"acc": constant, "vvt": learned}}, {"busi": {"vvt": beats}}, pd.DataFrame())
    assert untrained_reference.verdict == NOT_RESOLVED and "busi/acc did not train" in untrained_reference.reason

    # a baseline that predicts "malignant" for every image has the top malignant recall and still says nothing
    nothing_to_compare = claim_verdict(cfg, claim, {"busi": {"acc": learned, "vvt": constant}}, {"busi": {"vvt": beats}}, pd.DataFrame())
    assert nothing_to_compare.verdict == NOT_RESOLVED and "no baseline trained on busi" in nothing_to_compare.reason
    assert claim_verdict(cfg, claim, {"busi": {"acc": learned, "vvt": learned}}, {"busi": {"vvt": beats}}, pd.DataFrame()).verdict == HOLDS
