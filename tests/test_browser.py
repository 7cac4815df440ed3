"""The web app in a real browser: ``medground serve`` in a subprocess, driven by Debian's headless Chromium through
Selenium. Chromium may reach nothing but the loopback server (host resolver rules), and every request it makes is
checked to go there. Screenshots land in test-output/browser/ (or $MEDGROUND_TEST_OUTPUT/browser/)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from medground import Grounder
from medground.datasets.phantoms import generate_phantom
from medground.doctor import browser_tool

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = browser_tool("MEDGROUND_CHROMIUM")
CHROMEDRIVER = browser_tool("MEDGROUND_CHROMEDRIVER")
SCREENSHOTS = Path(os.environ.get("MEDGROUND_TEST_OUTPUT", ROOT / "test-output")) / "browser"
UPLOAD_LIMIT_MB = 1
GROUNDING_TIMEOUT_S = 300
"""The first query inverts the image; on a loaded 2-core machine that can take minutes."""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    """``medground serve`` on a free loopback port, with the toy model and a 1 MB upload limit."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            pytest.fail(f"{path} is missing: the browser tests need Debian's chromium and chromium-driver "
                        "(make test installs them: apt-get install -y chromium chromium-driver)")
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    # The same number of torch threads as this process, so the page's numbers are computed exactly like the API's.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "medground.cli", "serve", "--port", str(port),
                                    "--max-upload-mb", str(UPLOAD_LIMIT_MB)], stdout=sink, stderr=subprocess.STDOUT,
                                   env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            pytest.fail(f"medground serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"medground serve did not answer on {url} within 300 s:\n{log.read_text()}")
        time.sleep(1)
    workdir = Path(re.search(r"in (\S+) \(deleted when the server stops\)", log.read_text()).group(1))
    assert workdir.is_dir()
    yield {"url": url, "port": port}
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert not workdir.exists(), "the server's temporary folder with the uploads outlived it"


@pytest.fixture()
def browser(tmp_path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1300", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def phantom_png(tmp_path_factory) -> Path:
    """Seed 19: an opacity in the right mid zone and mild cardiomegaly."""
    path = tmp_path_factory.mktemp("uploads") / "phantom.png"
    Image.fromarray((generate_phantom(19).image * 255).round().astype(np.uint8)).save(path)
    return path


def test_browser_phrase_boxes_equal_python_api(server, browser, phantom_png, toy_model):
    phrase = "opacity in the right mid zone"
    _open(browser, server)
    _upload(browser, phantom_png)
    _wait(browser, lambda: "64x64 pixels" in _status(browser))
    browser.find_element(By.CSS_SELECTOR, "#text textarea").send_keys(phrase)
    browser.find_element(By.CSS_SELECTOR, "#ground").click()
    # the progress indicator: the inversion's own steps (tqdm), or Gradio's timer before the first step
    _wait(browser, lambda: re.search(r"inversion|processing|queue", _text(browser, "#overlay")), 60)
    _wait(browser, lambda: _rows(browser), GROUNDING_TIMEOUT_S)
    _screenshot(browser, "phrase")
    expected = Grounder(toy_model, "paper").ground(phantom_png, phrase)[0]
    assert expected.boxes
    assert _rows(browser) == [["1", phrase, "typed", str(rank), str(b.x), str(b.y), str(b.w), str(b.h),
                               f"{b.score:.3f}"] for rank, b in enumerate(expected.boxes, start=1)]
    assert "Inverted the image" in _status(browser)
    overlay = browser.find_element(By.CSS_SELECTOR, "#overlay img")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 300

    first = _rows(browser)
    browser.find_element(By.CSS_SELECTOR, "#ground").click()  # the same image again: the cached trajectory
    _wait(browser, lambda: "Reused the cached inversion" in _status(browser), GROUNDING_TIMEOUT_S)
    assert _rows(browser) == first
    hosts = _request_hosts(browser)
    assert hosts == {f"127.0.0.1:{server['port']}"}, f"the page reached beyond the server: {hosts}"


def test_browser_corrupt_upload_shows_error(server, browser, tmp_path):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 40)
    _open(browser, server)
    _upload(browser, corrupt)
    message = "Error: cannot read broken.png as an image (PNG, JPEG or DICOM expected)"
    _wait(browser, lambda: message in _status(browser))
    _screenshot(browser, "corrupt-upload")
    assert browser.find_element(By.CSS_SELECTOR, "#status .error").get_attribute("role") == "alert"
    assert not _rows(browser) and not browser.find_elements(By.CSS_SELECTOR, "#overlay img")
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text


def test_browser_report_leaves_negated_finding_out(server, browser, phantom_png):
    _open(browser, server)
    _upload(browser, phantom_png)
    _wait(browser, lambda: "64x64 pixels" in _status(browser))
    browser.find_element(By.XPATH, "//*[@id='mode']//label[contains(., 'Report')]").click()
    _wait(browser, lambda: "Report" in _text(browser, "#text"))
    report = "FINDINGS: Opacity in the right mid zone. No pleural effusion.\nIMPRESSION: Mild cardiomegaly."
    browser.find_element(By.CSS_SELECTOR, "#text textarea").send_keys(report)
    browser.find_element(By.CSS_SELECTOR, "#ground").click()
    _wait(browser, lambda: _rows(browser), GROUNDING_TIMEOUT_S)
    _screenshot(browser, "report")
    found = {(row[1], row[2]) for row in _rows(browser)}
    assert found == {("Opacity in the right mid zone", "positive"), ("Mild cardiomegaly", "positive")}
    assert "effusion" not in _text(browser, "#boxes").lower()
    assert "not grounded: 'pleural effusion' (negated)" in _status(browser)
    downloads = _text(browser, "#downloads")
    assert ".json" in downloads and ".npy" in downloads


def test_browser_huge_upload_is_refused(server, browser, tmp_path):
    big = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8)
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > UPLOAD_LIMIT_MB * 1024 * 1024
    _open(browser, server)
    _upload(browser, big)
    _wait(browser, lambda: "exceed the maximum allowed size of 1.0 Mb" in _text(browser, "body"))
    _screenshot(browser, "huge-upload")
    assert "64x64" not in _status(browser) and not browser.find_elements(By.CSS_SELECTOR, "#overlay img")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _open(browser: WebDriver, server: dict) -> None:
    browser.get(server["url"])
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#ground"))


def _upload(browser: WebDriver, path: Path) -> None:
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def _wait(browser: WebDriver, condition: Callable[[], object], timeout: float = 60) -> object:
    def met(_driver: WebDriver) -> object:
        try:
            return condition()
        except WebDriverException:  # an element re-rendered while it was read
            return False

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(met)


def _text(browser: WebDriver, selector: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, selector).text


def _status(browser: WebDriver) -> str:
    return _text(browser, "#status")


def _rows(browser: WebDriver) -> list[list[str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#boxes table tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def _request_hosts(browser: WebDriver) -> set[str]:
    """host:port of every http(s) and websocket request the page made (chrome:// and data: URLs are the browser's)."""
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            url = urlparse(message["params"].get("request", message["params"]).get("url", ""))
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.netloc)
    return hosts


def _screenshot(browser: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
