"""medvit demo page: class probabilities and Grad-CAM at the four pyramid stages of a trained model.

Widgets and calls into :mod:`medvit.demo`; nothing is computed here. Run it with ``make demo`` or
``medvit demo [--port P] [--runs DIR]`` (``streamlit run medvit/demo/streamlit_app.py -- --runs DIR`` works too).
Research use only: not for diagnosis.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")

import altair as alt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from medvit import assets, demo  # noqa: E402
from medvit.data.images import read_image, read_mask  # noqa: E402
from medvit.explain import CAM_METHODS, DEFAULT_TOP_FRACTION  # noqa: E402
from medvit.clinical.decision import decide  # noqa: E402
from medvit.run_dir import BEST_WEIGHTS  # noqa: E402

_logger = logging.getLogger("medvit.app")

EMBEDDED_DIR = assets.demo_models_dir()
SAMPLES_DIR = assets.samples_dir()
NOTICE = (
    "**Research use only — not for diagnosis.** These small demonstration models were fine-tuned on a "
    "few hundred public images; their predictions and heat maps are not medical advice."
)
DATASET_TITLES = {
    "busi": "Breast ultrasound (BUSI)",
    "ham10000": "Skin lesions (HAM10000)",
    "eyepacs": "Fundus, diabetic retinopathy (EyePACS)",
}
INPUT_SAMPLE, INPUT_UPLOAD = "Bundled sample", "Upload an image"
MODE_EXPLAIN, MODE_COMPARE = "Explain one model", "Compare models"
PREDICTED = "predicted class"
LOAD_ERRORS = (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The page's own options (after ``--`` on the ``streamlit run`` line); unknown ones are ignored."""
    parser = argparse.ArgumentParser(prog="streamlit_app.py", add_help=False)
    parser.add_argument("--runs", default="runs")
    args, _ = parser.parse_known_args(argv)
    return args


@st.cache_resource(show_spinner="Loading the model…", max_entries=6)
def get_model(path: str, weights_mtime: float) -> demo.DemoModel:
    """One loaded model per run directory, shared by all sessions (``weights_mtime`` reloads a retrained run)."""
    return demo.load_demo_model(path)


@st.cache_data(show_spinner="Computing the stage CAMs…", max_entries=64)
def get_explanation(
    _model: demo.DemoModel,
    run_key: str,
    image_key: str,
    _rgb: np.ndarray,
    method: str,
    target: int | None,
    _mask: np.ndarray | None,
    faithfulness: bool = False,
) -> demo.Explanation:
    """Cached :func:`medvit.demo.explain_image`: only new (run, image, method, target, faithfulness) run the model."""
    return demo.explain_image(_model, _rgb, method=method, target=target, mask=_mask, faithfulness=faithfulness)


