"""runtime.device / precision / channels_last / compile, checked without a GPU (the CUDA side runs in
scripts/gpu_checks.sh)."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from helpers import QUICK, ROOT, compose_cfg, normbench_run_here

from normbench.config import ConfigError, check_values
from normbench.experiment.identity import LATER_KEYS, run_identity
from normbench.experiment.run import execute
from normbench.norms import build_norm
from normbench.results import config_hash, identity_config
from normbench.runtime import Runtime, device_problem, resolve_device
from normbench.schema import NON_IDENTITY_KEYS
from normbench.tasks import load_dataset
from normbench.tasks.registry import task_for
from normbench.train import fit


def test_device_names_are_checked_against_this_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_problem("auto") is None and resolve_device("auto") == torch.device("cpu")
    assert device_problem("cpu") is None
    assert (
        device_problem("cuda")
        == "runtime.device=cuda: this machine has no CUDA device (allowed here: auto, cpu)"
    )
    assert device_problem("gpu") == "runtime.device=gpu: must be one of auto, cpu, cuda or cuda:N"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_problem("cuda:1") is None
    assert (
        device_problem("cuda:2")
        == "runtime.device=cuda:2: this machine has 2 CUDA device(s) (cuda:0..cuda:1)"
    )


def test_a_device_this_machine_lacks_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys):
    status, stderr = normbench_run_here(
        "runtime.device=cuda:99", *QUICK, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert status == 2
    assert stderr.strip().startswith("normbench-run: error: runtime.device=cuda:99: this machine has")
    assert len(stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["runtime.device=tpu"], "runtime.device=tpu: must be one of auto, cpu, cuda or cuda:N"),
        (
            ["runtime.channels_last=true"],
            "runtime.channels_last=true: only for tasks with 2-D inputs (C, H, W); task=mnist1d_mlp has",
        ),
    ],
)
def test_bad_runtime_settings_are_refused_before_any_work(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as exc:
        execute(compose_cfg(*overrides, *QUICK), tmp_path)
    assert str(exc.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_only_a_precision_other_than_fp32_joins_the_identity():
    plain = compose_cfg(*QUICK)
    identity, digest = run_identity(plain)
    # fp32, the device, channels_last and compile leave the hash of every earlier record as it was
    assert "runtime" not in identity and digest == config_hash(
        identity_config(plain, NON_IDENTITY_KEYS, LATER_KEYS)
    )
    for where in ("runtime.device=cpu", "runtime.channels_last=true", "runtime.compile=true"):
        assert run_identity(compose_cfg(where, *QUICK))[1] == digest
    bf16, bf16_digest = run_identity(compose_cfg("runtime.precision=bf16", *QUICK))
    assert bf16["runtime"] == {"precision": "bf16"} and bf16_digest != digest
    assert run_identity(compose_cfg("runtime.precision=fp16", *QUICK))[1] not in (digest, bf16_digest)


def test_bf16_channels_last_run_records_where_and_how_it_ran(tmp_path):
    cfg = compose_cfg("task=digits_cnn", "runtime.precision=bf16", "runtime.channels_last=true", *QUICK)
    record = execute(cfg, tmp_path)
    assert record["status"] == "completed", record.get("error")
    env = record["env"]
    assert (env["device"], env["precision"], env["channels_last"], env["compile"]) == (
        "cpu",
        "bf16",
        True,
        False,
    )
    assert record["config"]["runtime"] == {"precision": "bf16"}
    assert 0 <= record["metrics"]["test_error"] <= 1


def test_fp16_trains_through_the_gradient_scaler(tmp_path):
    record = execute(compose_cfg("runtime.precision=fp16", *QUICK), tmp_path)
    assert record["status"] == "completed", record.get("error")
    assert Runtime(precision="fp16").grad_scaler() is not None and Runtime().grad_scaler() is None


def test_channels_last_gives_the_same_training_as_contiguous(tmp_path):
    base = execute(compose_cfg("task=digits_cnn", *QUICK), tmp_path / "a")
    last = execute(compose_cfg("task=digits_cnn", "runtime.channels_last=true", *QUICK), tmp_path / "b")
    assert last["history"][-1]["train_loss"] == pytest.approx(base["history"][-1]["train_loss"], rel=1e-4)
    assert last["metrics"]["test_error"] == pytest.approx(base["metrics"]["test_error"], abs=2e-3)


def _diverging_fit(check_interval: int):
    """A linear model whose lr jumps at step 20 so that its loss overflows a step later."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    gen = torch.Generator().manual_seed(0)
    batches = iter(lambda: torch.randint(0, len(data.x_train), (16,), generator=gen), None)
    opt = torch.optim.SGD(model.parameters(), lr=1e38)
    return fit(
        model,
        data,
        batches,
        opt,
        lambda t: 1e-3 if t < 20 else 1e38,
        200,
        50,
        100,
        runtime=Runtime(check_interval=check_interval),
    )


