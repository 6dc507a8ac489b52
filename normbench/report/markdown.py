"""Assembling report.md: figures and tables per task and facet, then what is missing or failed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def slug(values: Sequence[object]) -> str:
    text = "_".join(str(v) for v in values if not pd.isna(v))
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", text).strip("-") or "all"


def norm_by_batch(part: pd.DataFrame, fmt) -> pd.DataFrame:
    """A norm × batch-size table of strings, batch sizes descending (as in Wu & He 2018, Table 2)."""
    batch_sizes = sorted(part["batch_size"].unique(), reverse=True)
    table = pd.DataFrame(index=sorted(part["norm"].unique()), columns=batch_sizes, dtype=object)
    for row in part.itertuples(index=False):
        table.loc[row.norm, row.batch_size] = fmt(row)
    table = table.fillna("—")
    table.index.name = "norm \\ batch"
    return table


def md_table(table: pd.DataFrame) -> str:
    """A GitHub markdown table, cells printed as given; a MultiIndex becomes leading columns and a
    missing cell prints as —."""
    if isinstance(table.index, pd.MultiIndex):
        return (
            table.reset_index()
            .astype(object)
            .fillna("—")
            .to_markdown(index=False, stralign="right", disable_numparse=True)
        )
    return table.astype(object).fillna("—").to_markdown(stralign="right", disable_numparse=True)


def escaped_pipes(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``|`` in its text cells escaped (an error message's pipe would split its row into
    one column more than the header, shifting every cell after it)."""
    return table.apply(
        lambda column: column.map(lambda v: v.replace("|", r"\|") if isinstance(v, str) else v)
    )


def image(path: Path, base: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(base).as_posix()})"


def facet_title(keys: Sequence[str], values: Sequence[object]) -> str:
    parts = [
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in zip(keys, values, strict=True)
        if not pd.isna(v)
    ]
    return ", ".join(parts)
