"""`dvc plots show` renders without network: the repository's HTML template carries vega inline (issue 22)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from tests.dvc_toy import make_repo, sh
from tests.test_annotate import _browser_or_skip, _chromium

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "configs" / "plots" / "offline.html"


def test_the_repository_points_dvc_plots_at_the_offline_template():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    named = (ROOT / ".dvc" / config["plots"]["html_template"]).resolve()
    assert named == TEMPLATE.resolve()
    page = TEMPLATE.read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC's CDN script tags go in {scripts}
    assert not re.search(r"<script[^>]*\bsrc=", page)  # every script inline


def test_dvc_plots_show_renders_offline_in_chromium(tmp_path):
    repo = make_repo(tmp_path / "repo")
    sh(repo, "dvc", "config", "plots.html_template", str(TEMPLATE))
    sh(repo, "dvc", "repro", "-q")
    sh(repo, "dvc", "plots", "show", "-o", "plots")
    html = (repo / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and 'src="http' not in html
    sync_api = _browser_or_skip()
    requests = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=_chromium(), args=["--no-sandbox", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.route("http*://**", lambda route: (requests.append(route.request.url), route.abort()))
        page.goto((repo / "plots" / "index.html").as_uri())
        sync_api.expect(page.locator("svg.marks, canvas.marks").first).to_be_visible(timeout=20_000)
        page.screenshot(path=str(tmp_path / "plots.png"))
        browser.close()
    assert requests == []  # nothing was fetched from the network
