"""CIFAR tasks on small datasets written in CIFAR's own on-disk formats (no download, no torchvision)."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import socket
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import QUICK, compose_cfg, normbench_run, normbench_run_here
from torch import nn

from normbench.config import ConfigError
from normbench.experiment.identity import run_identity
from normbench.experiment.run import execute
from normbench.schema import ClassifierConfig
from normbench.tasks import NormLayers, build_classifier, cifar
from normbench.tasks.cifar import RestrictedUnpickler, crop_flip, load_cifar, write_fixture


def _raw_binary(folder: Path, files, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and (fine) labels parsed record by record, independently of the reader."""
    xs, ys = [], []
    for f in files:
        blob = (folder / f).read_bytes()
        size = label_bytes + 3072
        for start in range(0, len(blob), size):
            ys.append(blob[start + label_bytes - 1])
            xs.append(np.frombuffer(blob[start + label_bytes : start + size], dtype=np.uint8))
    return np.stack(xs).reshape(-1, 3, 32, 32), np.array(ys)


@pytest.mark.parametrize("name, version", [("cifar10", 0), ("cifar100", 0)])
def test_binary_version_is_read_record_by_record(tmp_path, name, version):
    write_fixture(tmp_path, name, 40, 11)
    spec = cifar.SPECS[name]
    v = spec.versions[version]
    data = load_cifar(name, tmp_path)
    raw_x, raw_y = _raw_binary(tmp_path / v.folder, v.train, v.label_bytes)
    test_x, test_y = _raw_binary(tmp_path / v.folder, v.test, v.label_bytes)
    pixels = raw_x / 255.0
    mean = pixels.mean(axis=(0, 2, 3), keepdims=True)
    std = pixels.std(axis=(0, 2, 3), keepdims=True, ddof=1)
    np.testing.assert_allclose(data.x_train.numpy(), (pixels - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.x_test.numpy(), (test_x / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    assert data.y_train.tolist() == raw_y.tolist() and data.y_test.tolist() == test_y.tolist()
    assert data.x_train.shape == (40, 3, 32, 32) and data.num_classes == spec.num_classes
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.long


def test_python_version_gives_the_same_dataset_as_the_binary_one(tmp_path):
    write_fixture(tmp_path / "bin", "cifar10", 40, 10, seed=3)
    write_fixture(tmp_path / "py", "cifar10", 40, 10, seed=3, binary=False)
    a, b = load_cifar("cifar10", tmp_path / "bin"), load_cifar("cifar10", tmp_path / "py")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


class _Boom:
    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_restricted_unpickler_refuses_code_and_runs_nothing(tmp_path):
    bomb = _Boom()
    bomb.target = tmp_path / "pwned"
    payload = pickle.dumps({b"data": bomb, b"labels": [1]})
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle pathlib"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    assert not bomb.target.exists()
    ok = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2], b"batch_label": b"x"})
    assert RestrictedUnpickler(io.BytesIO(ok), encoding="bytes").load()[b"labels"] == [1, 2]


def _archive(tmp_path: Path, extra: tarfile.TarInfo | None = None) -> Path:
    source = tmp_path / "source"
    write_fixture(source, "cifar10", 20, 10)
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x"))
    return path


def _serve(monkeypatch, archive: Path, md5: str) -> None:
    spec = cifar.SPECS["cifar10"]
    monkeypatch.setitem(
        cifar.SPECS, "cifar10", cifar.CifarSpec(spec.name, 10, spec.versions, archive.as_uri(), md5, 1)
    )


def test_download_verifies_the_checksum_then_extracts(tmp_path, monkeypatch):
    archive = _archive(tmp_path)
    root = tmp_path / "root"
    _serve(monkeypatch, archive, "0" * 32)
    with pytest.raises(ValueError, match="does not match the published 00000000"):
        load_cifar("cifar10", root, fetch=True)
    assert list(root.iterdir()) == []  # nothing kept
    _serve(monkeypatch, archive, hashlib.md5(archive.read_bytes()).hexdigest())
    data = load_cifar("cifar10", root, fetch=True)
    assert len(data.x_train) == 20 and (root / "cifar-10-batches-bin" / "test_batch.bin").is_file()


