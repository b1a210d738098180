"""report.html in a real browser: headless Chromium opens the file with page scripts off,
requests nothing but the file and its data: images, decodes every image, and draws a page
that is not blank. Skipped, saying so, where no Chromium is installed (.ci/run installs it)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from chromekit import Chromium, find_browser
from PIL import Image
from reportkit import SECTIONS

pytestmark = pytest.mark.slow

PROBE = """JSON.stringify({
  images: document.images.length,
  decoded: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length,
  height: document.documentElement.scrollHeight,
  sections: Array.from(document.querySelectorAll("section")).map(s => s.id),
  scripts: document.scripts.length,
  text: document.body.innerText.length,
})"""


def test_chromium_renders_the_report_offline_without_scripts(request):
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium browser found (Debian package chromium; .ci/run installs it)")
    page = request.getfixturevalue("trained_run")[0] / "report.html"  # trained only with a browser
    with Chromium(browser) as chromium:
        tab = chromium.open(page)
        seen = json.loads(chromium.evaluate(tab, PROBE))
        shot = Image.open(io.BytesIO(chromium.screenshot(tab, min(seen["height"], 8000))))
        urls = chromium.requested_urls()
    assert seen["images"] > 10 and seen["decoded"] == seen["images"], seen
    assert seen["sections"] == list(SECTIONS) and seen["scripts"] == 0 and seen["text"] > 2000, seen
    assert urls[0] == page.resolve().as_uri() and all(u.startswith(("file:", "data:")) for u in urls), [
        u[:60] for u in urls if not u.startswith("data:")
    ]
    pixels = np.asarray(shot.convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 1000 and pixels.std() > 20, pixels.std()  # text, tables and images drawn
    rows = pixels.std(axis=1) > 5  # rows of the page with something on them
    assert rows.mean() > 0.3, rows.mean()
