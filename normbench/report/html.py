"""A report as one HTML file to open or send: report.md rendered by Python-Markdown (tables, fenced
code) with every figure embedded as a data URI, so the file needs nothing beside it."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def _embedded(match: re.Match[str], folder: Path) -> str:
    src = match.group(1)
    path = folder / src
    if not path.is_file():  # an absolute URL or a missing file: left as it is
        return match.group(0)
    kind = {".png": "image/png", ".svg": "image/svg+xml"}.get(path.suffix.lower(), "application/octet-stream")
    return f'src="data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"'


def render_html(report_md: Path, title: str = "") -> str:
    """The HTML of ``report_md`` with the images it links (relative to it) embedded."""
    text = report_md.read_text()
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    body = re.sub(r'src="([^"]+)"', lambda m: _embedded(m, report_md.parent), body)
    heading = title or next((line[2:] for line in text.splitlines() if line.startswith("# ")), "report")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


__all__ = ["render_html"]
