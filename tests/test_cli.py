"""The CLI's parser: every sub-command is there, and building it (``medvit --help``) imports no torch."""

import importlib
import subprocess
import sys

import pytest

import medvit.explain
from medvit.explain import options


def test_help_builds_without_torch_and_lists_every_command() -> None:
    code = (
        "import sys; from medvit.cli import build_parser; parser = build_parser(); "
        "print(sorted(parser._subparsers._group_actions[0].choices)); "
        "print([m for m in ('torch', 'timm', 'pytorch_grad_cam', 'monai') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[1] == "[]"
    for command in ("models", "prepare", "synth", "train", "evaluate", "report", "compare", "export", "explain",
                    "demo", "demo-export"):
        assert f"'{command}'" in out[0]


def test_lazy_explain_exports_resolve() -> None:
    for name, source in medvit.explain._SOURCES.items():
        assert getattr(medvit.explain, name) is getattr(importlib.import_module(f"medvit.explain.{source}"), name)
    assert sorted(medvit.explain._SOURCES) == medvit.explain.__all__
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        medvit.explain.nope
    assert tuple(medvit.explain.CAM_METHODS) == options.CAM_METHOD_NAMES
    assert medvit.explain.DEFAULT_TOP_FRACTION == options.DEFAULT_TOP_FRACTION == 0.2
