"""The CLI's parser: every sub-command is there, and building it (``medvit --help``) imports no torch."""

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import medvit.explain
from medvit.cli import build_parser, main
from medvit.commands import COMMAND_MODULES
from medvit.errors import USER_ERRORS, RunError, UnknownNameError
from medvit.explain import options

REPO = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of the ``medvit`` parser, read from the parser itself."""
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


COMMANDS = sorted(_commands())
DOCS = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def test_every_command_module_registers_commands() -> None:
    for name in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"medvit.commands.{name}").register(sub)
        assert sub.choices and set(sub.choices) <= set(COMMANDS), f"medvit.commands.{name}: {sorted(sub.choices)}"
    assert {"calibrate", "pretrain", "demo-defaults", "study", "train", "explain"} <= set(COMMANDS)


def test_help_of_every_command_imports_no_torch() -> None:
    code = (
        "import sys, contextlib, io; from medvit.cli import build_parser; "
        f"names = {COMMANDS!r}\n"
        "for name in names:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        build_parser().parse_args([name, '--help'])\n"
        "print([m for m in ('torch', 'timm', 'pytorch_grad_cam', 'monai') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_a_function_and_docs(command, capsys) -> None:
    sub = _commands()[command]
    assert callable(sub.get_default("func")), f"medvit {command} sets no func"
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, "--help"])
    assert exited.value.code == 0 and f"usage: medvit {command}" in capsys.readouterr().out
    assert re.search(rf"medvit {re.escape(command)}(?![\w-])", DOCS), f"`medvit {command}` is in no README/docs page"


def test_lazy_explain_exports_resolve() -> None:
    for name, source in medvit.explain._SOURCES.items():
        assert getattr(medvit.explain, name) is getattr(importlib.import_module(f"medvit.explain.{source}"), name)
    assert sorted(medvit.explain._SOURCES) == medvit.explain.__all__
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        medvit.explain.nope
    assert tuple(medvit.explain.CAM_METHODS) == options.CAM_METHOD_NAMES
    assert medvit.explain.DEFAULT_TOP_FRACTION == options.DEFAULT_TOP_FRACTION == 0.2


def _raise(error: BaseException):
    def run(args):
        raise error

    return run


@pytest.mark.parametrize(
    "error",
    [ValueError("bad lr: -1"), FileNotFoundError("x.csv not found"), UnknownNameError("unknown model 'vvt_x'"),
     RunError("no usable image")],
)
def test_user_errors_print_one_line(monkeypatch, capsys, error) -> None:
    monkeypatch.setattr("medvit.commands.models._run", _raise(error))
    assert main(["models"]) == 1
    assert capsys.readouterr().err == f"medvit models: error: {error.args[0]}\n"


@pytest.mark.parametrize("error", [KeyError("num_classes"), RuntimeError("shape mismatch"), TypeError("bad call")])
def test_bugs_print_their_type_and_a_hint_and_their_traceback_with_verbose(monkeypatch, capsys, error) -> None:
    monkeypatch.setattr("medvit.commands.models._run", _raise(error))
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"medvit models: internal error: {type(error).__name__}: ") and err.count("\n") == 1
    assert "medvit -v models" in err
    with pytest.raises(type(error)) as raised:  # -v: the exception itself, so Python prints its traceback
        main(["-v", "models"])
    assert raised.value is error


def test_verbose_shows_the_traceback_of_user_errors_too(monkeypatch) -> None:
    monkeypatch.setattr("medvit.commands.models._run", _raise(ValueError("bad lr: -1")))
    with pytest.raises(ValueError, match="bad lr"):
        main(["-v", "models"])


def test_a_real_user_error_prints_one_line_and_no_traceback(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    done = subprocess.run([sys.executable, "-m", "medvit.cli", "train", "--config", str(missing), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("medvit train: error: ") and str(missing) in done.stderr


def test_medvit_error_types_are_user_errors_and_keep_their_builtin_bases() -> None:
    from medvit.data.datasets import LayoutError
    from medvit.data.images import ImageReadError

    for error in (LayoutError("x"), ImageReadError("x", "empty file"), UnknownNameError("x"), RunError("x")):
        assert isinstance(error, USER_ERRORS), error
    assert isinstance(UnknownNameError("x"), KeyError) and isinstance(RunError("x"), RuntimeError)
    assert str(UnknownNameError("unknown model 'x'")) == "unknown model 'x'"  # not KeyError's quoted repr
    assert not isinstance(KeyError("x"), USER_ERRORS) and not isinstance(RuntimeError("x"), USER_ERRORS)
