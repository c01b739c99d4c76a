"""``medvit demo``: which port it serves on, and stopping it stops its Streamlit child too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medvit.demo.serve import DEFAULT_PORT, PORT_ENV, resolve_port

REPO = Path(__file__).resolve().parent.parent


def test_port_from_flag_then_streamlit_env_then_default(monkeypatch):
    monkeypatch.delenv(PORT_ENV, raising=False)
    assert resolve_port(None) == DEFAULT_PORT == 8501
    monkeypatch.setenv(PORT_ENV, "8612")
    assert resolve_port(None) == 8612
    assert resolve_port(8700) == 8700  # --port wins over the environment
    monkeypatch.setenv(PORT_ENV, "http")
    with pytest.raises(ValueError, match="STREAMLIT_SERVER_PORT='http': expected a port number in 1..65535"):
        resolve_port(None)
    with pytest.raises(ValueError, match="--port 70000: expected a port number"):
        resolve_port(70000)


def _stand_in_child(pid_file: Path) -> str:
    """Python code for a Streamlit stand-in: writes its pid to ``pid_file``, then sleeps for 2 minutes."""
    return f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_serve_demo_stops_its_child_on_a_signal(stop, monkeypatch, tmp_path):
    """In process, with a stand-in child: the signal handling of serve_demo, in a second or two."""
    import threading

    from medvit.demo import serve

    pid_file = tmp_path / "child.pid"
    child = _stand_in_child(pid_file)
    monkeypatch.setattr(serve, "streamlit_command", lambda **kwargs: [sys.executable, "-c", child])

    def send_when_started() -> None:
        deadline = time.monotonic() + 30
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), stop)

    # a background job (`nohup pytest &`) inherits SIGINT ignored; Ctrl-C in a terminal has Python's handler
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sender = threading.Thread(target=send_when_started)
        sender.start()
        assert serve.serve_demo(port=8599) == 128 + stop
        sender.join()
    finally:
        signal.signal(signal.SIGINT, previous_int)
    assert not _alive(int(pid_file.read_text()))
    assert signal.getsignal(signal.SIGTERM) is not serve._raise_stopped  # the handler is put back


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's prctl")
def test_sigkill_of_medvit_demo_stops_its_child(tmp_path):
    """A SIGKILLed ``medvit demo`` runs no clean-up; the kernel's parent-death signal stops the child."""
    pid_file = tmp_path / "child.pid"
    child = _stand_in_child(pid_file)
    parent_code = (
        "import sys\nfrom medvit.demo import serve\n"
        f"serve.streamlit_command = lambda **kwargs: [sys.executable, '-c', {child!r}]\n"
        "sys.exit(serve.serve_demo(port=8599))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text()):
            assert parent.poll() is None and time.monotonic() < deadline, "the stand-in child did not start"
            time.sleep(0.05)
        parent.kill()
        parent.wait(timeout=10)
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if pid_file.is_file() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def _alive(pid: int) -> bool:
    """Running (a zombie left for a non-reaping init counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow  # 10-40 s on 2 busy cores: medvit demo imports the page's library, then Streamlit starts
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc (Linux)")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_stopping_medvit_demo_stops_streamlit(stop, tmp_path):
    port = _free_port()
    env = dict(os.environ, **{PORT_ENV: str(port)}, PYTHONPATH=str(REPO))  # the port from Streamlit's variable
    command = [sys.executable, "-m", "medvit.cli", "demo", "--address", "127.0.0.1", "--runs", str(tmp_path / "runs")]
    parent = subprocess.Popen(  # SIGINT back to default first: a background job inherits it ignored
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while not _answers(port):
            assert parent.poll() is None, f"medvit demo exited early: {parent.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "medvit demo did not answer within 90 s"
            time.sleep(0.2)
        children = _children(parent.pid)
        assert len(children) == 1 and _alive(children[0])
        parent.send_signal(stop)  # to medvit demo only, not to its process group
        assert parent.wait(timeout=30) == 128 + stop
        deadline = time.monotonic() + 5
        while _alive(children[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(children[0]), "the Streamlit child outlived medvit demo"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        for pid in [parent.pid, *children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)
