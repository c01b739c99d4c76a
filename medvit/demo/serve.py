"""Serving the page (``medvit demo``): the ``streamlit run`` command line and the process that runs it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from medvit.demo.uploads import TRANSFER_LIMIT_BYTES

__all__ = ["DEFAULT_PORT", "PAGE_SCRIPT", "PORT_ENV", "STOP_TIMEOUT_S", "resolve_port", "serve_demo", "streamlit_command"]

_logger = logging.getLogger(__name__)

DEFAULT_PORT = 8501
"""Streamlit's default port."""

PORT_ENV = "STREAMLIT_SERVER_PORT"
"""Streamlit's own environment variable for the port; ``medvit demo`` honours it when ``--port`` is absent."""

PAGE_SCRIPT = Path(__file__).with_name("streamlit_app.py")
"""The Streamlit page, a module of this package (like ``streamlit hello``), so an installed wheel serves it."""

STOP_TIMEOUT_S = 10.0
"""How long a stopping ``medvit demo`` waits for Streamlit to exit after SIGTERM before killing it."""


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
        script: the page (default :data:`PAGE_SCRIPT`).
    """
    script = Path(script) if script is not None else PAGE_SCRIPT
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


def resolve_port(port: int | None = None) -> int:
    """The port to serve on: ``port`` when given, else Streamlit's ``STREAMLIT_SERVER_PORT``, else 8501.

    Raises:
        ValueError: the port (or the environment variable) is not a number in 1..65535.
    """
    if port is None:
        raw = os.environ.get(PORT_ENV, "").strip()
        if not raw:
            return DEFAULT_PORT
        if not raw.isdigit() or not 1 <= int(raw) <= 65535:
            raise ValueError(f"{PORT_ENV}={raw!r}: expected a port number in 1..65535; fix it or pass --port")
        return int(raw)
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: expected a port number in 1..65535")
    return port


class _Stopped(Exception):
    """Raised in the main thread by the SIGTERM handler, so that ``finally`` stops the child."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def _stop(child: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the child (Streamlit shuts down cleanly on it), SIGKILL it after ``timeout`` seconds."""
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _logger.warning("streamlit (pid %d) did not stop within %.0f s; killing it", child.pid, timeout)
        child.kill()
        child.wait()


def _die_with_parent() -> None:
    """In the child, before exec (Linux): ask the kernel for SIGTERM when ``medvit demo`` dies, even by SIGKILL."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_demo(port: int | None = None, runs_dir: str | Path = "runs", address: str = "localhost") -> int:
    """Run the demo page until it exits or is stopped (``medvit demo``); returns the exit code.

    Ctrl-C (SIGINT) or SIGTERM sent to this process stops the Streamlit child too (SIGTERM, then
    SIGKILL after :data:`STOP_TIMEOUT_S`) and returns ``128 + signal``. On Linux the child also gets
    SIGTERM from the kernel when this process dies without clean-up (SIGKILL, out of memory).

    Args:
        port: HTTP port; ``None`` takes ``STREAMLIT_SERVER_PORT`` or 8501 (see :func:`resolve_port`).
        runs_dir: folder the page searches for run directories.
        address: address to bind.
    """
    port = resolve_port(port)
    command = streamlit_command(port=port, runs_dir=runs_dir, address=address)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TIMM_OFFLINE="1", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    _logger.info("serving the demo at http://%s:%d (Ctrl-C stops it)", address, port)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if in_main_thread else None
    child = None
    try:
        child = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        return child.wait()
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _Stopped as stopped:
        return 128 + stopped.signum
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        if child is not None:
            _stop(child)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
