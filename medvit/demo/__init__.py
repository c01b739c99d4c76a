"""The library side of the Streamlit demo: everything the page shows is computed here.

The page (``medvit/demo/streamlit_app.py``, run by ``streamlit run``) is widgets plus calls into this package, one concept per module:

* :mod:`~medvit.demo.catalog`: :func:`discover_runs` lists the embedded demo models (``medvit/assets/demo_models/``)
  and the run directories under a folder (default ``runs/``); :func:`default_run` picks the default;
* :mod:`~medvit.demo.uploads`: :func:`read_upload` validates and decodes an uploaded file,
  :func:`load_samples` reads the bundled sample catalogue (``medvit/assets/samples/samples.csv``);
* :mod:`~medvit.demo.explanation`: :class:`DemoModel` (a loaded run and its lock) and
  :func:`explain_image` (prediction, four stage CAMs, overlays, localisation scores) with its downloads;
* :mod:`~medvit.demo.card`: :func:`load_model_card` and :func:`demo_models_markdown`, from the run's
  records and ``report/summary.json``;
* :mod:`~medvit.demo.export`: :func:`export_demo_model` (``medvit demo-export``) and :func:`validation_score`;
* :mod:`~medvit.demo.serve`: :func:`serve_demo` (``medvit demo``), :func:`streamlit_command` and
  :data:`PAGE_SCRIPT` (the page).
"""

from medvit.demo.card import ModelCard, demo_models_markdown, load_model_card, model_family
from medvit.demo.catalog import RunEntry, default_run, discover_runs
from medvit.demo.compare import MAX_COMPARED, MIN_COMPARED, check_comparison, comparison_table
from medvit.demo.explanation import (
    DemoModel,
    Explanation,
    StageView,
    explain_image,
    explanation_to_json,
    load_demo_model,
    overlay_stages,
    render_explanation_png,
)
from medvit.demo.export import export_demo_model, validation_score
from medvit.demo.serve import PAGE_SCRIPT, serve_demo, streamlit_command
from medvit.demo.uploads import (
    MAX_IMAGE_PIXELS,
    MAX_UPLOAD_BYTES,
    TRANSFER_LIMIT_BYTES,
    UPLOAD_FORMATS,
    UPLOAD_TYPES,
    Sample,
    Upload,
    load_samples,
    open_upload,
    read_upload,
)

__all__ = [
    "PAGE_SCRIPT",
    "MAX_COMPARED",
    "MIN_COMPARED",
    "check_comparison",
    "comparison_table",
    "MAX_UPLOAD_BYTES",
    "MAX_IMAGE_PIXELS",
    "TRANSFER_LIMIT_BYTES",
    "UPLOAD_FORMATS",
    "UPLOAD_TYPES",
    "RunEntry",
    "Sample",
    "DemoModel",
    "Explanation",
    "StageView",
    "ModelCard",
    "discover_runs",
    "default_run",
    "Upload",
    "load_samples",
    "open_upload",
    "read_upload",
    "load_demo_model",
    "explain_image",
    "overlay_stages",
    "explanation_to_json",
    "render_explanation_png",
    "load_model_card",
    "model_family",
    "demo_models_markdown",
    "export_demo_model",
    "validation_score",
    "streamlit_command",
    "serve_demo",
]
