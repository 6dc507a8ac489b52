"""``normbench-report SWEEP_DIR [SWEEP_DIR ...] --out DIR``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from normbench.argtypes import one_line, positive_int, text_file, writable_folder
from normbench.report.build import build_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="normbench-report", description="Build tables, figures and report.md from sweep folders."
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        help="sweep folders (searched recursively for result.json) or a study's records.jsonl",
    )
    parser.add_argument(
        "--out",
        type=writable_folder,
        required=True,
        help="output folder for runs.csv, summary.csv, figures/, report.md",
    )
    parser.add_argument(
        "--reference-batch",
        type=positive_int("a batch size, an integer >= 1"),
        help="batch size the change is measured against (default: 32 where the runs have it, else their largest)",
    )
    parser.add_argument("--title", type=one_line, default="normbench report")
    parser.add_argument(
        "--notes", type=text_file, help="a markdown file appended to the report under 'Notes'"
    )
    parser.add_argument(
        "--select",
        nargs="+",
        default=[],
        metavar="KEY",
        help="config keys (e.g. optim.lr) whose value is chosen per cell on the validation split",
    )
    parser.add_argument(
        "--study",
        type=Path,
        help="a study description (e.g. conf/study/small_batch.yaml): its claims, selection and title",
    )
    parser.add_argument(
        "--html", action="store_true", help="also report.html: the report as one file, figures embedded"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        path = build_report(
            args.dirs,
            args.out,
            args.reference_batch,
            args.title,
            args.notes or "",
            args.select,
            args.study,
            args.html,
        )
    except (OSError, ValueError) as exc:
        print(f"normbench-report: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(path)
