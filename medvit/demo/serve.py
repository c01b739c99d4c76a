"""Serving the page (``medvit demo``): the ``streamlit run`` command line and the process that runs it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from medvit.demo.catalog import app_dir
from medvit.demo.uploads import TRANSFER_LIMIT_BYTES

__all__ = ["streamlit_command", "serve_demo"]

_logger = logging.getLogger(__name__)


def streamlit_command(
    port: int = 8501,
    runs_dir: str | Path = "runs",
    address: str = "localhost",
    script: str | Path | None = None,
) -> list[str]:
    """The ``streamlit run`` command line of the demo: headless, offline; uploads checked by ``read_upload``.

    Args:
        port: HTTP port.
        runs_dir: folder the page searches for run directories (passed after ``--``).
        address: address to bind.
        script: the page (default ``app/streamlit_app.py`` of the checkout).
    """
    script = Path(script) if script is not None else app_dir() / "streamlit_app.py"
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.headless",
        "true",
        "--server.port",
        str(int(port)),
        "--server.address",
        address,
        "--server.maxUploadSize",
        str(TRANSFER_LIMIT_BYTES // 2**20),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--",
        "--runs",
        str(runs_dir),
    ]


def serve_demo(port: int = 8501, runs_dir: str | Path = "runs", address: str = "localhost") -> int:
    """Run the demo page until interrupted (``medvit demo``); returns Streamlit's exit code."""
    command = streamlit_command(port=port, runs_dir=runs_dir, address=address)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TIMM_OFFLINE="1", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    _logger.info("serving the demo at http://%s:%d (Ctrl-C stops it)", address, port)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
