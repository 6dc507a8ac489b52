"""The record of one run (``result.json``): schema, config hash, atomic write, validated loading, and
the per-run lock that keeps two processes from training the same config at once."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import IO, Any

from omegaconf import Container, DictConfig, OmegaConf

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # schema 1 also carried ``choices`` (command-line values); it is ignored
RESULT_FILE = "result.json"
LOCK_FILE = ".lock"
STATUSES = ("completed", "diverged", "failed")
FINAL_STATUSES = ("completed", "diverged")  # results: a rerun of the same config skips them
REQUIRED_KEYS = ("schema_version", "status", "config_hash", "config", "metrics")
MAX_RECORD_BYTES = 16 * 2**20  # a record with its history is a few kB; anything larger is not one
MAX_INT = 2**53  # integers beyond this do not survive a float column (pandas, JSON readers)


class InvalidRecord(ValueError):
    """A result file that is unreadable, partial, of an unknown schema or with out-of-range values."""


def identity_config(
    cfg: DictConfig | Mapping[str, Any], exclude: tuple[str, ...], at_default: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The resolved config without the keys in ``exclude`` (paths, launcher and runtime settings;
    dotted keys name nested ones) and without the keys of ``at_default`` that hold that value."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    identity: dict[str, Any] = {}
    for key in cfg:
        if key in exclude:
            continue
        value = cfg[key]  # interpolations resolve against the whole config
        if isinstance(value, Container):
            value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
        identity[str(key)] = value.value if isinstance(value, Enum) else value
    for dotted in exclude:
        _drop(identity, dotted.split("."))
    for dotted, default in (at_default or {}).items():
        _drop(identity, dotted.split("."), only_if=default)
    return identity


_ALWAYS = object()


def _drop(tree: dict[str, Any], path: list[str], only_if: Any = _ALWAYS) -> None:
    """Remove the nested key ``path`` from ``tree`` (only while it equals ``only_if``, when given),
    then its parent if that left it empty: a section whose every key is left out is left out."""
    head, *rest = path
    if head not in tree:
        return
    if rest:
        if isinstance(tree[head], dict):
            _drop(tree[head], rest, only_if)
            if not tree[head]:
                del tree[head]
    elif only_if is _ALWAYS or tree[head] == only_if:
        del tree[head]


def config_hash(identity: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of a resolved config (key order and float repr independent)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # what open() would give: readable by the group/others the umask allows


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A temporary file beside ``path``, opened with ``mode``, that replaces ``path`` once the block
    ends without an exception (and is deleted if it raises): readers see the old file or the complete
    new one, never a part. The file gets the mode a plain ``open`` would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer in the name (.NAME.@HOST-PID.RANDOM.tmp): a dead writer's file is known to be stale
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.@{_writer()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_problem(folder: Path) -> str | None:
    """Why no file can be written in ``folder`` now (it is not made), or None: a probe file is written
    there and removed (permissions alone do not say it: a read-only mount, root, /proc)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".normbench-", suffix=".probe"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(text)


