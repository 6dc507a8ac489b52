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