@st.cache_data(show_spinner=False, max_entries=64)
def get_sample_arrays(path: str, masks: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A bundled sample's RGB image and merged lesion mask."""
    rgb = read_image(path)
    mask = read_mask(list(masks), shape=rgb.shape[:2]) if masks else None
    return rgb, mask


def _weights_mtime(path: Path) -> float:
    weights = path / BEST_WEIGHTS
    return weights.stat().st_mtime if weights.is_file() else 0.0


def sidebar_model(entries: list[demo.RunEntry]) -> tuple[demo.RunEntry, str, float]:
    """Dataset, run directory, CAM method and opacity widgets; returns (entry, method, alpha)."""
    datasets = list(dict.fromkeys(e.dataset for e in entries))
    dataset = st.sidebar.selectbox(
        "Dataset", datasets, format_func=lambda d: DATASET_TITLES.get(d, d or "unknown"), key="dataset"
    )
    runs = [e for e in entries if e.dataset == dataset]
    default = demo.default_run(runs)
    entry = st.sidebar.selectbox(
        "Model (run directory)",
        runs,
        index=runs.index(default) if default in runs else 0,
        format_func=lambda e: f"{e.label} · {e.model_name or '?'} ({demo.model_family(e.model_name).split(' (')[0] or '?'})"
        + (" · default" if e.is_default else ""),
        key=f"run-{dataset}",
        help="Embedded demo models ship with the app; other run directories are found under the runs folder.",
    )
    method = st.sidebar.selectbox(
        "CAM method", list(CAM_METHODS), key="method", help="pytorch-grad-cam method, applied at every stage."
    )
    alpha = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
    return entry, method, alpha


def choose_input(dataset: str) -> tuple[np.ndarray | None, np.ndarray | None, str, demo.Sample | None]:
    """Sample picker or uploader; returns (rgb, mask, name, sample) with ``rgb`` None on no/bad input."""
    try:
        samples = [s for s in demo.load_samples(SAMPLES_DIR) if s.dataset == dataset]
    except (FileNotFoundError, ValueError) as error:
        st.error(f"The bundled samples cannot be read: {error}")
        samples = []
    options = [INPUT_SAMPLE, INPUT_UPLOAD] if samples else [INPUT_UPLOAD]
    source = st.radio("Input", options, horizontal=True, key="source")
    if source == INPUT_SAMPLE:
        sample = st.selectbox("Sample", samples, format_func=lambda s: s.name, key=f"sample-{dataset}")
        try:
            rgb, mask = get_sample_arrays(str(sample.path), tuple(map(str, sample.mask)) if sample.mask else None)
        except LOAD_ERRORS as error:
            st.error(f"Sample {sample.path.name} cannot be read: {error}")
            return None, None, sample.path.name, sample
        return rgb, mask, sample.path.name, sample
    uploaded = st.file_uploader(
        f"{demo.UPLOAD_FORMATS}, up to {demo.MAX_UPLOAD_BYTES // 2**20} MB and "
        f"{demo.MAX_IMAGE_PIXELS // 1_000_000} megapixels",
        type=list(demo.UPLOAD_TYPES),
        max_upload_size=demo.TRANSFER_LIMIT_BYTES // 2**20,  # larger files reach read_upload, which says why
        key="upload",
    )
    if uploaded is None:
        st.info("Upload an image to explain it.")
        return None, None, "", None
    try:
        upload = demo.open_upload(uploaded.getvalue(), uploaded.name)
        if upload.num_frames > 1:
            frame = st.slider("Frame", 1, upload.num_frames, 1, key=f"frame-{uploaded.file_id}")
            if frame != 1:
                upload = demo.open_upload(uploaded.getvalue(), uploaded.name, frame=frame - 1)
    except ValueError as error:
        st.error(f"Cannot use this upload: {error}")
        return None, None, uploaded.name, None
    if upload.is_dicom:  # modality, size and frame only: never the patient's name, ID or dates
        st.caption(upload.summary)
    return upload.rgb, None, uploaded.name, None


def show_prediction(explanation: demo.Explanation, sample: demo.Sample | None) -> None:
    """Predicted class, true label and the sorted probability chart and table."""
    names = explanation.class_names
    table = pd.DataFrame(explanation.ranking, columns=["class", "probability"])
    left, right = st.columns([1, 2])
    predicted = names[explanation.predicted]
    left.metric("Predicted class", predicted)
    left.caption(f"probability {explanation.probabilities[explanation.predicted]:.1%}")
    if sample is not None:
        verdict = "matches" if sample.label == predicted else "differs from"
        left.metric("True label", sample.label)
        left.caption(
            f"The prediction {verdict} the dataset label. "
            + ("This image (or a copy) **was seen in training**." if sample.seen_in_training
               else "This image was held out: not seen in training.")
        )
    chart = (
        alt.Chart(table)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            y=alt.Y("class:N", sort="-x", title=None),
            tooltip=["class", alt.Tooltip("probability:Q", format=".1%")],
        )
        .properties(height=alt.Step(24))
    )
    right.altair_chart(chart, width="stretch", height="content")
    with right.expander("Probabilities (table)"):
        st.dataframe(table, hide_index=True, key="probabilities")


