"""argparse types shared by the entry points and the scripts: a bad value is refused when the
arguments are parsed (one line naming it, exit 2), before any work."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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


def known_device(text: str) -> str:
    """An argparse type for a device this machine has (auto, cpu, cuda or cuda:N), given as the torch
    device it names (``auto``: cuda where there is one, else cpu)."""
    from normbench.runtime import device_problem, resolve_device  # torch, only where a device is asked

    problem = device_problem(text, "--device")
    if problem:
        raise argparse.ArgumentTypeError(problem.removeprefix("--device="))
    return str(resolve_device(text))
