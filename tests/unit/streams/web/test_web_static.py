"""streams/web/static: the page needs nothing from elsewhere and asks only for what the worker serves."""

from __future__ import annotations

import re
import tomllib
from importlib.resources import files
from pathlib import Path

from streams.web.routes import API_PATHS, STATIC_FILES

STATIC = files("streams.web") / "static"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an XML name the browser never fetches


def _text(name: str) -> str:
    return STATIC.joinpath(name).read_text()


def test_every_served_file_is_in_the_package() -> None:
    for name, _ in STATIC_FILES.values():
        assert STATIC.joinpath(name).is_file(), name
    pyproject = tomllib.loads((Path(__file__).parents[4] / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["streams.web"]


def test_no_external_urls() -> None:
    for name, _ in STATIC_FILES.values():
        text = _text(name).replace(SVG_NAMESPACE, "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "@import" not in text and "cdn" not in text.lower(), name


def test_page_loads_only_served_assets() -> None:
    html = _text("index.html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all("/" + a in STATIC_FILES for a in assets), assets


def test_script_calls_only_the_documented_api() -> None:
    called = set(re.findall(r'getJSON\("(api/[a-z-]+)"', _text("app.js")))
    assert called == {p.lstrip("/") for p in API_PATHS}


def test_script_builds_text_not_markup() -> None:
    """Values from the API go in with textContent, never as HTML."""
    script = _text("app.js")
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script


def test_every_element_the_script_looks_up_exists() -> None:
    html, script = _text("index.html"), _text("app.js")
    ids = set(re.findall(r'getElementById\("([a-z-]+)"\)', script))
    ids |= set(re.findall(r'fillSelect\("([a-z]+)"', script))
    assert ids and all(f'id="{i}"' in html for i in ids), ids
    for key in re.findall(r'set\("([a-z_]+)"', script):
        assert f'data-health="{key}"' in html, key


def test_the_stage_name_column_fits_the_configured_names() -> None:
    """Stage names are configured (up to 64 characters, not only event types): the name
    column's width comes from each funnel's stage names, and a name too long is cut visibly
    (ellipsis, the whole name in its title), never drawn over the numbers."""
    css, script = _text("style.css"), _text("app.js")
    stage_rule = re.search(r"\.stage \{[^}]*grid-template-columns:\s*([^;]+);", css)
    assert stage_rule and stage_rule.group(1).split()[0] == "var(--name-w)"
    assert re.search(r"\.stage \.name \{[^}]*text-overflow: ellipsis", css)
    assert re.search(r'setProperty\("--name-w",[^;]*longest', script)
    assert re.search(r"const longest = Math\.max\(\.\.\.f\.stages\.map", script)
    assert 'class: "name", text: r.stage, title: r.stage' in script
