"""The documentation's generated pages, so they cannot drift from their source: the plugin reference
(``docs/norms.md``) from the registry and the site's home page (``docs/index.md``) from the README.
``python -m normbench.docs [--check]`` writes them (or, with ``--check``, exits 1 when a committed page
differs)."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from normbench.norms import iter_specs

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "norms.md"
HOME = ROOT / "docs" / "index.md"
README = ROOT / "README.md"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def norms_page() -> str:
    """Markdown: a summary table of every built-in plugin, then each one's docstring (formula, paper,
    arguments, shapes) and options."""
    specs = [s for s in iter_specs() if s.source.startswith("normbench.")]
    lines = [
        "# Norm plugins",
        "",
        "Generated from the registry by `python -m normbench.docs` (a test keeps it current).",
        "",
        "| name | aliases | batch dependent | running stats | population | paper |",
        "|---|---|---|---|---|---|",
    ]
    for s in specs:
        aliases = ", ".join(f"`{a}`" for a in s.aliases)
        population = s.population if s.population else "no"
        lines.append(
            f"| [`{s.name}`](#{s.name}) | {aliases} | {_yes(s.batch_dependent)} | {_yes(s.running_stats)} "
            f"| {population} | {s.paper} |"
        )
    for s in specs:
        doc = inspect.cleandoc(inspect.getdoc(s.factory) or s.summary)
        options = ", ".join(f"`{k}={v!r}`" for k, v in s.options.items()) or "none"
        lines += ["", f"## {s.name}", "", f"Options: {options}.", "", "```text", doc, "```"]
    return "\n".join(lines) + "\n"


def home_page(readme: str) -> str:
    """The site's home page: the README with its relative links made relative to ``docs/``."""

    def relink(match: re.Match[str]) -> str:
        target = match.group(1)
        if target.startswith(("http:", "https:", "mailto:", "#")):
            return match.group(0)
        return f"]({target.removeprefix('docs/') if target.startswith('docs/') else '../' + target})"

    return re.sub(r"\]\(([^)\s]+)\)", relink, readme)


def pages() -> dict[Path, str]:
    """Every generated page and its text."""
    return {PAGE: norms_page(), HOME: home_page(README.read_text())}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    for path, text in pages().items():
        if args == ["--check"]:
            if not path.exists() or path.read_text() != text:
                print(f"{path} is out of date: run python -m normbench.docs", file=sys.stderr)
                raise SystemExit(1)
            continue
        path.write_text(text)
        print(path)


if __name__ == "__main__":
    main()
