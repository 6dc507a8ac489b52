"""The documentation stays true: the plugin reference is the registry's, and every relative link of the
README and the docs pages points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from normbench.docs import HOME, PAGE, home_page, main, norms_page

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_plugin_reference_is_generated_from_the_registry():
    assert PAGE.read_text() == norms_page()  # else: python -m normbench.docs
    main(["--check"])
    for name in ("batchnorm", "groupnorm", "switchnorm"):
        assert f"\n## {name}\n" in PAGE.read_text()


def test_the_home_page_is_the_readme_with_links_from_docs():
    assert HOME.read_text() == home_page((ROOT / "README.md").read_text())  # else: python -m normbench.docs
    assert home_page("[a](docs/runs.md) [b](reports/x.md#y) [c](https://e.org) [d](#top)") == (
        "[a](runs.md) [b](../reports/x.md#y) [c](https://e.org) [d](#top)"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file(page):
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    relative = [t.split("#")[0] for t in targets if not t.startswith(("http", "mailto:", "#"))]
    missing = [t for t in relative if t and not (page.parent / t).exists()]
    assert not missing, f"{page.name}: links to missing files {missing}"


def test_the_site_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(p.name in nav for p in PAGES if p.parent.name == "docs")


def test_site_links_outside_docs_point_into_the_repository():
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = SimpleNamespace(file=SimpleNamespace(src_uri="study.md"))
    text = (
        "[a](../reports/x.md#h) ![f](../reports/f.svg) [b](runs.md#y) [c](https://e.org) [d](../examples/p/)"
    )
    assert hooks.on_page_markdown(text, page, {"repo_url": "https://github.com/o/r/"}, None) == (
        "[a](https://github.com/o/r/blob/main/reports/x.md#h) ![f](https://github.com/o/r/raw/main/reports/f.svg) "
        "[b](runs.md#y) [c](https://e.org) [d](https://github.com/o/r/tree/main/examples/p)"
    )
