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


def _matrix_rows(browser) -> list[list[str]]:
    return browser.execute_script(
        "return Array.from(document.querySelector('table').rows).map("
        "r => Array.from(r.cells).map(c => c.innerText.split('\\n')[0]))")


def test_two_engines_of_one_cell_and_a_bare_title(tmp_path, browser, monkeypatch, capsys):
    """Two EU engines (two metrics) get a row and a chart each; `report .` names its folder."""
    from regiontrt import demo

    folder = tmp_path / "twins"
    folder.mkdir()
    np.savez(tmp_path / "val.npz", input=demo.region_data("EU").validation[:64])
    for metric in ("relative_l2", "max_abs"):
        assert main(["build", str(demo.model_path()), "--region", "EU", "--validation",
                     str(tmp_path / "val.npz"), "--metric", metric, "--shape",
                     "input:1x1x8x8,32x1x8x8,64x1x8x8", "-o", str(folder / f"{metric}.engine"),
                     "-q"]) == 0
    monkeypatch.chdir(folder)
    assert main(["report", ".", "--html", str(tmp_path / "r.html"), "--bench", "3"]) == 0
    browser.get((tmp_path / "r.html").as_uri())
    assert browser.title == "regiontrt report: twins"  # never "regiontrt report:" alone
    rows = _matrix_rows(browser)[1:]
    assert sorted(r[0] for r in rows) == ["EU (max_abs.engine)", "EU (relative_l2.engine)"]
    latency = browser.execute_script(
        "return Array.from(document.querySelectorAll('table')[3].rows).slice(1).map("
        "r => r.cells[0].innerText)")
    assert len(latency) == 2 and len(set(latency)) == 2
    # the accuracy chart has one panel per engine: two panels, two metrics on their y axes
    from regiontrt.report.page import _one_per_region
    from regiontrt.report.source import collect

    assert len(_one_per_region(collect(folder))) == 2
    capsys.readouterr()


def test_a_fleet_folder_of_two_versions_has_a_version_column(tmp_path, browser, capsys):
    from fleet_support import write_fleet

    for version in ("1.0.0", "1.1.0"):
        fleet = write_fleet(tmp_path / "src", regions=("CERTIFIED",), version=version)
        assert main(["fleet", "build", str(fleet), "--out", str(tmp_path / "dist"), "-q"]) == 0
    assert main(["report", str(tmp_path / "dist"), "--html", str(tmp_path / "r.html"),
                 "--bench", "2", "--no-plots"]) == 0
    browser.get((tmp_path / "r.html").as_uri())
    rows = _matrix_rows(browser)
    assert rows[0][:2] == ["version", "region"]
    assert sorted(r[:2] for r in rows[1:]) == [["1.0.0", "CERTIFIED"], ["1.1.0", "CERTIFIED"]]
    capsys.readouterr()
