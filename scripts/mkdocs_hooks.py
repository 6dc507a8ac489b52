"""MkDocs hook (mkdocs.yml: ``hooks``): links from a docs page to files outside ``docs/`` (reports,
configs, examples) point into the repository (``repo_url``), so that the site has no dead link and
``mkdocs build --strict`` checks every link that stays inside the site."""

from __future__ import annotations

import posixpath
import re

LINK = re.compile(r"(!?)(\[[^\]]*\])\(([^)\s]+)\)")  # ![alt](target) or [text](target)


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs passes all four
    repo = config["repo_url"].rstrip("/")
    page_dir = posixpath.dirname(page.file.src_uri)

    def relink(match: re.Match[str]) -> str:
        bang, label, target = match.groups()
        if target.startswith(("http:", "https:", "mailto:", "#")):
            return match.group(0)
        path = posixpath.normpath(posixpath.join("docs", page_dir, target.split("#")[0]))
        if not path.startswith("../") and not path.startswith("docs/"):
            anchor = f"#{target.split('#', 1)[1]}" if "#" in target else ""
            kind = "raw" if bang else ("tree" if target.endswith("/") else "blob")
            return f"{bang}{label}({repo}/{kind}/main/{path}{anchor})"
        return match.group(0)

    return LINK.sub(relink, markdown)
