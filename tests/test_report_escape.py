"""`vital report --md` tables stay one intact table with every value shown as text, whatever the params,
metric keys or model names hold (Markdown, HTML, pipes, backticks, line breaks): rendered to HTML by a real
Markdown renderer (markdown-it-py, GFM tables, inline HTML on as on GitHub) and read back with html.parser."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from vital.report.pr import _metrics_section, _params_section, md_code, md_text

HOSTILE = [
    "<script>alert(1)</script>",
    "`<img src=x onerror=alert(1)>`",
    "a\n| injected | row | here |\n|---|---|---|",
    "x | y",
    "**bold** [link](javascript:alert(1)) ![i](x.png)",
    "ends with a backslash \\",
    "a\\|b",
    "&lt;b&gt; already escaped",
    "``double`` and ~~strike~~ _em_",
    "",
    "plain_value",
]
# what GitHub renders in a comment from our own markup
OWN_TAGS = {"table", "thead", "tbody", "tr", "th", "td", "code", "br", "p"}


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.rows: list[list[str]] = []
        self.tables = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _render(markdown: str) -> _Cells:
    html = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough").render(markdown)
    cells = _Cells()
    cells.feed(html)
    return cells


def _check(lines: list[str], expected_rows: list[list[str]]) -> None:
    cells = _render("\n".join(lines) + "\n")
    assert cells.tables == 1
    assert set(cells.tags) <= OWN_TAGS, set(cells.tags) - OWN_TAGS
    assert cells.rows[1:] == expected_rows


def test_params_holding_markdown_and_html_render_as_one_intact_table():
    diff = {
        "params.yaml": {
            f"generate.k{i}{value}": {"old": value, "new": value + "!"} for i, value in enumerate(HOSTILE)
        }
    }
    keys = sorted(diff["params.yaml"])
    _check(
        _params_section(diff),
        [[k, diff["params.yaml"][k]["old"], diff["params.yaml"][k]["new"]] for k in keys],
    )


def test_metric_keys_and_string_values_are_escaped():
    diff = {"metrics/x<b>.json": {value or "k": {"old": value, "new": 1.5, "diff": 0.5} for value in HOSTILE}}
    rows = [
        ["metrics/x<b>.json", key, value, "1.500", "+0.500"]
        for key, value in sorted((value or "k", value) for value in HOSTILE)
    ]
    _check(_metrics_section(diff, limit=100), rows)


@pytest.mark.parametrize("fmt", [md_code, md_text])
@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\n\r\t")))
def test_any_text_is_one_literal_cell(fmt, value):
    cells = _render("| a | b |\n|---|---|\n| " + fmt(value).replace("|", "\\|") + " | end |\n")
    assert cells.tables == 1
    assert set(cells.tags) <= OWN_TAGS
    shown = cells.rows[1][0]
    normalised = value.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    assert shown.split() == normalised.split()  # the same words; only spacing at the ends may differ
    assert cells.rows[1][1] == "end"