def test_divergence_found_in_a_check_window_is_dated_to_its_first_step():
    every_step = _diverging_fit(1)
    windowed = _diverging_fit(64)
    assert every_step.status == windowed.status == "diverged"
    assert windowed.diverged_at_step == every_step.diverged_at_step
    assert every_step.diverged_at_step == 21  # the first loss computed with the huge step's weights


def test_instancenorm_cuda_kernel_choice_is_groupnorm_with_one_channel_per_group():
    norm = build_norm("instancenorm", 6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(
        torch.nn.functional.group_norm(x, 6, norm.weight.double(), norm.bias.double(), norm.eps),
        norm.double()(x),
    )


def test_gpu_checks_script_runs_the_named_steps_only(tmp_path):
    """scripts/gpu_checks.sh with its programs faked (no GPU here): the steps named run, the others
    write nothing, and an unknown step is refused before anything is made."""
    bin_dir, calls, out = tmp_path / "bin", tmp_path / "calls.txt", tmp_path / "out"
    bin_dir.mkdir()
    for program in ("python3", "nvidia-smi"):
        fake = bin_dir / program
        fake.write_text(f'#!/bin/sh\necho "{program} $*" >> "{calls}"\n')
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = ["bash", "scripts/gpu_checks.sh", str(out)]
    proc = subprocess.run([*script, "check_cuda", "e2e"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    launched = [line.split()[1] for line in calls.read_text().splitlines() if line.startswith("python3 ")]
    assert [w for w in launched if w.startswith("scripts/")] == [
        "scripts/check_cuda.py",
        "scripts/check_diagnose_cuda.py",
    ]
    assert (
        calls.read_text().count("python3 -m normbench ") == 5
    )  # the five normbench-run jobs of the e2e step
    assert sorted(p.name for p in out.iterdir()) == ["e2e_cuda.md", "gpu_log.txt"]
    assert "== check_cuda: exit 0" in (out / "gpu_log.txt").read_text()
    alone = tmp_path / "alone"
    proc = subprocess.run(
        [*script[:2], str(alone), "convert"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in alone.iterdir()] == ["gpu_log.txt"]  # no e2e table without the e2e step

    fresh = tmp_path / "fresh"
    refused = subprocess.run(
        [*script[:2], str(fresh), "bench_norms", "cifar"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "gpu_checks.sh: unknown step 'cifar' "
        "(steps: population check_cuda e2e bench_norms profile_norm bench_train convert)"
    )
    assert not fresh.exists() and "bench_norms" not in calls.read_text()
    refused = subprocess.run(
        [*script[:2], str(fresh)],
        cwd=ROOT,
        env={**env, "GPU_CHECKS_BUDGET": "6m"},
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and not fresh.exists()
    assert (
        refused.stderr.strip() == "gpu_checks.sh: GPU_CHECKS_BUDGET=6m is not a whole number of seconds > 0"
    )


def test_gpu_checks_script_keeps_within_its_budget_and_names_what_it_skipped(tmp_path):
    """Every faked step takes 30 s, so with a budget of 14 s the first command is stopped when the
    budget is spent (its limit cut to what was left), every later step is skipped, and the log ends
    with the call that runs the skipped groups."""
    import time

    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    for program, body in (("python3", '[ "$1" = -c ] || sleep 30'), ("nvidia-smi", "echo faked")):
        fake = bin_dir / program
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GPU_CHECKS_BUDGET": "14"}
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", "scripts/gpu_checks.sh", str(out), "population", "convert"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 30  # the first step's 30 s cut to the budget, the others skipped
    log = (out / "gpu_log.txt").read_text()
    ran = [line for line in log.splitlines() if line.startswith("== ") and "exit" in line]
    assert ran == ["== bench_population: exit 124"], log
    skipped = [line.split(":")[0][3:] for line in log.splitlines() if line.endswith("budget is spent")]
    assert skipped == [
        "profile_population",
        "bench_single",
        "profile_single",
        "step_norms",
        "check_capture",
        "convert_torchvision",
    ]
    expected = (
        "not run within the 14 s budget: population convert; "
        f"run them with: bash scripts/gpu_checks.sh {out} population convert"
    )
    assert log.splitlines()[-2] == expected and proc.stdout.strip() == expected


def test_the_gpu_study_script_stops_at_its_limit_and_reports_what_finished(tmp_path):
    """scripts/study_gpu.sh on this CPU (its device and a tiny grid given by its test knobs): it stops
    the whole process group at its time limit (or finishes first), packs every finished run and writes
    the report of them."""
    import contextlib
    import json
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "large"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "STUDY_GPU_DEVICE": "cpu",
        "STUDY_GPU_LIMIT": "30",
        "NORMBENCH_JOBS": "1",
        "STUDY_GPU_OVERRIDES": "seed=0,1,2 batch_size=32 train.budget=steps train.steps=10 "
        "train.history_points=2 eval.precise_bn_samples=64 eval.minibatch_samples=64",
    }
    proc = subprocess.run(
        ["bash", "scripts/study_gpu.sh", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    log = (out / "gpu_log.txt").read_text()
    assert log.startswith("study_gpu.sh on no GPU") and "Broken pipe" not in log  # the summary got out
    stopped = "study_gpu.sh: stopped at the 30 s limit; rerun to resume" in log
    assert proc.returncode == (3 if stopped else 0), (proc.returncode, log[-2000:])
    records = [json.loads(line)["record"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert records and {r["env"]["device"] for r in records} == {"cpu"}
    assert {r["config"]["train"]["steps"] for r in records} == {10}
    assert "## How the learning rates were chosen" in (out / "report.md").read_text()
    time.sleep(1)  # nothing the study started is left running in its folder
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            left += [pid] if os.readlink(f"/proc/{pid}/cwd").startswith(str(out)) else []
    assert not left


@pytest.mark.parametrize(
    "device, where", [("auto", "runtime.device=auto, here cpu"), ("cpu", "runtime.device=cpu")]
)
def test_a_captured_step_on_a_machine_without_cuda_is_one_line_before_any_work(
    tmp_path, device, where, monkeypatch, capsys
):
    args = ("runtime.cuda_graph=true", f"runtime.device={device}", "hydra.run.dir=out")
    status, stderr = normbench_run_here(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and not (tmp_path / "out").exists()
    assert stderr.strip() == f"normbench-run: error: runtime.cuda_graph=true: needs a CUDA device ({where})"


def _gpu_checks_calls(tmp_path) -> list[list[str]]:
    """The arguments of every ``python3`` call that ``bash scripts/gpu_checks.sh`` makes (python3 faked:
    each call is recorded and nothing runs)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    record = f'#!/bin/sh\nfor a in "$@"; do printf \'%s\\037\' "$a"; done >> "{calls}"; echo >> "{calls}"\n'
    for program in ("python3", "nvidia-smi"):
        (bin_dir / program).write_text(record)
        (bin_dir / program).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "scripts/gpu_checks.sh", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return [line.split("\037")[:-1] for line in calls.read_text().splitlines()]


def test_every_call_of_the_gpu_checks_is_accepted_here(tmp_path, monkeypatch):
    """A flag, choice or override refused on the GPU machine would cost a loan its step. Every
    ``scripts/*.py`` call that gpu_checks.sh makes is parsed by the script's own argument parser
    (stopped right after parsing: nothing runs), and every ``normbench-run`` job's configuration passes
    the checks a run makes before any work (a CUDA device faked: the checks need none)."""
    import argparse
    import runpy

    class Parsed(Exception):
        pass

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse_args(self, args, namespace))

    calls = _gpu_checks_calls(tmp_path)
    scripts = [argv for argv in calls if argv[0].startswith("scripts/")]
    runs = [argv[2:] for argv in calls if argv[:2] == ["-m", "normbench"]]
    assert {argv[0] for argv in scripts} >= {
        "scripts/bench_population.py",
        "scripts/profile_population.py",
        "scripts/check_capture.py",
        "scripts/bench_norms.py",
        "scripts/check_cuda.py",
    }
    assert len(runs) == 5
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # --device cuda is checked when parsed
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for argv in scripts:
        monkeypatch.setattr("sys.argv", argv)
        with pytest.raises(Parsed) as parsed:
            runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
        assert getattr(parsed.value.args[0], "device", "cuda") == "cuda", argv
    for overrides in runs:
        cfg = compose_cfg(*(o for o in overrides if not o.startswith("hydra.")))
        check_values(cfg)
        task_for(cfg).check(cfg)
        assert cfg.runtime.device == "cuda", overrides


@pytest.mark.parametrize("compiles", [False, True])
def test_deterministic_kernels_without_the_compilers_import_where_nothing_compiles(compiles):
    """torch.use_deterministic_algorithms imports inductor's config (and torch._dynamo with it) to set
    inductor's flag: 1.2 s of a population's process. A CPU run that never compiles sets the kernels'
    switch alone; one that may compile sets inductor's flag too."""
    import sys

    last = (
        "sys.modules['torch._inductor.config'].deterministic"
        if compiles
        else "'torch._dynamo' in sys.modules"
    )
    probe = "\n".join(
        [
            "import sys, torch",
            "from normbench.runtime import use_deterministic_kernels",
            f"use_deterministic_kernels(torch.device('cpu'), compiles={compiles})",
            "print(torch.are_deterministic_algorithms_enabled(), "
            f"torch.is_deterministic_algorithms_warn_only_enabled(), {last})",
        ]
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "True" if compiles else "False"]
