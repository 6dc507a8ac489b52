"""The documentation's generated pages, so they cannot drift from their source: the plugin reference
(``docs/norms.md``) from the registry, the README's recommendation table from the default study's report,
its population-against-separate summary from that comparison's file, and the site's home page
(``docs/index.md``) from the README.
``python -m normbench.docs [--check]`` writes them (or, with ``--check``, exits 1 when a committed page
differs)."""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

from normbench.norms import iter_specs

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "norms.md"
HOME = ROOT / "docs" / "index.md"
STUDY_PAGE = ROOT / "docs" / "study.md"
README = ROOT / "README.md"
STUDY_REPORT = ROOT / "reports" / "small_batch" / "report.md"
TABLE_START = (
    "<!-- recommendation table: copied from reports/small_batch/report.md by python -m normbench.docs -->"
)
TABLE_END = "<!-- end of the recommendation table -->"
AGREEMENT = ROOT / "reports" / "small_batch_separate" / "agreement.md"
RETRAIN = ROOT / "reports" / "small_batch_retrain" / "agreement.md"
RETRAIN_SEQUENCE = ROOT / "reports" / "sequence_gan_retrain" / "agreement.md"
# (agreement written by scripts/compare_runs.py, the page that carries its summary, the block's name)
COMPARISONS = (
    (AGREEMENT, README, "agreement"),
    (RETRAIN, STUDY_PAGE, "retrain"),
    (RETRAIN_SEQUENCE, STUDY_PAGE, "recurrent retrain"),
)


def comparison_markers(agreement: Path, name: str) -> tuple[str, str]:
    """The lines that open and close a page's copy of ``agreement``'s summary."""
    source = agreement.relative_to(ROOT).as_posix()
    return f"<!-- {name}: copied from {source} by python -m normbench.docs -->", f"<!-- end of the {name} -->"


SPEED_SOURCES = (ROOT / "reports" / "bench" / "norms.md", ROOT / "reports" / "bench" / "norms_cuda.json")


def committed_speeds() -> dict[str, str]:
    """Per plugin, its forward+backward time against ``torch.nn.BatchNorm2d`` on the same images, from
    the committed benchmarks: the CPU table (reports/bench/norms.md) and the GPU rows
    (reports/bench/norms_cuda.json, fp32), one phrase each."""
    cpu_md, gpu_json = SPEED_SOURCES
    cpu: dict[str, str] = {}
    for line in cpu_md.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith("images") and cells[1] == "forward+backward":
            cpu[cells[2]] = f"{cells[6]} on CPU {cells[0].removeprefix('images ')}"
    gpu: dict[str, list[str]] = {}
    for row in json.loads(gpu_json.read_text())["rows"]:
        if row["precision"] == "fp32":
            shape = ", ".join(map(str, row["shape"]))
            gpu.setdefault(row["norm"], []).append(f"{row['vs_bn2d']:.2f}x at ({shape})")
    return {
        name: "; ".join(
            [
                *([cpu[name]] if name in cpu else []),
                *([f"on an H200 {', '.join(gpu[name])}"] if name in gpu else []),
            ]
        )
        for name in sorted(set(cpu) | set(gpu))
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def norms_page() -> str:
    """Markdown: a summary table of every built-in plugin, then each one's docstring (formula, paper,
    arguments, shapes), options and speed in the committed benchmarks."""
    specs = [s for s in iter_specs() if s.source.startswith("normbench.")]
    speeds = committed_speeds()
    lines = [
        "# Norm plugins",
        "",
        "Generated from the registry by `python -m normbench.docs` (a test keeps it current); each plugin's",
        "speed comes from the committed benchmarks ([CPU](../reports/bench/norms.md),",
        "[H200](../reports/bench/norms_cuda.md)).",
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
        speed = speeds.get(s.name, "not in the committed benchmarks")
        lines += ["", f"## {s.name}", "", f"Options: {options}.", ""]
        lines += [f"Forward+backward time against `torch.nn.BatchNorm2d` on the same images: {speed}.", ""]
        lines += ["```text", doc, "```"]
    return "\n".join(lines) + "\n"


def home_page(readme: str) -> str:
    """The site's home page: the README with its relative links made relative to ``docs/``."""

    def relink(match: re.Match[str]) -> str:
        target = match.group(1)
        if target.startswith(("http:", "https:", "mailto:", "#")):
            return match.group(0)
        return f"]({target.removeprefix('docs/') if target.startswith('docs/') else '../' + target})"

    return re.sub(r"\]\(([^)\s]+)\)", relink, readme)


def recommendation_table(report: str) -> str:
    """The report's practitioner table (its legend and one table per task), as the report writes it
    under its first figure."""
    section = report.split("\n## Which norm at my batch size\n", 1)[1].split("\n## ", 1)[0]
    start = section.index("\ntest_error (%)")
    return section[start:].strip().replace("`curve_", "`reports/small_batch/curve_")


def agreement_summary(agreement: str) -> str:
    """How a study's population runs agree with the same runs trained one by one: the summary lines of
    ``agreement`` (written by ``scripts/compare_runs.py``), its count of agreeing verdicts and the
    claims whose verdicts differ."""
    head, _, claims = agreement.partition("\n## ")
    bullets = [line for line in head.splitlines() if line.startswith("- ")]
    verdicts = re.search(r"\d+ of \d+ verdicts agree\.", claims)
    differing = [f"  {line}" for line in claims.splitlines() if line.startswith("- ")]
    return "\n".join([*bullets, *([f"- {verdicts.group(0)}", *differing] if verdicts else [])])


def _replace_block(text: str, start: str, end: str, content: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}\n{end}{tail}"


def readme_with_table(readme: str, report: str) -> str:
    """``readme`` with the block between its table markers replaced by :func:`recommendation_table`."""
    return _replace_block(readme, TABLE_START, TABLE_END, recommendation_table(report))


def pages() -> dict[Path, str]:
    """Every generated page and its text."""
    text = {
        README: readme_with_table(README.read_text(), STUDY_REPORT.read_text()),
        STUDY_PAGE: STUDY_PAGE.read_text(),
    }
    for agreement, page, name in COMPARISONS:
        text[page] = _replace_block(
            text[page], *comparison_markers(agreement, name), agreement_summary(agreement.read_text())
        )
    return {**text, PAGE: norms_page(), HOME: home_page(text[README])}


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