def find_records(dirs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every entry named ``result.json`` under ``dirs``, symbolic links included even when broken (so
    that reading them can say why they are skipped); linked folders are not entered."""
    paths: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"sweep folder {root} does not exist")
        if not root.is_dir():
            paths.add(root)
            continue
        for folder, subdirs, files in os.walk(root):
            if RESULT_FILE in files or RESULT_FILE in subdirs:
                paths.add(Path(folder) / RESULT_FILE)
    return sorted(paths)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON atomically (:func:`write_text_atomic`); non-finite floats as null."""
    text = json.dumps(finite_or_none(data), indent=2, sort_keys=False, allow_nan=False, default=str)
    write_text_atomic(path, text)


def remove_stale_temporaries(folder: Path, held: bool = True) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed :func:`atomic_file` left in ``folder``: all of them while
    holding the folder's :func:`run_lock` (``held``: no live writer is then using them), else only those
    whose writer was a process of this host that has ended (a finished run's folder, where a process
    killed while marking its visit left one)."""
    found = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
    stale = found if held else [path for path in found if _dead_writer(path)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _writer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _dead_writer(temporary: Path) -> bool:
    """Was ``temporary`` written by a process of this host that is no longer running?"""
    # '@' before the host (no host name holds one): another host whose name ends in this one's is not it
    match = re.search(rf"\.@{re.escape(socket.gethostname())}-(\d+)\.[^.]*\.tmp$", temporary.name)
    if match is None:  # another host's, or written before writers were named
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextmanager
def run_lock(folder: Path) -> Iterator[bool]:
    """Hold an exclusive, non-blocking lock on ``folder`` (its ``.lock`` file) for the block; yields
    False when another live process holds it. The kernel releases it when the holder dies (kill -9
    included), so a lock is never stale."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_locked(folder: Path) -> bool:
    """Does a live process hold ``folder``'s run lock right now?"""
    if not (folder / LOCK_FILE).exists():
        return False
    with run_lock(folder) as acquired:
        return not acquired


def read_json_file(path: Path, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Parse a JSON file that is a regular file of at most ``max_bytes`` (never a device, a FIFO or
    a huge file); NaN/Infinity literals are rejected. Raises InvalidRecord with the reason."""
    try:
        info = os.stat(path)  # follows a symlink: its target is what would be read
    except OSError as exc:
        raise InvalidRecord(f"{path}: cannot read run record ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidRecord(f"{path}: not a regular file")
    if info.st_size > max_bytes:
        raise InvalidRecord(f"{path}: {info.st_size} bytes, more than the {max_bytes} a run record may have")

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        with open(path, "rb") as f:
            return json.loads(f.read(max_bytes + 1), parse_constant=no_constant)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidRecord(f"{path}: cannot read run record ({type(exc).__name__}: {exc})") from None
    except RecursionError:  # nesting deeper than the parser's recursion limit
        raise InvalidRecord(f"{path}: cannot read run record (JSON nested too deeply)") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_INT


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < MAX_INT
    return isinstance(value, float) and math.isfinite(value)


def metric_problem(name: str, value: Any, fractions: bool = True) -> str | None:
    """Why ``value`` is not a valid metric ``name`` (None if it is): finite numbers, booleans for
    flags; errors (``*error*``) are fractions in [0, 1] (≥ 0 for a task whose errors are not
    fractions: ``fractions=False``), the generalization gap in [-1, 1] (any number then), losses ≥ 0
    (numbers, never booleans: ``true`` is no error rate)."""
    numeric = name == "generalization_gap" or "error" in name or "loss" in name
    if isinstance(value, bool):
        return f"metric {name}={json.dumps(value)} is a boolean, not a number" if numeric else None
    if not _is_number(value):
        return f"metric {name}={value!r} is not a finite number"
    top = 1.0 if fractions else math.inf
    if name == "generalization_gap":
        bounds: tuple[float, float] = (-top, top)
    elif "error" in name:
        bounds = (0.0, top)
    elif "loss" in name:
        bounds = (0.0, math.inf)
    else:
        return None
    if not bounds[0] <= value <= bounds[1]:
        return f"metric {name}={value!r} is outside [{bounds[0]:g}, {bounds[1]:g}]"
    return None


def record_problem(record: Any) -> str | None:
    """The first reason ``record`` is not a valid run record, or None."""
    if not isinstance(record, dict):
        return "run record is not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"run record lacks {', '.join(missing)}"
    if record["schema_version"] not in READABLE_SCHEMAS:
        return f"schema_version {record['schema_version']!r}; this normbench reads {READABLE_SCHEMAS}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(record["config_hash"], str) or not record["config_hash"]:
        return f"config_hash {record['config_hash']!r} is not a string"
    config = record["config"]
    if not isinstance(config, dict):
        return "config is not an object"
    for key in ("task", "norm"):
        name = config.get(key, {}).get("name") if isinstance(config.get(key), dict) else None
        if not isinstance(name, str) or not name:
            return f"config.{key}.name is missing or not a string"
    if not _is_int(config.get("batch_size")) or config["batch_size"] < 1:
        return f"config.batch_size={config.get('batch_size')!r} is not a positive integer"
    if not _is_int(config.get("seed")):
        return f"config.seed={config.get('seed')!r} is not an integer"
    if "choices" in record and not isinstance(record["choices"], dict):
        return "choices is not an object"
    metrics = record["metrics"]
    if not isinstance(metrics, dict):
        return "metrics is not an object"
    main = record.get("main_metric", {"name": "test_error", "lower_is_better": True})
    if not (
        isinstance(main, dict)
        and isinstance(main.get("name"), str)
        and isinstance(main.get("lower_is_better"), bool)
        and isinstance(main.get("error_is_fraction", True), bool)
    ):
        return "main_metric is not an object with a name, lower_is_better (and error_is_fraction)"
    fractions = main.get("error_is_fraction", True)
    for name, value in metrics.items():
        why = metric_problem(name, value, fractions)
        if why:
            return why
    if record["status"] == "completed" and main["name"] not in metrics:
        return f"a completed run without its main metric {main['name']}"
    history = record.get("history", [])
    if not isinstance(history, list) or not all(isinstance(p, dict) for p in history):
        return "history is not a list of objects"
    for point in history:
        for name, value in point.items():
            why = None if value is None else metric_problem(name, value, fractions)
            if why:
                return f"history: {why}"
    for key in ("steps", "planned_steps", "steps_per_epoch"):
        if key in record and not (_is_int(record[key]) and record[key] >= 0):
            return f"{key}={record[key]!r} is not a non-negative integer"
    for key in ("lr", "wall_time_s", "time_per_step_s"):
        if record.get(key) is not None and not _is_number(record[key]):
            return f"{key}={record[key]!r} is not a finite number"
    return None


def load_run(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate one ``result.json`` (or the run folder holding it).

    Raises:
        InvalidRecord: missing, not a regular file, too large, not JSON, a newer schema, missing keys,
            a bad status, or values of the wrong type or range (the message names the file and why).
    """
    p = Path(path)
    if p.is_dir():
        p = p / RESULT_FILE
    record = read_json_file(p)
    why = record_problem(record)
    if why:
        raise InvalidRecord(f"{p}: {why}")
    return record
