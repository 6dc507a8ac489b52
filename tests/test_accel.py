"""One setting chooses the norms' accelerated forms (normbench.accel): read when a module is built,
recorded in a run's env, and the same numbers as the formulas (each form against its plugin's formula:
tests/test_kernels.py, tests/test_planes.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import QUICK, compose_cfg

import normbench.accel.cpu as fused_kernels
from normbench import build_norm
from normbench.accel import choose_kernels, kernels, kernels_setting, register_kernel, use_kernels
from normbench.experiment.run import execute
from normbench.norms.frn import FilterResponseNorm


def test_a_module_keeps_the_forms_chosen_when_it_was_built():
    with kernels("torch"):
        plain = build_norm("frn", 4)
    with kernels("fused"):
        fused = build_norm("frn", 4)
    assert plain.kernels == () and not plain.compiles
    assert [k.family for k in fused.kernels] == ["fused"] and not fused.compiles
    assert [k.family for k in build_norm("frn", 4).kernels] == ["triton", "fused"]  # auto
    assert build_norm("frn", 4).compiles
    assert choose_kernels(plain, "auto").kernels == build_norm("frn", 4).kernels  # chosen again
    assert kernels_setting() == "auto"


def test_a_subclass_keeps_its_bases_forms_and_unknown_settings_or_families_are_refused():
    assert [k.family for k in build_norm("ws_groupnorm", 8).kernels] == ["triton", "fused"]  # GroupNorm's
    with pytest.raises(
        ValueError, match=r"runtime\.kernels=cuda: must be one of auto, torch, fused, triton, compiled"
    ):
        use_kernels("cuda")
    with pytest.raises(ValueError, match="kernel family 'cuda': allowed are fused, triton, compiled"):
        register_kernel(FilterResponseNorm, "cuda", lambda m, x: True)


def test_a_run_records_its_setting_and_the_fused_forms_give_the_formulas_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(fused_kernels, "FUSED_MIN_ELEMENTS", 0)  # the fused forms on these small tensors
    calls = []
    apply = fused_kernels.GroupAffine.apply
    monkeypatch.setattr(fused_kernels.GroupAffine, "apply", lambda *a: calls.append(1) or apply(*a))
    common = ("task=digits_cnn", "norm=switchnorm", "batch_size=8", "task.model.width=8", *QUICK)
    records = {
        setting: execute(compose_cfg(*common, f"runtime.kernels={setting}"), tmp_path / setting)
        for setting in ("torch", "fused")
    }
    assert calls  # the fused run took SwitchNorm's fused form (GroupAffine)
    assert {s: r["env"]["kernels"] for s, r in records.items()} == {"torch": "torch", "fused": "fused"}
    assert records["torch"]["config_hash"] == records["fused"]["config_hash"]  # not part of the identity
    for key, value in records["torch"]["metrics"].items():
        assert records["fused"]["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_the_setting_is_restored_after_a_block():
    with kernels("fused"), pytest.raises(RuntimeError):
        raise RuntimeError
    assert kernels_setting() == "auto"
    x = torch.randn(4, 3, 5)
    with kernels("torch"):
        torch.testing.assert_close(build_norm("rmsnorm", 3)(x), build_norm("rmsnorm", 3)(x))
