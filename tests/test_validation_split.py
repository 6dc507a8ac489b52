"""The validation split: held out of training, stratified, fixed by its own seed, evaluated like test."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import QUICK, compose_cfg

from normbench.config import ConfigError
from normbench.experiment.identity import run_identity
from normbench.experiment.run import execute
from normbench.tasks import load_dataset


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


@pytest.mark.parametrize("val_size, expected", [(0.1, 135), (300, 300)])
def test_split_is_stratified_disjoint_and_complete(val_size, expected):
    data = load_dataset("digits")
    split = data.split(val_size, seed=3)
    assert len(split.y_val) == expected  # largest remainders: the total is exact
    assert len(split.y_train) + len(split.y_val) == len(data.y_train)
    assert _rows(split.x_train) | _rows(split.x_val) == _rows(data.x_train)
    assert not _rows(split.x_train) & _rows(split.x_val)
    share = len(split.y_val) / len(data.y_train)
    for c in range(data.num_classes):
        n_c = int((data.y_train == c).sum())
        assert (
            int((split.y_val == c).sum()) == round(share * n_c)
            or abs(int((split.y_val == c).sum()) - share * n_c) <= 1
        )
    assert torch.equal(split.x_test, data.x_test)


def test_split_depends_on_its_seed_only():
    data = load_dataset("digits")
    assert torch.equal(data.split(0.1, 0).x_val, data.split(0.1, 0).x_val)
    assert not torch.equal(data.split(0.1, 0).x_val, data.split(0.1, 1).x_val)
    assert data.split(0, 0) is data


def test_runs_with_different_seeds_hold_out_the_same_samples_and_record_validation(tmp_path):
    a = execute(compose_cfg("task=digits_cnn", "seed=0", *QUICK), tmp_path / "a")
    b = execute(compose_cfg("task=digits_cnn", "seed=1", *QUICK), tmp_path / "b")
    for record in (a, b):
        m = record["metrics"]
        for key in (
            "val_error",
            "val_loss",
            "val_error_minibatch",
            "val_error_precise_bn",
            "val_loss_precise_bn",
        ):
            assert key in m and m[key] >= 0
        assert all("val_error" in point for point in record["history"])
    # the same held-out set: error rates on it are multiples of 1 / its size
    n_val = len(load_dataset("digits").split(0.1, 0).y_val)
    for record in (a, b):
        assert (
            abs(record["metrics"]["val_error"] * n_val - round(record["metrics"]["val_error"] * n_val)) < 1e-9
        )


def test_no_split_keeps_the_identity_of_runs_made_before_it():
    identity, _ = run_identity(compose_cfg("data.val_size=0"))
    assert "val_size" not in identity["data"] and "split_seed" not in identity["data"]
    with_split, _ = run_identity(compose_cfg())
    assert with_split["data"]["val_size"] == 0.1


def test_larger_mnist1d_is_generated_offline_with_the_same_proportions():
    data = load_dataset("mnist1d", mnist1d_samples=6000)
    assert (len(data.y_train), len(data.y_test)) == (4800, 1200)


def test_a_larger_mnist1d_test_set_adds_new_draws_and_leaves_training_alone():
    base = load_dataset("mnist1d", mnist1d_samples=1000)
    larger = load_dataset("mnist1d", mnist1d_samples=1000, mnist1d_test_samples=1030)
    assert torch.equal(base.x_train, larger.x_train) and torch.equal(base.y_train, larger.y_train)
    assert torch.equal(base.x_test, larger.x_test[:200]) and len(larger.y_test) == 1030
    extra = larger.x_test[200:].flatten(1)
    # new samples, not copies of training or test ones, on the scale of the training inputs
    assert torch.cdist(extra, torch.cat([base.x_train, base.x_test]).flatten(1)).min() > 0.1
    assert abs(float(extra.std()) - float(base.x_train.std())) < 0.1
    assert set(larger.y_test[200:].tolist()) == set(range(10))


def test_a_validation_set_of_new_draws_leaves_training_and_test_alone(tmp_path):
    base = load_dataset("mnist1d", mnist1d_samples=1000, mnist1d_test_samples=1030)
    drawn = load_dataset("mnist1d", mnist1d_samples=1000, mnist1d_test_samples=1030, mnist1d_val_samples=505)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(base, name), getattr(drawn, name)), name
    assert base.x_val is None and len(drawn.y_val) == len(drawn.x_val) == 505
    seen = torch.cat([base.x_train, base.x_test]).flatten(1)  # the extra test draws included
    assert torch.cdist(drawn.x_val.flatten(1), seen).min() > 0.1  # new samples, from their own seed
    assert set(drawn.y_val.tolist()) == set(range(10))
    record = execute(compose_cfg("data.val_size=0", "data.mnist1d_val_samples=300", *QUICK), tmp_path / "run")
    assert record["status"] == "completed" and 0 <= record["metrics"]["val_error"] <= 1
    assert record["config"]["data"]["mnist1d_val_samples"] == 300
    for override, message in [
        ("data.val_size=0.1", "data.val_size=0.1: the validation set is data.mnist1d_val_samples' own draws"),
        ("task=digits_cnn", "data.mnist1d_val_samples=300: only for MNIST-1D, not digits"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            execute(compose_cfg("data.mnist1d_val_samples=300", override, *QUICK), tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_a_test_set_smaller_than_the_split_is_refused(tmp_path):
    with pytest.raises(ConfigError) as exc:
        execute(compose_cfg("data.mnist1d_test_samples=999", *QUICK), tmp_path)
    assert "data.mnist1d_test_samples=999: must be 0 or at least the 1000 test samples" in str(exc.value)


def test_the_test_set_size_joins_the_identity_only_when_set():
    identity, _ = run_identity(compose_cfg())
    assert "mnist1d_test_samples" not in identity["data"]
    identity, _ = run_identity(compose_cfg("data.mnist1d_test_samples=4000"))
    assert identity["data"]["mnist1d_test_samples"] == 4000


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.val_size=1.5", "data.val_size=1.5: must be a fraction in [0, 1) or a whole number of samples"),
        ("data.val_size=-0.1", "data.val_size=-0.1: must be a fraction in [0, 1)"),
        (
            "data.val_size=5000",
            "data.val_size=5000: must hold out at least two samples and leave training samples",
        ),
        ("data.val_size=0.0001", "data.val_size=0.0001: must hold out at least two samples"),
        # a count of one trained the whole run, then failed on the validation set's batch statistics
        ("data.val_size=1", "data.val_size=1: must hold out at least two samples"),
        ("data.val_size=0.0003", "data.val_size=0.0003: must hold out at least two samples"),  # rounds to 1
        ("data.mnist1d_val_samples=1", "data.mnist1d_val_samples=1: must be 0 or an integer >= 2"),
    ],
)
def test_bad_validation_sizes_are_refused_before_any_work(override, message, tmp_path):
    with pytest.raises(ConfigError) as exc:
        execute(compose_cfg(override, *QUICK), tmp_path)
    assert str(exc.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_generated_mnist1d_is_cached_on_disk_as_the_very_arrays_make_dataset_returns(tmp_path, monkeypatch):
    import mnist1d.data
    import numpy as np

    from normbench.tasks.data import MNIST1D_KEYS, _mnist1d_raw

    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path))
    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed, args.train_split = 300, 7, 0.8
    fresh = mnist1d.data.make_dataset(args)
    first = _mnist1d_raw(300, 7, 0.8)
    assert len(list((tmp_path / "mnist1d").glob("*-300-7-0.8.npz"))) == 1

    def no_generation(_):
        raise AssertionError("generated again although the cache holds it")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = _mnist1d_raw(300, 7, 0.8)
    for key in MNIST1D_KEYS:
        assert np.array_equal(first[key], fresh[key]) and np.array_equal(again[key], fresh[key]), key
        assert again[key].dtype == fresh[key].dtype
    with pytest.raises(AssertionError, match="generated again"):
        _mnist1d_raw(300, 8, 0.8)  # other arguments: another file


def test_a_damaged_or_unwritable_mnist1d_cache_means_generating_it(tmp_path, monkeypatch):
    import numpy as np

    from normbench.tasks.data import _mnist1d_raw

    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path))
    good = _mnist1d_raw(200, 3, 0.8)
    (cached,) = (tmp_path / "mnist1d").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])  # a write cut short
    assert np.array_equal(_mnist1d_raw(200, 3, 0.8)["x"], good["x"])
    assert np.array_equal(np.load(cached)["x"], good["x"])  # replaced by a whole file
    np.savez(cached, x=good["x"], y=good["y"])  # readable, but another writer's arrays: no x_test
    assert np.array_equal(_mnist1d_raw(200, 3, 0.8)["x_test"], good["x_test"])
    assert sorted(np.load(cached).files) == sorted(good)  # replaced by the whole set
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("NORMBENCH_DATA", str(blocked))
    assert np.array_equal(_mnist1d_raw(200, 3, 0.8)["y_test"], good["y_test"])


def test_the_digits_split_is_cached_too_and_gives_the_same_dataset(tmp_path, monkeypatch):
    from normbench.tasks import data

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "file"))  # no cache: split afresh
    data._digits.cache_clear()
    try:
        before = data._digits()
        monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path))
        data._digits.cache_clear()
        written = data._digits()
        assert len(list((tmp_path / "digits").glob("scikit-learn-*.npz"))) == 1
        monkeypatch.setattr(data, "_digits_split", lambda: pytest.fail("split again although cached"))
        data._digits.cache_clear()
        read = data._digits()
    finally:
        data._digits.cache_clear()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(written, name), getattr(before, name)), name
        assert torch.equal(getattr(read, name), getattr(before, name)), name
