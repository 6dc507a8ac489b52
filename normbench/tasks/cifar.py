"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from their official archives, read without torchvision.

Two on-disk versions are read, whichever is found under the data root first:

- the binary version (``cifar-10-batches-bin``, ``cifar-100-binary``): fixed-size records of label
  byte(s) and 3072 pixel bytes, read with ``numpy.frombuffer`` — no pickle involved;
- the python version torchvision users already have (``cifar-10-batches-py``, ``cifar-100-python``):
  pickled dicts, read with :class:`RestrictedUnpickler`, which builds only the numpy arrays, lists,
  dicts, bytes and numbers those files hold and refuses every other global.

``download=True`` fetches the official binary archive, verifies its published MD5 and extracts it (a
tar member that would land outside the root is refused). Inputs are normalized per channel with the
training set's mean and standard deviation; augmentation is done on batches (:func:`crop_flip`).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from normbench.tasks.dataset import Dataset

PIXELS = 3 * 32 * 32
DOWNLOAD_TIMEOUT_S = 60.0  # a connection silent this long (connecting, or between reads) fails the download


@dataclass(frozen=True)
class CifarVersion:
    """One on-disk layout: its folder, train and test files, and the label it reads."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    binary: bool
    label_bytes: int = 1  # binary records: label bytes before the pixels (CIFAR-100: coarse, fine)
    label_key: bytes = b"labels"  # python version: the dict key of the labels


@dataclass(frozen=True)
class CifarSpec:
    name: str
    num_classes: int
    versions: tuple[CifarVersion, ...]
    url: str
    md5: str
    size_mb: int


SPECS = {
    "cifar10": CifarSpec(
        "CIFAR-10",
        10,
        (
            CifarVersion(
                "cifar-10-batches-bin",
                tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                ("test_batch.bin",),
                True,
            ),
            CifarVersion(
                "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), False
            ),
        ),
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
        163,
    ),
    "cifar100": CifarSpec(
        "CIFAR-100",
        100,
        (
            CifarVersion("cifar-100-binary", ("train.bin",), ("test.bin",), True, label_bytes=2),
            CifarVersion("cifar-100-python", ("train",), ("test",), False, label_key=b"fine_labels"),
        ),
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
        161,
    ),
}


class MissingData(FileNotFoundError):
    """The dataset is not under the data root (and download was not asked for)."""


def default_root() -> Path:
    """``$NORMBENCH_DATA``, else ``$XDG_CACHE_HOME/normbench`` (``~/.cache/normbench``)."""
    if os.environ.get("NORMBENCH_DATA"):
        return Path(os.environ["NORMBENCH_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "normbench"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's python-version files hold: numpy arrays (with their dtype) inside
    dicts and lists of bytes and numbers. Any other global — the way a malicious pickle runs code —
    raises ``pickle.UnpicklingError``."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of a CIFAR file")
        return super().find_class(module, name)


def _read_python(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as f:
        batch = RestrictedUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: not a CIFAR python-version batch (no {label_key!r} and b'data')")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.dtype.kind not in "ui" or labels.dtype.kind not in "ui":
        raise ValueError(f"{path}: pixels and labels must be integers, not {data.dtype} and {labels.dtype}")
    if data.size % PIXELS:
        raise ValueError(f"{path}: {data.size} pixel values are not whole {PIXELS}-pixel images")
    if data.size and not 0 <= data.min() <= data.max() <= 255:  # uint8 would wrap them silently
        raise ValueError(f"{path}: pixel values must be in [0, 255], found {data.min()}..{data.max()}")
    return data.astype(np.uint8).reshape(-1, PIXELS), labels.astype(np.int64)


def _read_binary(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    record = label_bytes + PIXELS
    if raw.size % record:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records")
    records = raw.reshape(-1, record)
    return records[:, label_bytes:], records[:, label_bytes - 1].astype(np.int64)  # the last label byte


def _checked(path: Path, x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``path``'s images and labels, if they can be a CIFAR file's: records there, as many labels as
    images, every label a class."""
    if len(x) == 0:
        raise ValueError(f"{path}: holds no records")
    if y.shape != (len(x),):
        raise ValueError(f"{path}: {y.size} labels for {len(x)} images")
    if not 0 <= y.min() <= y.max() < num_classes:
        raise ValueError(f"{path}: labels must be in [0, {num_classes}), found {y.min()}..{y.max()}")
    return x, y


def _read(
    folder: Path, version: CifarVersion, files: tuple[str, ...], num_classes: int
) -> tuple[Tensor, Tensor]:
    parts = [
        _checked(
            folder / f,
            *(
                _read_binary(folder / f, version.label_bytes)
                if version.binary
                else _read_python(folder / f, version.label_key)
            ),
            num_classes,
        )
        for f in files
    ]
    sizes = {f: len(p[0]) for f, p in zip(files, parts, strict=True)}
    if len(set(sizes.values())) > 1:  # the official files of a split hold equal numbers of records
        counts = ", ".join(f"{f}: {n}" for f, n in sizes.items())
        raise ValueError(
            f"{folder}: its files hold different numbers of records ({counts}): one was cut or replaced"
        )
    x = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


