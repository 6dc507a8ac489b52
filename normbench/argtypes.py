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
