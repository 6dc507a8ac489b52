"""argparse types shared by the entry points and the scripts: a bad value is refused when the
arguments are parsed (one line naming it, exit 2), before any work."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from normbench.results import write_problem


def positive_int(what: str = "an integer >= 1") -> Callable[[str], int]:
    """An argparse type for an integer >= 1; its error says the value must be ``what``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text}: must be {what}")
        return value

    return parse


def one_line(text: str) -> str:
    """An argparse type for a heading (a report's title): text on one line, not blank."""
    if not text.strip() or "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: must be one line of text (not empty)")
    return text.strip()


def known_device(text: str) -> str:
    """An argparse type for a device this machine has (auto, cpu, cuda or cuda:N), given as the torch
    device it names (``auto``: cuda where there is one, else cpu)."""
    from normbench.runtime import device_problem, resolve_device  # torch, only where a device is asked

    problem = device_problem(text, "--device")
    if problem:
        raise argparse.ArgumentTypeError(problem.removeprefix("--device="))
    return str(resolve_device(text))


def text_file(text: str) -> str:
    """An argparse type for a text file to read (a report's notes): its contents."""
    try:
        return _given(text).read_text()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text}: not text ({exc.reason} at byte {exc.start})") from None


def writable_file(text: str) -> Path:
    """An argparse type for a file to write at the end (a benchmark's table): not a folder, and its
    folder (made if missing) takes a file now, so that a long run does not end in a path it cannot write."""
    path = _given(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give the file to write")
    _probe(text, path.parent)
    return path


def writable_folder(text: str) -> Path:
    """An argparse type for a folder to write into at the end (a report's): not a file, and the folder,
    or the nearest one above it that exists (it is not made here), takes a file now."""
    path = _given(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file; give a folder")
    _probe(text, next(p for p in (path, *path.parents) if p.exists()))
    return path


def _given(text: str) -> Path:
    if not text.strip():  # Path("") is the current folder
        raise argparse.ArgumentTypeError(f"{text!r}: an empty path")
    return Path(text)


def _probe(text: str, folder: Path) -> None:
    """ArgumentTypeError unless a file can be written in ``folder`` (made if missing) now."""
    blocking = next((p for p in reversed(folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None or (folder.exists() and not folder.is_dir()):
        raise argparse.ArgumentTypeError(f"{text}: {blocking or folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"{text}: cannot write in {folder} ({exc.strerror or exc})"
        ) from None
    why = write_problem(folder)
    if why:
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {folder} ({why})")
