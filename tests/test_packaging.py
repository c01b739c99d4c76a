"""A non-editable install serves the demo: build the wheel, install it into a fresh venv, start the page.

The wheel is built from a copy of ``pyproject.toml``, ``README.md`` and ``medvit/`` (so nothing is written
into the checkout) with ``--no-build-isolation`` (offline). The fresh venv has no pip and no packages of
its own: the wheel goes in with ``pip --python VENV install --no-deps --no-index``, and the dependencies
(torch, streamlit, ...) come from this interpreter's site-packages through a ``.pth`` file, whose
directories are added to ``sys.path`` without running their ``.pth`` hooks, so this checkout's editable
``medvit`` stays out of the fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from medvit.assets import demo_models_dir, samples_dir

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120

pytestmark = pytest.mark.slow  # builds and installs a 50 MB wheel, then starts Streamlit (about 30 s)


def _files(folder: Path) -> list[str]:
    """Paths (relative to the checkout) of the files under ``folder``."""
    return sorted(p.relative_to(REPO).as_posix() for p in folder.rglob("*") if p.is_file())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "medvit", source / "medvit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(source)],
        check=True, cwd=source,
    )
    (built,) = out.glob("medvit-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its dependencies are read from this interpreter's site-packages."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    Path(site, "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True,
    )
    return folder


def test_the_wheel_holds_every_committed_asset(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for folder in (demo_models_dir(), samples_dir()):
        missing = [name for name in _files(folder) if name not in names]
        assert _files(folder) and not missing, f"not in the wheel: {missing[:5]} ({len(missing)})"
    assert "medvit/demo/streamlit_app.py" in names
    assert not any(name.startswith(("tests/", "experiments/", "app/")) for name in names)


def test_installed_package_finds_its_models_and_samples(venv, tmp_path):
    code = (
        "import json, medvit; from medvit import demo; "
        "entries = demo.discover_runs(None); "
        "print(json.dumps({'file': medvit.__file__, 'page': str(demo.PAGE_SCRIPT), "
        "'embedded': sorted(e.path.name for e in entries if e.is_embedded), "
        "'defaults': sorted(e.dataset for e in entries if e.is_default), "
        "'samples': len(demo.load_samples())}))"
    )
    shown = json.loads(
        subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       check=True).stdout
    )
    assert Path(shown["file"]).is_relative_to(venv) and Path(shown["page"]).is_file()
    checkout = sorted(p.name for p in demo_models_dir().iterdir() if (p / "model.json").is_file())
    assert shown["embedded"] == checkout and shown["defaults"] == ["busi", "eyepacs", "ham10000"]
    assert shown["samples"] == sum(1 for _ in (samples_dir() / "samples.csv").open()) - 1


def test_installed_medvit_demo_serves_the_page(venv, tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH="")
    log = (tmp_path / "demo.log").open("w")
    child = subprocess.Popen(
        [str(venv / "bin" / "medvit"), "demo", "--port", str(port), "--runs", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline, health = time.monotonic() + START_TIMEOUT_S, ""
        while time.monotonic() < deadline and child.poll() is None and health != "ok":
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as reply:
                    health = reply.read().decode()
            except OSError:
                time.sleep(0.5)
        assert health == "ok", (tmp_path / "demo.log").read_text()[-2000:]
        with urllib.request.urlopen(f"http://localhost:{port}/", timeout=10) as reply:
            assert reply.status == 200 and b"<html" in reply.read().lower()
    finally:
        child.terminate()
        child.wait(timeout=30)
        log.close()
    assert child.returncode == 128 + 15  # medvit demo stops its Streamlit child and reports SIGTERM


def test_installed_page_runs_on_the_embedded_default_model(venv, tmp_path):
    code = (
        "import sys; from streamlit.testing.v1 import AppTest; from medvit.demo import PAGE_SCRIPT; "
        "at = AppTest.from_file(str(PAGE_SCRIPT), default_timeout=300); at.run(); "
        "assert not at.exception, at.exception; assert not at.error, [e.value for e in at.error]; "
        "print(at.selectbox(key='run-busi').value)"
    )
    shown = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                           text=True, check=True).stdout
    assert str(venv) in shown
