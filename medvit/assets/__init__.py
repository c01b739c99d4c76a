"""Package data: the embedded demo models and the bundled sample images, shipped inside the wheel.

Found through :mod:`importlib.resources`, so a source checkout (``pip install -e .``) and a plain
``pip install .`` read the same folders:

* ``demo_models/``: one run directory per embedded model (written by ``make demo-models`` through
  ``medvit demo-export``);
* ``samples/``: sample images (+ BUSI masks), their catalogue ``samples.csv`` and ``ATTRIBUTION.md``
  (written by ``experiments/build_samples.py``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DEMO_MODELS", "SAMPLES", "demo_models_dir", "samples_dir"]

DEMO_MODELS = "demo_models"
SAMPLES = "samples"


def _folder(name: str) -> Path:
    # a regular package installed as files (every wheel install): its Traversable is a pathlib.Path
    return Path(resources.files(__name__).joinpath(name))


def demo_models_dir() -> Path:
    """The folder of the embedded demo models (``medvit/assets/demo_models/``)."""
    return _folder(DEMO_MODELS)


def samples_dir() -> Path:
    """The folder of the bundled samples and their ``samples.csv`` (``medvit/assets/samples/``)."""
    return _folder(SAMPLES)
