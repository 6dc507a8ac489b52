"""reports/reliability.md from the fault-injection suite's table (tests/test_faults.py, FAULTS): each
fault, what happens, and the test that shows it. tests/test_faults.py checks the committed file against
the table, so it cannot go stale.

    python scripts/reliability_table.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "reliability.md"


def table(faults: dict[str, tuple[str, str]]) -> str:
    lines = [
        "# Reliability: faults injected by the test suite",
        "",
        "Each row is a fault that `tests/test_faults.py` (and the tests it names) injects on every CI run: "
        "a signal, a kill or a full disk against real runs and sweeps. Regenerate with "
        "`python scripts/reliability_table.py`.",
        "",
        "| fault | what happens | test |",
        "|---|---|---|",
        *(f"| {fault} | {what} | `{test}` |" for fault, (what, test) in faults.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options; --help
    sys.path.insert(0, str(ROOT / "tests"))
    from test_faults import FAULTS

    OUT.write_text(table(FAULTS))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
