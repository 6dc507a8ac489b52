"""The documentation's plugin reference (``docs/norms.md``), generated from the registry so it cannot
drift from the code: ``python -m normbench.docs [--check]`` writes it (or, with ``--check``, exits 1
when the committed page differs)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from normbench.norms import iter_specs

PAGE = Path(__file__).resolve().parents[1] / "docs" / "norms.md"


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


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    text = norms_page()
    if args == ["--check"]:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python -m normbench.docs", file=sys.stderr)
            raise SystemExit(1)
        return
    PAGE.write_text(text)
    print(PAGE)


if __name__ == "__main__":
    main()
