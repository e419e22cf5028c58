"""The HTML report: self-contained, complete, well-formed; written without Graphviz too."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import gradviz
from gradviz.core.findings import REGISTRY, explanation
from gradviz.output.html import build_html
from gradviz.output.diagram import RenderOptions

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "wbr", "source", "area", "base", "embed", "param", "track"}


class _Checker(HTMLParser):
    """Checks that every element is closed in order (SVG's self-closing elements allowed)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def stop_report() -> gradviz.Report:
    return gradviz.analyze(SAMPLES / "stop_gradient_head.keras")


@pytest.mark.dot
def test_self_contained_and_well_formed(stop_report: gradviz.Report) -> None:
    page = build_html(stop_report, RenderOptions(command="gradviz inspect m.keras -o r.html"))
    assert "<svg" in page and "<?xml" not in page and "<!DOCTYPE svg" not in page
    for forbidden in ("http://", "https://", "<script src", "<link", "@import", "url(", "<iframe", "<img"):
        assert forbidden not in page, forbidden
    checker = _Checker()
    checker.feed(page)
    assert not checker.errors and checker.stack == []


@pytest.mark.dot
def test_contents(stop_report: gradviz.Report) -> None:
    page = html.unescape(build_html(stop_report, RenderOptions(command="gradviz inspect m.keras -o r.html")))
    assert "<code>gradviz inspect m.keras -o r.html</code>" in page
    for loss in stop_report.losses:  # loss table with each loss's colour
        assert f'style="background:{loss.color}"></span>{loss.name}' in page
    for info in stop_report.layers:
        assert f"<td>{info.name}</td>" in page
    assert 'class="sortable"' in page and "<script>" in page
    assert "blocked-path" in page and explanation("blocked-path")[1] in page  # what to try
    assert "Layers with weights: 4 exclusive." in page


def test_python_api_without_command(stop_report: gradviz.Report, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot: the report still comes, with a note
    page = build_html(stop_report)
    assert 'class="command"' not in page and "<svg" not in page
    assert re.search(r'<p class="note">No diagram: Graphviz&#x27;s dot program is not installed', page)
    assert "gradient blocked at stop_gradient" in page


def test_every_finding_kind_has_an_explanation() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Findings", 1)[1].split("##", 1)[0]
    kinds = re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.M)
    assert kinds and set(kinds) <= set(REGISTRY)