def find_version(root: Path, spec: CifarSpec) -> tuple[Path, CifarVersion] | None:
    for version in spec.versions:
        folder = root / version.folder
        if all((folder / f).is_file() for f in (*version.train, *version.test)):
            return folder, version
    return None


def download(spec: CifarSpec, root: Path) -> None:
    """Fetch ``spec``'s official archive into ``root``, verify its MD5, extract it. Nothing is left
    under ``root`` if the download fails (no answer within ``DOWNLOAD_TIMEOUT_S``, no network), the
    checksum or the archive is bad."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / Path(spec.url).name
        try:
            with (
                urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                archive.open("wb") as out,
            ):
                shutil.copyfileobj(response, out)
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused or reset connections
            reason = getattr(exc, "reason", None) or exc
            raise OSError(f"downloading {spec.name} from {spec.url} failed: {reason}") from None
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != spec.md5:
            raise ValueError(
                f"{spec.url}: MD5 {digest} does not match the published {spec.md5}; nothing kept"
            )
        staged = Path(tmp) / "extracted"
        with tarfile.open(archive) as tar:
            tar.extractall(staged, filter="data")  # refuses absolute paths and members escaping staged/
        for item in staged.iterdir():
            target = root / item.name
            if not target.exists():
                item.rename(target)


def load_cifar(name: str, root: str | Path | None = None, fetch: bool = False):
    """CIFAR ``name`` ('cifar10' or 'cifar100') as a :class:`normbench.tasks.dataset.Dataset`: inputs
    normalized per channel with the training set's statistics, (N, 3, 32, 32) float32."""

    spec = SPECS[name]
    root = Path(root).expanduser() if root else default_root()
    found = find_version(root, spec)
    if found is None and fetch:
        download(spec, root)
        found = find_version(root, spec)
    if found is None:
        folders = " or ".join(v.folder for v in spec.versions)
        raise MissingData(
            f"no {spec.name} under {root.resolve()} (looked for {folders}); set data.download=true to fetch it "
            f"({spec.size_mb} MB), or data.root / $NORMBENCH_DATA to where it is"
        )
    folder, version = found
    x_train, y_train = _read(folder, version, version.train, spec.num_classes)
    x_test, y_test = _read(folder, version, version.test, spec.num_classes)
    pixels = x_train.to(torch.float32) / 255
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
    std = pixels.std(dim=(0, 2, 3), keepdim=True)

    def normalized(x: Tensor) -> Tensor:
        return (x.to(torch.float32) / 255 - mean) / std

    return Dataset(name, normalized(x_train), y_train, normalized(x_test), y_test, spec.num_classes)


def crop_flip(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """The standard CIFAR augmentation on a batch (N, C, H, W), on its device: zero-pad by ``pad``,
    crop back to H×W at a random offset per image, flip each image horizontally with probability ½
    (He et al. 2016). One gather for the crops; random numbers from ``gen`` (on x's device)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen, device=x.device)
    flip = torch.rand(n, 1, generator=gen, device=x.device) < 0.5
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx
    rows = torch.arange(h, device=x.device).expand(n, h) + dy
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_format_of(x))


def _format_of(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def write_fixture(
    root: Path, name: str, n_train: int, n_test: int, seed: int = 0, binary: bool = True
) -> None:
    """A small dataset in CIFAR's own on-disk format (for tests and offline demos): random images whose
    class is readable from the mean brightness of one colour channel. Like the official files, the
    files of a split hold equal numbers of records: ``n_train`` is rounded up to a multiple of them."""
    spec = SPECS[name]
    version = next(v for v in spec.versions if v.binary == binary)
    folder = root / version.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, spec.num_classes, n)
        x = rng.integers(0, 128, (n, 3, 32, 32)).astype(np.int64)
        x[np.arange(n), y % 3] += y[:, None, None] * 127 // max(1, spec.num_classes - 1)
        return x.clip(0, 255).astype(np.uint8).reshape(n, PIXELS), y

    for files, count in ((version.train, n_train), (version.test, n_test)):
        for f in files:
            k = -(-count // len(files))
            x, y = batch(k)
            if binary:
                labels = np.stack([y // 5, y] if version.label_bytes == 2 else [y], axis=1).astype(np.uint8)
                (folder / f).write_bytes(np.concatenate([labels, x], axis=1).tobytes())
            else:
                payload = {version.label_key: y.tolist(), b"data": x, b"batch_label": b"fixture"}
                buf = io.BytesIO()
                pickle.dump(payload, buf)
                (folder / f).write_bytes(buf.getvalue())
