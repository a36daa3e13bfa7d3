"""The report's sample browser in a real browser: headless Chromium loads the self-contained page, a cell is
clicked (through the page's own ``#open=`` handler, which clicks the cell's button), and its samples appear."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse

import pytest

from conftest import run_flash_and_window
from lceval.store import read_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (CI installs Debian's `chromium`)")


def dom_after_load(page, fragment: str = "") -> str:
    url = page.as_uri() + fragment
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-500:]
    return res.stdout


def test_clicking_a_cell_opens_its_samples(quickstart_rotary, write_config, tmp_path):
    page = run_flash_and_window(quickstart_rotary, write_config, tmp_path / "r") / "report" / "report.html"
    text = page.read_text()
    assert not re.search(r"""(src|href)=['"]?https?:""", text)  # self-contained: no network request
    assert page.stat().st_size < 10 * 2**20
    closed = dom_after_load(page)
    assert '<div id="lceval-panel"></div>' in closed and closed.count('<button class="cell"') == 2 * 2 * 2
    key = "niah | m/sliding_window(w=16) | L=256 | depth=0"
    opened = dom_after_load(page, "#open=" + urllib.parse.quote(key))
    start = opened.index('id="lceval-panel"')
    panel = opened[start:opened.index('<script type="application/json"', start)]
    want = sorted(r["sample_id"] for r in read_rows(tmp_path / "r")
                  if r["pairing"] == "m/sliding_window(w=16)" and r["context_length"] == 256
                  and r["meta"]["depth"] == 0.0)
    assert sorted(re.findall(r'class="sample" data-id="([^"]+)"', panel)) == want
    diagnoses = re.findall(r'class="diagnosis">([^<]*)<', panel)
    assert diagnoses == ["out_of_reach"] * 3  # a needle 256 tokens back cannot be seen through 16
    assert panel.count("<svg") == 3 and "<mark>" in panel and "The special magic number" in panel