def test_download_refuses_a_member_outside_the_root(tmp_path, monkeypatch):
    evil = tarfile.TarInfo("../escaped.txt")
    evil.size = 1
    archive = _archive(tmp_path, evil)
    _serve(monkeypatch, archive, hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(tarfile.OutsideDestinationError):
        load_cifar("cifar10", tmp_path / "root", fetch=True)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "root" / "escaped.txt").exists()


def test_crop_flip_equals_pad_slice_and_flip_per_image():
    x = torch.randn(16, 3, 32, 32)
    out = crop_flip(x, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the same draws, in the same order
    dy = torch.randint(0, 9, (16, 1), generator=gen)
    dx = torch.randint(0, 9, (16, 1), generator=gen)
    flip = torch.rand(16, 1, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crop = padded[i, :, dy[i, 0] : dy[i, 0] + 32, dx[i, 0] : dx[i, 0] + 32]
        torch.testing.assert_close(out[i], crop.flip(-1) if flip[i, 0] else crop, rtol=0, atol=0)
    assert 0 < int(flip.sum()) < 16  # both branches were exercised
    last = crop_flip(x.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(5))
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, out)


@pytest.fixture
def fixture_root(tmp_path):
    write_fixture(tmp_path / "data", "cifar10", 64, 32)
    write_fixture(tmp_path / "data", "cifar100", 64, 32, binary=False)
    return tmp_path / "data"


@pytest.mark.parametrize(
    "task, extra",
    [("cifar10_resnet20", []), ("cifar100_resnet20", ["task.model.depth=32"]), ("cifar10_vgg", [])],
)
def test_cifar_tasks_train_on_their_on_disk_format(fixture_root, tmp_path, task, extra):
    cfg = compose_cfg(
        f"task={task}", f"data.root={fixture_root}", "batch_size=8", "norm=groupnorm", *extra, *QUICK
    )
    record = execute(cfg, tmp_path / "run")
    assert record["status"] == "completed", record.get("error")
    assert 0 <= record["metrics"]["test_error"] <= 1 and record["steps"] == 4


def test_cifar_resnet_has_the_papers_layers():
    norms = NormLayers("batchnorm")
    model = build_classifier(
        ClassifierConfig(arch="cifar_resnet", width=16, depth=56), (3, 32, 32), 10, norms
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 55  # 6n + 1 3x3 convs + the head = 56 layers, n = 9
    assert [c.out_channels for c in convs[::18]] == [16, 16, 32, 64]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_where_the_data_lives_is_not_part_of_the_identity(fixture_root):
    a = compose_cfg("task=cifar10_resnet20", f"data.root={fixture_root}")
    b = compose_cfg("task=cifar10_resnet20", "data.root=/elsewhere", "data.download=true")
    assert run_identity(a) == run_identity(b)
    identity, _ = run_identity(a)
    assert identity["task"]["augment"] == "crop_flip" and "root" not in identity["data"]
    plain, _ = run_identity(compose_cfg())  # keys added later stay out of older tasks' identities
    assert "augment" not in plain["task"] and "name" not in plain["task"]["model"]


def test_missing_data_is_one_line_naming_the_path_and_the_flag(tmp_path, monkeypatch, capsys):
    args = ("task=cifar10_resnet20", f"data.root={tmp_path / 'none'}", *QUICK)
    status, stderr = normbench_run_here(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2, stderr
    line = stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"no CIFAR-10 under {tmp_path / 'none'}" in line and "data.download=true" in line
    assert list(tmp_path.iterdir()) == []  # no output folder, and the data root was not created


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["task=cifar10_resnet20", "task.model.depth=21"],
            "task.model.depth=21: the CIFAR ResNet needs 6n + 2",
        ),
        (["task=mnist1d_cnn", "task.augment=crop_flip"], "task.augment=crop_flip: only for image tasks"),
    ],
)
def test_bad_cifar_settings_are_refused_before_any_work(fixture_root, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        execute(compose_cfg(*overrides, f"data.root={fixture_root}", *QUICK), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# no CIFAR-10 here: a setting the model refuses is said before the data is looked for (or downloaded)
NO_DATA = ("data.root=/nonexistent/cifar", "data.download=false")


def test_torchvision_task_without_torchvision_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails, as on these machines
    with pytest.raises(
        ConfigError, match=r"needs torchvision.*build that matches torch \d.*download\.pytorch\.org/whl/cpu"
    ):
        execute(compose_cfg("task=torchvision", *NO_DATA, *QUICK), tmp_path / "run")


class _TinyTorchvisionResNet(nn.Module):
    """torchvision's ResNet stem and head structure (conv1, bn1, relu, maxpool, ..., fc)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        h = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(h.mean((2, 3)))


@pytest.fixture
def fake_torchvision(monkeypatch):
    models = types.SimpleNamespace(
        list_models=lambda module=None: ["resnet18", "resnet50", "vgg11"],
        get_model=lambda name, weights=None, num_classes=1000: _TinyTorchvisionResNet(num_classes),
    )
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))


def test_torchvision_task_converts_the_models_norms(fixture_root, tmp_path, fake_torchvision):
    norms = NormLayers("groupnorm", {"num_groups": 4})
    model = build_classifier(
        ClassifierConfig(arch="torchvision", name="resnet18", small_input=True), (3, 32, 32), 10, norms
    )
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert len(norms.built) == 2 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    record = execute(
        compose_cfg(
            "task=torchvision", f"data.root={fixture_root}", "norm=groupnorm", "norm.num_groups=4", *QUICK
        ),
        tmp_path / "run",
    )
    assert record["status"] == "completed", record.get("error")


def test_unknown_torchvision_model_lists_close_matches(tmp_path, fake_torchvision):
    with pytest.raises(
        ConfigError, match=r"task.model.name=resnet19: not a torchvision classifier; did you mean resnet18"
    ):
        execute(
            compose_cfg("task=torchvision", "task.model.name=resnet19", *NO_DATA, *QUICK), tmp_path / "run"
        )
    with pytest.raises(ConfigError, match=r"cifar10.*/nonexistent/cifar"):  # the data is looked for next
        execute(compose_cfg("task=torchvision", *NO_DATA, *QUICK), tmp_path / "run")


def test_cifar_study_preset_runs_on_the_fixture_and_selects_on_validation(fixture_root, tmp_path):
    """The GPU preset's own code path, on CPU with a reduced grid: the sweep, then the report with
    the lr chosen per cell on the validation split."""
    grid = "{norm:'batchnorm,groupnorm',batch_size:'4,16',optim.lr:'0.05,0.2',seed:'0,1'}"
    proc = normbench_run(
        "experiment=cifar_study",
        f"hydra.sweeper.params={grid}",
        f"data.root={fixture_root}",
        "data.val_size=16",
        "train.budget=steps",
        "train.steps=3",
        "sweep.root=sweeps",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from normbench.report.build import build_report

    study = Path(__file__).resolve().parents[1] / "conf/study/cifar.yaml"
    report = build_report([tmp_path / "sweeps"], tmp_path / "out", study=study).read_text()
    assert "## Selected on the validation split" in report and "# CIFAR-10 section" in report
    # the grid here has batch 4 and 16, none of the study's cells: every claim is left out, and said so
    assert report.count("No claim of this section has runs in all of its cells.") == 3
    selection = pd.read_csv(tmp_path / "out" / "selection.csv")
    assert len(selection) == 8 and selection["chosen"].sum() == 4  # 2 norms x 2 batch sizes, 2 lrs each


def _python_batch(path, data, labels) -> None:
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"}))


def _empty(folder):
    (folder / "data_batch_2.bin").write_bytes(b"")


def _cut_at_a_record(folder):
    blob = (folder / "data_batch_3.bin").read_bytes()
    (folder / "data_batch_3.bin").write_bytes(blob[: 3073 * 2])


def _label_out_of_range(folder):
    blob = bytearray((folder / "test_batch.bin").read_bytes())
    blob[3073] = 10  # the second record's label: CIFAR-10 has classes 0..9
    (folder / "test_batch.bin").write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "corrupt, file, message",
    [
        (_empty, "data_batch_2.bin", "data_batch_2.bin: holds no records"),
        (_cut_at_a_record, "cifar-10-batches-bin", "data_batch_3.bin: 2,"),
        (_label_out_of_range, "test_batch.bin", "labels must be in [0, 10), found "),
    ],
)
def test_a_damaged_binary_file_is_refused_naming_the_file(tmp_path, corrupt, file, message):
    write_fixture(tmp_path, "cifar10", 40, 10)
    corrupt(tmp_path / "cifar-10-batches-bin")
    with pytest.raises(ValueError) as exc:
        load_cifar("cifar10", tmp_path)
    assert file in str(exc.value) and message in str(exc.value)


@pytest.mark.parametrize(
    "data, labels, message",
    [
        (
            np.full((8, 3072), 300, dtype=np.int64),
            list(range(8)),
            "pixel values must be in [0, 255], found 300..300",
        ),
        (
            np.zeros((8, 3072), dtype=np.uint8),
            [0, 1, 2, -1, 4, 5, 6, 7],
            "labels must be in [0, 10), found -1..7",
        ),
        (np.zeros((8, 3072), dtype=np.uint8), list(range(7)), "7 labels for 8 images"),
        (
            np.zeros((8, 3000), dtype=np.uint8),
            list(range(8)),
            "24000 pixel values are not whole 3072-pixel images",
        ),
        (np.zeros((8, 3072), dtype=np.float32), list(range(8)), "pixels and labels must be integers"),
    ],
)
def test_a_damaged_python_file_is_refused_naming_the_file(tmp_path, data, labels, message):
    write_fixture(tmp_path, "cifar10", 40, 10, binary=False)
    _python_batch(tmp_path / "cifar-10-batches-py" / "test_batch", data, labels)
    with pytest.raises(ValueError) as exc:
        load_cifar("cifar10", tmp_path)
    assert "test_batch: " in str(exc.value) and message in str(exc.value)


def test_a_damaged_file_is_one_line_before_any_training(tmp_path):
    write_fixture(tmp_path / "data", "cifar10", 40, 10)
    _empty(tmp_path / "data" / "cifar-10-batches-bin")
    proc = normbench_run(
        "task=cifar10_resnet20", f"data.root={tmp_path / 'data'}", *QUICK, "hydra.run.dir=out", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"normbench-run: error: task.dataset=cifar10: {tmp_path / 'data' / 'cifar-10-batches-bin' / 'data_batch_2.bin'}: holds no records"
    ]
    assert not (tmp_path / "out" / "result.json").exists()


def test_a_download_that_never_answers_times_out_and_leaves_nothing(tmp_path, monkeypatch):
    """A server on the loopback that accepts the connection and never answers: the download fails
    within the timeout, naming the URL, and no temporary folder stays under the data root."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-binary.tar.gz"
    spec = cifar.SPECS["cifar10"]
    monkeypatch.setitem(
        cifar.SPECS, "cifar10", cifar.CifarSpec(spec.name, 10, spec.versions, url, spec.md5, 1)
    )
    monkeypatch.setattr(cifar, "DOWNLOAD_TIMEOUT_S", 0.5)
    root = tmp_path / "root"
    try:
        with pytest.raises(OSError, match=f"downloading CIFAR-10 from {re.escape(url)} failed: .*timed out"):
            load_cifar("cifar10", root, fetch=True)
    finally:
        server.close()
    assert list(root.iterdir()) == []


def test_a_download_without_a_network_says_so_in_one_line(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/cifar-10-binary.tar.gz"  # the discard port: nothing listens there
    spec = cifar.SPECS["cifar10"]
    monkeypatch.setitem(
        cifar.SPECS, "cifar10", cifar.CifarSpec(spec.name, 10, spec.versions, url, spec.md5, 1)
    )
    with pytest.raises(OSError, match=f"downloading CIFAR-10 from {re.escape(url)} failed: .*refused"):
        load_cifar("cifar10", tmp_path / "root", fetch=True)
    assert list((tmp_path / "root").iterdir()) == []