def show_clinical(explanation: demo.Explanation, info: dict) -> None:
    """Calibration, prediction set and operating-point decisions for this image, one sentence each."""
    decision = decide(explanation.probabilities, explanation.class_names, info)
    st.caption(decision.probability_sentence)
    if decision.prediction_set is not None:
        st.markdown(f"**Prediction set:** {decision.set_text}")
        st.caption(decision.set_sentence)
    for d in decision.decisions:
        st.markdown(f"**{'Above' if d.above else 'Below'} the {d.description} for {decision.question}**")
        st.caption(d.sentence)


def show_stages(explanation: demo.Explanation, alpha: float) -> None:
    """The input and the four stage overlays side by side, with stage, stride and resolution."""
    names = explanation.class_names
    st.subheader(f"{explanation.method} for “{names[explanation.target]}” at the four pyramid stages")
    overlays = demo.overlay_stages(explanation, alpha)
    columns = st.columns(1 + len(overlays))
    height, width = explanation.image.shape[:2]
    columns[0].image(
        explanation.image,
        caption=f"Input ({explanation.input_size[0]}×{explanation.input_size[1]} to the network)",
        alt="input image",
        width="stretch",
    )
    for column, view, overlay in zip(columns[1:], explanation.stages, overlays):
        column.image(overlay, caption=view.caption, alt=f"stage {view.index + 1} overlay", width="stretch")
        if view.faithfulness is not None:
            column.caption(faithfulness_caption(view.faithfulness))
    st.caption(
        f"Each map is the {explanation.method} map of the class score at one stage's output (feature grid shown "
        f"under it), upsampled to the input. Model input {explanation.input_size[0]}×{explanation.input_size[1]}; computed in "
        f"{explanation.seconds:.2f} s on CPU."
    )
    if explanation.mask is not None:
        left, right = st.columns([1, 4])
        left.image(explanation.mask * 255, caption="Lesion mask (dataset)", alt="lesion mask", width="stretch")
        names = {
            "pointing": "pointing game (peak in lesion)",
            "energy": "CAM energy inside the lesion",
            "iou": f"IoU of the top {DEFAULT_TOP_FRACTION:.0%} of the CAM",
        }
        scores = pd.DataFrame(
            [
                {"stage": view.caption, **{names.get(k, k): v for k, v in (view.localization or {}).items()}}
                for view in explanation.stages
            ]
        )
        right.markdown("**Localisation of each stage's CAM against the lesion mask**")
        right.dataframe(scores, hide_index=True, key="localization")
    if explanation.has_faithfulness:
        table = pd.DataFrame([{"stage": view.caption, **(view.faithfulness or {})} for view in explanation.stages])
        st.markdown(
            "**Faithfulness of each stage's map** (pytorch-grad-cam ROAD at percentiles 20/50/80: higher "
            "`road_combined` = the score depends more on what the map highlights; deletion area: lower is "
            "more faithful; insertion area: higher)"
        )
        st.dataframe(table, hide_index=True, key="faithfulness")


def faithfulness_caption(scores: dict) -> str:
    """``ROAD +0.12 · deletion 0.31 · insertion 0.55`` (n/a for a constant map)."""

    def number(name: str, signed: bool = False) -> str:
        value = scores.get(name)
        return "n/a" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")

    return (
        f"ROAD {number('road_combined', signed=True)} · deletion {number('deletion_auc')} · "
        f"insertion {number('insertion_auc')}"
    )


def show_downloads(explanation: demo.Explanation, alpha: float, name: str) -> None:
    """Grid PNG and JSON downloads (the PNG is rendered only when clicked)."""
    stem = Path(name).stem or "image"
    left, right = st.columns(2)
    left.download_button(
        "Download the overlay grid (PNG)",
        data=functools.partial(demo.render_explanation_png, explanation, alpha),
        file_name=f"{stem}_stage_cams.png",
        mime="image/png",
        on_click="ignore",
        key="download-png",
    )
    right.download_button(
        "Download the prediction (JSON)",
        data=json.dumps(demo.explanation_to_json(explanation, source=name), indent=2),
        file_name=f"{stem}_prediction.json",
        mime="application/json",
        on_click="ignore",
        key="download-json",
    )


