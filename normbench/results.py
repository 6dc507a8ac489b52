"""The record of one run (``result.json``): schema, config hash, atomic write, loading."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
STATUSES = ("completed", "diverged", "failed")
FINAL_STATUSES = ("completed", "diverged")  # results: a rerun of the same config skips them
REQUIRED_KEYS = ("schema_version", "status", "config_hash", "choices", "config", "metrics")


class InvalidRecord(ValueError):
    """A result file that is unreadable, partial or of an unknown schema."""


def identity_config(cfg: DictConfig | Mapping[str, Any], exclude: tuple[str, ...]) -> dict[str, Any]:
    """The resolved config without the keys in ``exclude`` (paths, launcher and runtime settings)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    kept = [k for k in cfg if k not in exclude]
    container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, kept), resolve=True, enum_to_str=True)
    return container  # type: ignore[return-value]


def config_hash(identity: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of a resolved config (key order and float repr independent)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON so readers see the old file or the complete new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_run(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate one ``result.json`` (or the run folder holding it).

    Raises:
        InvalidRecord: missing, unreadable, not JSON, a newer schema, missing keys or a bad status.
    """
    p = Path(path)
    if p.is_dir():
        p = p / RESULT_FILE
    try:
        record = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRecord(f"{p}: cannot read run record ({type(exc).__name__}: {exc})") from exc
    if not isinstance(record, dict):
        raise InvalidRecord(f"{p}: run record is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise InvalidRecord(f"{p}: run record lacks {', '.join(missing)}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise InvalidRecord(
            f"{p}: schema_version {record['schema_version']!r}, this normbench reads {SCHEMA_VERSION}"
        )
    if record["status"] not in STATUSES:
        raise InvalidRecord(f"{p}: status {record['status']!r} is not one of {', '.join(STATUSES)}")
    return record
