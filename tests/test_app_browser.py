"""The demo page in a real browser: headless Debian Chromium driven by Playwright (no browser download).

Starts ``streamlit run medvit/demo/streamlit_app.py`` on a free local port (the same command line as
``medvit demo``), uploads a real image (a bundled BUSI sample), waits for the four stage overlays,
saves a screenshot under the test's tmp dir and checks that the page shows no exception box; a second test
uploads a two-frame DICOM written from that sample and checks the modality/size/frame caption, the
frame slider, and that none of its made-up patient data reaches the page.
Skips only when ``/usr/bin/chromium`` is absent (``.ci/run`` installs it: ``apt-get install chromium``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from medvit import demo
from medvit.assets import samples_dir
from medvit.run_dir import read_model_info

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLES = samples_dir()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason="/usr/bin/chromium is absent; install it with `apt-get install -y chromium`"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    command = demo.streamlit_command(port=port, runs_dir=tmp_path / "no_runs", address="127.0.0.1")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, timeout=60)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_upload_shows_four_stage_overlays(server, tmp_path):
    from playwright.sync_api import sync_playwright

    sample = next(s for s in demo.load_samples(SAMPLES) if s.dataset == "busi" and s.label == "malignant")
    screenshot = tmp_path / "demo_page.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.set_default_timeout(120_000)
            page.goto(server)
            page.get_by_text("Research use only — not for diagnosis.", exact=False).first.wait_for()
            page.get_by_text("Upload an image", exact=True).click()
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(sample.path))
            for index in range(1, 5):
                page.locator(f'img[alt="stage {index} overlay"]').wait_for(state="visible")
            page.get_by_text("Predicted class").first.wait_for()
            # the clinical reading: calibrated (or plainly uncalibrated) probabilities, said in one sentence;
            # a calibrated run adds the prediction set and the operating-point decision
            page.get_by_text("Probabilities are ", exact=False).first.wait_for()
            if "calibration" in read_model_info(demo.default_run(demo.discover_runs(None), "busi").path):
                page.get_by_text("Prediction set:", exact=False).first.wait_for()
                page.get_by_text("-sensitivity threshold for malignant", exact=False).first.wait_for()
            page.wait_for_timeout(500)  # let the last images finish painting
            page.screenshot(path=str(screenshot), full_page=True)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
            assert sum(c.startswith("Stage ") for c in captions) == 4, captions
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000


def test_dicom_upload_shows_modality_and_frame_and_no_patient_data(server, tmp_path):
    from playwright.sync_api import sync_playwright

    from dicom_samples import PATIENT, write_dicom
    from medvit.data.images import read_image

    gray = read_image(SAMPLES / "busi" / "malignant (126).png")[..., 0]
    height, width = gray.shape
    dicom = write_dicom(tmp_path / "cine.dcm", np.stack([gray, 255 - gray]))  # two frames, a made-up patient
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.set_default_timeout(120_000)
            page.goto(server)
            page.get_by_text("Research use only — not for diagnosis.", exact=False).first.wait_for()
            page.get_by_text("Upload an image", exact=True).click()
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(dicom))
            page.get_by_text(f"DICOM US, {width} x {height}, frame 1 of 2", exact=True).wait_for()
            assert page.locator('[data-testid="stSlider"]').filter(has_text="Frame").count() == 1
            for index in range(1, 5):
                page.locator(f'img[alt="stage {index} overlay"]').wait_for(state="visible")
            page.get_by_text("Predicted class").first.wait_for()
            page.wait_for_timeout(500)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            text = page.content()
            assert not any(value in text for value in PATIENT.values())
            page.screenshot(path=str(tmp_path / "dicom_page.png"), full_page=True)
        finally:
            browser.close()


def test_compare_mode_shows_every_models_stage_overlays(server, tmp_path):
    from playwright.sync_api import sync_playwright

    busi = [e for e in demo.discover_runs(None) if e.dataset == "busi"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.set_default_timeout(90_000)
            page.goto(server)
            page.get_by_text("Research use only — not for diagnosis.", exact=False).first.wait_for()
            page.get_by_text("Compare models", exact=True).click()
            page.get_by_text("Side by side", exact=False).first.wait_for()
            overlays = page.locator('img[alt$="stage 4 overlay"]')
            overlays.nth(len(busi) - 1).wait_for(state="visible")
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "compare_page.png"), full_page=True)
            assert overlays.count() == len(busi) >= 2
            assert page.locator('img[alt$="overlay"]').count() == 4 * len(busi)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
            assert sum("energy in lesion" in c for c in captions) == 4 * len(busi), captions
        finally:
            browser.close()