def show_model_card(entry: demo.RunEntry) -> None:
    """Backbone, weights, training, data and per-class test metrics, all read from the run directory."""
    with st.expander("Model card", expanded=False):
        try:
            card = demo.load_model_card(entry.path)
        except LOAD_ERRORS as error:
            st.error(f"No model card for {entry.path}: {error}")
            return
        st.markdown(
            f"**Backbone:** `{card.backbone}`" + (f" — {card.family}" if card.family else "") + "  \n"
            f"**Initial weights:** {card.pretrained}  \n"
            f"**Run directory:** `{entry.path}`"
            + (f" (embedded with the app, {card.selection.get('storage', 'fp16')} weights)" if entry.is_embedded else "")
        )
        if card.selection:
            candidates = ", ".join(
                f"{c['run']} ({c['how']}): {c['score']:.3f}" for c in card.selection.get("candidates", [])
            )
            st.markdown(
                f"**How it was trained:** {card.selection.get('how', '')}. Chosen by "
                f"{'validation' if card.selection.get('split') == 'val' else 'test-set'} "
                f"{card.selection.get('metric', '')} among: {candidates}."
            )
        sizes = ", ".join(f"{split} {count}" for split, count in card.split_sizes.items()) or "not recorded"
        st.markdown(
            f"**Training data:** {DATASET_TITLES.get(card.dataset, card.dataset)}; manifest {card.manifest}; "
            f"images per split: {sizes}."
            + (f"  \n**Training time:** {card.train_seconds / 60:.1f} min" if card.train_seconds else "")
        )
        if card.training:
            st.table(pd.DataFrame(list(card.training.items()), columns=["setting", "value"]).set_index("setting"))
        if card.summary:
            st.markdown("**Test set** (95% bootstrap confidence intervals)")
            st.table(pd.DataFrame(list(card.summary.items()), columns=["metric", "value"]).set_index("metric"))
        if card.per_class:
            st.markdown("**Per class** (test set, 95% CIs)")
            st.dataframe(pd.DataFrame(card.per_class), hide_index=True, key="per-class")
        else:
            st.info("This run has no report/ yet; create one with `medvit report RUN`.")
        if card.clinical:
            st.markdown("**Clinical reading** (test set, 95% CIs; thresholds, temperature and sets from validation)")
            st.table(pd.DataFrame(list(card.clinical.items()), columns=["what", "test set"]).set_index("what"))


def _entry_label(entry: demo.RunEntry) -> str:
    return f"{entry.label} · {entry.model_name or '?'}" + (" · default" if entry.is_default else "")


def _image_key(rgb: np.ndarray, mask: np.ndarray | None) -> str:
    key = hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()
    if mask is not None:
        key += hashlib.sha256(np.ascontiguousarray(mask).tobytes()).hexdigest()[:16]
    return key


