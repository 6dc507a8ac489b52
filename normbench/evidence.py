"""A study's committed evidence: every run record of its sweeps in one JSON-lines file.

``reports/<study>/records.jsonl`` holds one line per run, ``{"run": FOLDER, "record": RECORD}``, FOLDER
relative to the study's folder (``sweeps/curve_cnn/0010512cd88b96c6``) and RECORD that run's
``result.json``, lines sorted by folder so that a rerun writes the same bytes. The run folders themselves
stay out of version control:

- :func:`pack` gathers the ``result.json`` files under the study's folder into the file (a run trained
  again replaces its line; runs only the file holds are kept);
- :func:`unpack` writes each record back as its folder's ``result.json`` where that file is missing, so a
  sweep of the same configs resumes from them without training (the records are written byte for byte as
  the run wrote them);
- the report reads the file directly (``normbench-report reports/small_batch/records.jsonl``).

    python -m normbench.evidence pack reports/small_batch
    python -m normbench.evidence unpack reports/small_batch
    python -m normbench.evidence count reports/small_batch --since 1733380000  # runs finished since then
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from normbench.results import (
    RESULT_FILE,
    InvalidRecord,
    find_records,
    finite_or_none,
    load_run,
    record_problem,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
MAX_LINE_BYTES = 16 * 2**20  # one record, as results.MAX_RECORD_BYTES


def _run_problem(run: Any) -> str | None:
    """Why ``run`` is not a folder inside the study's folder (None if it is): a relative POSIX path
    without ``..``, so that unpacking never writes outside the study."""
    if not isinstance(run, str) or not run:
        return f"run {run!r} is not a folder name"
    path = PurePosixPath(run)
    if path.is_absolute() or ".." in path.parts or "\\" in run or str(path) != run:
        return f"run {run!r} is not a plain relative folder (no '..', no leading '/', no backslash)"
    return None


def parse_records_file(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The runs of a records file (folder -> record) and one message per line that is not a valid run
    (naming the file, the line and why). Raises InvalidRecord when the file cannot be read at all."""
    path = Path(path)
    runs: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    if path.exists() and not path.is_file():  # a folder, a FIFO or a device: never opened
        raise InvalidRecord(f"{path}: not a regular file")
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise InvalidRecord(f"{path}: cannot read records file ({exc.strerror})") from None
    with f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE_BYTES:
                problems.append(
                    f"{where}: {len(raw)} bytes, more than the {MAX_LINE_BYTES} a run record may have"
                )
                continue
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw, parse_constant=_no_constant)
            except (ValueError, RecursionError) as exc:
                problems.append(f"{where}: not a JSON line ({type(exc).__name__}: {exc})")
                continue
            if not isinstance(entry, dict) or set(entry) != {"run", "record"}:
                problems.append(f'{where}: not an object with exactly the keys "run" and "record"')
                continue
            why = _run_problem(entry["run"]) or record_problem(entry["record"])
            if why:
                problems.append(f"{where}: {why}")
            elif entry["run"] in runs:
                problems.append(f"{where}: run {entry['run']} appears twice")
            else:
                runs[entry["run"]] = entry["record"]
    return runs, problems


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_records_file(path: str | os.PathLike[str]) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """The valid records of a records file with the path each run's ``result.json`` has (or would
    have) beside it, as :func:`normbench.report.load.read_records` gives for run folders, and one message
    per line skipped."""
    path = Path(path)
    runs, problems = parse_records_file(path)
    records = [(path.parent / run / RESULT_FILE, record) for run, record in sorted(runs.items())]
    return records, [f"skipped run record {p}" for p in problems]


def _line(run: str, record: dict[str, Any]) -> str:
    entry = {"run": run, "record": finite_or_none(record)}
    return json.dumps(entry, separators=(",", ":"), allow_nan=False, default=str) + "\n"


def _all_or_nothing(path: Path) -> dict[str, dict[str, Any]]:
    """The runs of a records file, or InvalidRecord naming its first bad line (and how many more)."""
    runs, problems = parse_records_file(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidRecord(problems[0] + more)
    return runs


def pack(study_dir: str | os.PathLike[str]) -> int:
    """Write ``study_dir/records.jsonl`` from the records it holds and every valid ``result.json``
    under ``study_dir`` (a folder's file replaces its line). Returns the number of runs in the file.

    Raises:
        InvalidRecord: the existing records file has a line that is not a valid run (nothing is
            written: a file that cannot be read back is never overwritten).
    """
    study_dir = Path(study_dir)
    target = study_dir / RECORDS_FILE
    runs = _all_or_nothing(target) if target.exists() else {}
    for path in find_records([study_dir]):
        try:
            runs[path.parent.relative_to(study_dir).as_posix()] = load_run(path)
        except InvalidRecord as exc:
            log.warning("not packed: %s", exc)
    text = "".join(_line(run, runs[run]) for run in sorted(runs))
    if not target.exists() or target.read_text() != text:
        write_text_atomic(target, text)
    return len(runs)


def unpack(study_dir: str | os.PathLike[str]) -> int:
    """Write every record of ``study_dir/records.jsonl`` as its folder's ``result.json`` where that file
    does not exist (a run trained here since is never replaced). Returns the number written.

    Raises:
        InvalidRecord: a line is not a valid run (checked for the whole file before anything is
            written).
    """
    study_dir = Path(study_dir)
    source = study_dir / RECORDS_FILE
    if not source.exists():
        return 0
    runs = _all_or_nothing(source)
    written = 0
    for run, record in sorted(runs.items()):
        target = study_dir / run / RESULT_FILE
        if not target.exists():
            write_json_atomic(target, record)
            written += 1
    return written


def finished_since(study_dir: str | os.PathLike[str], since: datetime) -> dict[str, int]:
    """How many runs under ``study_dir`` finished at or after ``since``, by status (completed, diverged,
    failed), from their records' ``finished_at``: what an invocation trained, whether or not it ended
    normally (a sweep stopped by a signal prints no summary)."""
    counts = dict.fromkeys(("completed", "diverged", "failed"), 0)
    for path in find_records([Path(study_dir)]):
        try:
            record = load_run(path)
            finished = datetime.fromisoformat(record["finished_at"])
        except (InvalidRecord, KeyError, TypeError, ValueError):
            continue
        if finished >= since and record.get("status") in counts:
            counts[record["status"]] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normbench.evidence",
        description=f"Pack a study's run records into its {RECORDS_FILE}, or unpack them into run folders.",
    )
    parser.add_argument("action", choices=("pack", "unpack", "count"))
    parser.add_argument("study_dir", help="the study's folder, e.g. reports/small_batch")
    parser.add_argument(
        "--since", type=float, help="count: runs finished at or after this time (seconds since the epoch)"
    )
    args = parser.parse_args(argv)
    if not Path(args.study_dir).is_dir():
        print(f"normbench.evidence: {args.study_dir}: no such folder", file=sys.stderr)
        return 2
    if args.action == "count":
        if args.since is None:
            print(
                "normbench.evidence: count needs --since SECONDS (seconds since the epoch)", file=sys.stderr
            )
            return 2
        counts = finished_since(args.study_dir, datetime.fromtimestamp(args.since, timezone.utc))
        print(" ".join(str(counts[s]) for s in ("completed", "diverged", "failed")))
        return 0
    try:
        count = pack(args.study_dir) if args.action == "pack" else unpack(args.study_dir)
    except InvalidRecord as exc:
        print(f"normbench.evidence: {exc}", file=sys.stderr)
        return 2
    verb = "runs in" if args.action == "pack" else "run records written from"
    print(f"{count} {verb} {Path(args.study_dir) / RECORDS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
