"""``regiontrt report --html`` in a real headless Chromium: no console error, every image drawn."""

from __future__ import annotations

import io
import shutil
import tempfile

import numpy as np
import pytest
from _engines import build_engines

from regiontrt.cli import main

pytest.importorskip("matplotlib", reason="needs matplotlib (pip install 'regiontrt[plot]')")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="needs selenium (pip install 'regiontrt[test]')")
Image = pytest.importorskip("PIL.Image", reason="needs pillow (pip install 'regiontrt[test]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,2400")


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="regiontrt-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_page_renders_in_chromium(tmp_path, browser, capsys):
    build_engines(tmp_path / "engines")
    page = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "engines"), "--html", str(page), "--bench", "5"]) == 0
    browser.get(page.as_uri())
    assert browser.title == "regiontrt report: engines"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    images = browser.execute_script(
        "return Array.from(document.images).map(i => "
        "[i.alt, i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])")
    # accuracy, latency and the STRICT region's mixed-precision sensitivity
    assert [i[0] for i in images] == ["accuracy loss against budget per region",
                                      "latency distributions", "sensitivity STRICT"]
    for alt, complete, width, height, src in images:
        assert complete and width > 100 and height > 100, alt
        assert src == "data:image/png;base64,"  # embedded: the page needs nothing else
    headings = browser.execute_script(
        "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    assert headings == ["Region × target", "Compliance", "Accuracy against budget", "Latency",
                        "Mixed-precision sensitivity", "Provenance"]
    matrix = browser.execute_script(
        "return Array.from(document.querySelector('table').rows).map("
        "r => [r.cells[0].innerText, r.cells[1].innerText])")
    assert matrix[0] == ["region", "cpu"]
    assert {r: cell.split()[:2] for r, cell in matrix[1:]} == {
        "NA": ["int8", "compliant"], "EU": ["fp16", "compliant"], "STRICT": ["fp32", "compliant"]}
    # a non-blank screenshot: the plots' pixels are really drawn
    first = browser.find_elements("tag name", "img")[0]
    shot = Image.open(io.BytesIO(first.screenshot_as_png)).convert("L")
    lo, hi = shot.getextrema()
    assert hi - lo > 100 and len(np.unique(np.asarray(shot))) > 16
    whole = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")
    assert whole.getextrema()[1] - whole.getextrema()[0] > 100
    # the console check does see errors: a probe logged by the page is reported
    browser.execute_script("console.error('probe')")
    assert any("probe" in e["message"] for e in browser.get_log("browser"))