def compare_page(entries: list[demo.RunEntry]) -> None:
    """Two to four models of one dataset on the same image: one row per model (probabilities, stage CAMs)."""
    datasets = list(dict.fromkeys(e.dataset for e in entries))
    dataset = st.sidebar.selectbox(
        "Dataset", datasets, format_func=lambda d: DATASET_TITLES.get(d, d or "unknown"), key="cmp-dataset"
    )
    runs = sorted((e for e in entries if e.dataset == dataset), key=lambda e: not e.is_default)
    chosen = st.sidebar.multiselect(
        f"Models to compare ({demo.MIN_COMPARED}-{demo.MAX_COMPARED})",
        runs,
        default=runs[: demo.MAX_COMPARED],
        format_func=_entry_label,
        max_selections=demo.MAX_COMPARED,
        key=f"cmp-runs-{dataset}",
        help="Embedded demo models and the run directories under the runs folder (e.g. a medvit study).",
    )
    method = st.sidebar.selectbox("CAM method", list(CAM_METHODS), key="cmp-method")
    alpha = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="cmp-alpha")
    st.sidebar.caption("Research use only — not for diagnosis.")
    try:
        demo.check_comparison(chosen)
    except ValueError as error:
        st.info(f"Compare models: {error}.")
        return
    rgb, mask, name, sample = choose_input(dataset)
    if rgb is None:
        return
    image_key = _image_key(rgb, mask)
    explanations: dict[str, demo.Explanation] = {}
    for entry in chosen:
        try:
            model = get_model(str(entry.path), _weights_mtime(entry.path))
            explanations[_entry_label(entry)] = get_explanation(
                model, f"{entry.path}:{_weights_mtime(entry.path)}", image_key, rgb, method, None, mask, False
            )
        except LOAD_ERRORS as error:
            st.error(f"{entry.path} cannot explain {name}: {error}")
    if not explanations:
        return
    st.subheader(f"{method} of each model's predicted class at the four pyramid stages")
    for label, explanation in explanations.items():
        names = explanation.class_names
        top = explanation.predicted
        st.markdown(f"**{label}**: {names[top]} (p = {explanation.probabilities[top]:.2f})")
        columns = st.columns([1.3, 1, 1, 1, 1])
        probabilities = pd.DataFrame({"class": names, "probability": explanation.probabilities})
        columns[0].dataframe(probabilities, hide_index=True, key=f"cmp-probs-{label}")
        for column, view, overlay in zip(columns[1:], explanation.stages, demo.overlay_stages(explanation, alpha)):
            caption = view.caption
            if view.localization is not None and view.localization.get("energy") is not None:
                caption += f" · energy in lesion {view.localization['energy']:.2f}"
            column.image(overlay, caption=caption, alt=f"{label} stage {view.index + 1} overlay", width="stretch")
    st.markdown("**Side by side**" + (" (CAM energy inside the lesion mask per stage)" if mask is not None else ""))
    st.dataframe(demo.comparison_table(explanations), hide_index=True, key="cmp-table")


def main() -> None:
    """The page."""
    st.set_page_config(page_title="medvit: pyramid-stage Grad-CAM", layout="wide")
    args = parse_args(sys.argv[1:])
    st.title("Pyramid-stage Grad-CAM for medical images")
    st.warning(NOTICE)
    st.sidebar.header("Model")
    runs_dir = st.sidebar.text_input("Runs folder", value=args.runs, key="runs_dir")
    entries = demo.discover_runs(runs_dir, EMBEDDED_DIR)
    if not entries:
        st.error(
            f"No model found: {EMBEDDED_DIR} has no embedded demo models and {runs_dir!r} no run directories. "
            "Create them with `make demo-models` or train one with `medvit train`."
        )
        return
    if st.sidebar.radio("Mode", [MODE_EXPLAIN, MODE_COMPARE], horizontal=True, key="mode") == MODE_COMPARE:
        compare_page(entries)
        return
    entry, method, alpha = sidebar_model(entries)
    model = None
    try:
        model = get_model(str(entry.path), _weights_mtime(entry.path))
    except LOAD_ERRORS as error:
        st.error(f"The run directory {entry.path} does not load: {error}")
    class_names = model.run.class_names if model is not None else []
    target_name = st.sidebar.selectbox("Explain class", [PREDICTED, *class_names], key=f"target-{entry.path}")
    faithfulness = st.sidebar.toggle(
        "Per-stage faithfulness",
        value=False,
        key="faithfulness",
        help="ROAD and deletion/insertion scores next to each overlay; costs extra model passes (seconds on CPU).",
    )
    st.sidebar.caption("Research use only — not for diagnosis.")

    rgb, mask, name, sample = choose_input(entry.dataset)
    if model is not None and rgb is not None:
        target = None if target_name == PREDICTED else class_names.index(target_name)
        image_key = _image_key(rgb, mask)
        try:
            explanation = get_explanation(
                model, f"{entry.path}:{_weights_mtime(entry.path)}", image_key, rgb, method, target, mask, faithfulness
            )
        except (ValueError, RuntimeError) as error:
            st.error(f"Cannot explain {name}: {error}")
        else:
            show_prediction(explanation, sample)
            show_clinical(explanation, model.run.info)
            show_stages(explanation, alpha)
            show_downloads(explanation, alpha, name)
    show_model_card(entry)


main()
