"""The committed tree: no absolute path of the machine it was written on (issue 13 §1).

Checks every tracked text file outside ``medvit/assets/demo_models/`` and ``medvit/assets/samples/`` (their rules, stricter,
are in ``tests/test_shipped_assets.py``) for home and work folders, site-packages paths and the
checkout's own location. Example paths in docs such as ``/tmp/tour`` or ``~/data`` are fine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:home|Users|root|work)/|(?<![\w])[A-Za-z]:[\\/]Users|/site-packages/")
SKIP = ("medvit/assets/demo_models/", "medvit/assets/samples/", "tests/test_shipped_assets.py", "tests/test_repository.py")


def _tracked_text_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = []
    for name in names.decode().split("\0"):
        path = REPO / name
        if name and not name.startswith(SKIP) and path.is_file() and path.stat().st_size < 2_000_000:
            data = path.read_bytes()
            if b"\0" not in data[:8192]:
                files.append(path)
    return files


def test_pattern():
    for text in ("root: /work/shared/pools", "'/home/ana/x.png'", "C:\\Users\\ana", "/usr/lib/python3.11/site-packages/x"):
        assert MACHINE_PATH.search(text), text
    for text in ("--out /tmp/tour/run", "~/data/HAM10000", "data_manifests/busi.csv", "$DATA/pools", "a/work/b"):
        assert not MACHINE_PATH.search(text), text


def test_no_machine_path_committed():
    offenders = {}
    for path in _tracked_text_files():
        text = path.read_text(errors="replace")
        hits = MACHINE_PATH.findall(text) + ([str(REPO)] if str(REPO) in text else [])
        if hits:
            offenders[path.relative_to(REPO).as_posix()] = sorted(set(hits))
    assert not offenders, f"absolute machine paths in committed files: {offenders}"
