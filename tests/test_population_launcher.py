"""``hydra/launcher=population``: which runs form a population, real multiruns in a subprocess
(records equal to the basic launcher's, resume, kill -9), and runs that train on their own."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import QUICK_EVAL, compose_cfg, normbench_run, normbench_run_here, registered_plugin
from test_population_train import assert_same_record

from normbench.experiment.run import execute
from normbench.norms.layernorm import LayerNorm
from normbench.population.grouping import MEMBER_KEYS, group_key, partition, spread, why_not_population
from normbench.population.launcher import Member, train_group
from normbench.results import load_run, run_lock

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
STEPS = ("train.budget=steps", "train.steps=30", "train.history_points=2", *QUICK_EVAL)


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: load_run(p) for p in sorted(sweep_dir.glob("*/result.json"))}


# --- grouping -----------------------------------------------------------------------------------


def test_runs_that_differ_only_in_member_keys_share_a_population():
    cfgs = [
        compose_cfg("seed=0"),
        compose_cfg("seed=1", "optim.lr=0.2"),
        compose_cfg("batch_size=8"),  # another shape of batch
        compose_cfg("seed=2", "optim.momentum=0.5", "optim.weight_decay=0", "task.model.init_scale=2"),
        compose_cfg("norm=layernorm"),  # another model
        compose_cfg("optim.warmup_steps=10"),  # another schedule shape
        compose_cfg("train.max_train_error_diverged=0.5", "batch_size=8"),
    ]
    assert partition(cfgs, max_members=64) == [[0, 1, 3], [2, 6], [4], [5]]
    assert partition(cfgs, max_members=2) == [[0, 1], [2, 6], [3], [4], [5]]
    assert group_key(cfgs[0]) == group_key(cfgs[1]) != group_key(cfgs[2])
    assert group_key(compose_cfg("runtime.force=true")) == group_key(cfgs[0])  # rerun switch only


def test_every_member_key_may_vary_inside_a_group():
    values = {"seed": 7, "optim.lr": 0.3, "optim.momentum": 0.1, "optim.weight_decay": 0.01}
    values |= {"task.model.init_scale": 0.5, "train.max_train_error_diverged": 0.5}
    assert set(values) == set(MEMBER_KEYS)
    for key, value in values.items():
        assert group_key(compose_cfg(f"{key}={value}")) == group_key(compose_cfg()), key


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (
            ("task=gan_digits", "train.checkpoint_every=5"),
            "train.checkpoint_every=5: GAN populations do not checkpoint yet",
        ),
        (("runtime.precision=fp16",), "runtime.precision=fp16: one gradient scaler"),
        (("runtime.compile=true",), "runtime.compile=true: not supported inside populations"),
    ],
)
def test_runs_without_a_population_path_train_alone(overrides, reason):
    cfg = compose_cfg(*overrides)
    assert why_not_population(cfg).startswith(reason)
    assert partition([cfg, compose_cfg(*overrides, "seed=1")], 64) == [[0], [1]]


@pytest.mark.parametrize(
    "groups, workers, spread_out",
    [
        ([[0, 1, 2, 3, 4]], 2, [[0, 1, 2], [3, 4]]),  # one population alone would leave a worker idle
        ([[0, 1], [2, 3, 4], [5]], 2, [[2, 3], [0], [1], [4], [5]]),  # three on two: each halved
        ([[0, 1], [2, 3, 4]], 2, [[2, 3, 4], [0, 1]]),  # as many as the workers: the largest first
        ([[0], [1, 2], [3], [4], [5]], 2, [[1, 2], [0], [3], [4], [5]]),  # five of them: enough
        ([[0, 1, 2]], 1, [[0, 1, 2]]),  # one worker: nothing to spread
    ],
)
def test_few_populations_are_halved_so_that_no_worker_idles(groups, workers, spread_out):
    assert spread(groups, workers) == spread_out
    assert sorted(i for g in spread_out for i in g) == sorted(i for g in groups for i in g)


def test_max_members_below_one_is_refused():
    with pytest.raises(ValueError, match=re.escape("hydra.launcher.max_members=0: must be an integer >= 1")):
        partition([compose_cfg()], 0)


# --- plugins that are not population-capable ----------------------------------------------------


class SerialLayerNorm(LayerNorm):
    """LayerNorm declared not population-capable (as a plugin with a custom Function might be)."""


@pytest.fixture
def serial_plugin():
    with registered_plugin("seriallayernorm", SerialLayerNorm, population=False) as name:
        yield name


def test_a_plugin_that_is_not_population_capable_trains_member_by_member_with_a_notice(
    tmp_path, serial_plugin, caplog
):
    cfgs = []
    for seed in (0, 1):
        cfg = compose_cfg(*STEPS, f"seed={seed}")
        cfg.norm = {"name": serial_plugin}
        cfgs.append(cfg)
    assert partition(cfgs, 64) == [[0], [1]]
    members = [Member(cfg, tmp_path / str(i), str(tmp_path / f"{i}.log")) for i, cfg in enumerate(cfgs)]
    with caplog.at_level(logging.WARNING):
        for m in members:
            train_group([m])
    notice = "trained on its own, not in a population: norm=seriallayernorm is not population-capable"
    assert sum(notice in r.getMessage() for r in caplog.records) == 2
    for i, cfg in enumerate(cfgs):
        record = load_run(tmp_path / str(i))
        reference = execute(cfg, tmp_path / f"ref{i}")
        assert record["status"] == "completed" and record["metrics"] == reference["metrics"]
        assert "population" not in record["env"]
        assert notice in Path(members[i].log_file).read_text()


def test_a_group_that_fails_records_failed_for_each_member_and_leaves_visits(tmp_path, monkeypatch):
    import normbench.population.train as population

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(population, "fit_population", broken)
    members = [
        Member(compose_cfg(*STEPS, f"seed={s}"), tmp_path / str(s), str(tmp_path / f"{s}.log"))
        for s in (0, 1)
    ]
    train_group(members)
    for m in members:
        assert load_run(m.out_dir)["error"] == "RuntimeError: kernel exploded"
        visit = (m.out_dir / "visit.json").read_text()
        assert '"outcome": "failed"' in visit and "kernel exploded" in visit


# --- real multiruns -------------------------------------------------------------------------------

GRID = ("norm=batchnorm,layernorm", "batch_size=16", "seed=0,1", "optim.lr=0.1")


def test_a_population_sweep_writes_the_records_of_the_basic_launcher(tmp_path):
    pop = normbench_run("-m", *GRID, *STEPS, "sweep.root=pop", "hydra/launcher=population", cwd=tmp_path)
    assert pop.returncode == 0, pop.stderr
    assert "4 runs: 4 completed, 0 diverged, 0 failed, 0 skipped" in pop.stdout
    assert "population launcher: 4 runs, 4 in 2 population(s) [2, 2], 0 alone" in pop.stdout + pop.stderr
    basic = normbench_run("-m", *GRID, *STEPS, "sweep.root=basic", "hydra/launcher=basic", cwd=tmp_path)
    assert basic.returncode == 0, basic.stderr
    ours, theirs = records(tmp_path / "pop" / "default"), records(tmp_path / "basic" / "default")
    assert set(ours) == set(theirs) and len(ours) == 4  # the same config-hash folders
    for folder, record in ours.items():
        assert_same_record(record, theirs[folder], population=2)
        assert (tmp_path / "pop" / "default" / folder / ".hydra" / "overrides.yaml").is_file()
        assert (
            "population of 2 members" in (tmp_path / "pop" / "default" / folder / "normbench.log").read_text()
        )
    again = normbench_run("-m", *GRID, *STEPS, "sweep.root=pop", "hydra/launcher=population", cwd=tmp_path)
    assert "4 runs: 0 completed, 0 diverged, 0 failed, 4 skipped" in again.stdout
    after = records(tmp_path / "pop" / "default")
    assert all(after[f]["finished_at"] == r["finished_at"] for f, r in ours.items())


def test_a_member_its_task_refuses_is_a_config_error_and_the_others_train(tmp_path):
    """The task's own checks (Task.check) run on each member before its group forms, as a run alone
    runs them before training: here an MLP given a kernel size."""
    proc = normbench_run("-m", "task.model.kernel_size=3,5", *STEPS, "sweep.root=sw", "hydra/launcher=population", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "2 runs: 1 completed, 0 diverged, 0 failed, 0 skipped, 1 config error" in proc.stdout
    assert re.search(
        r"configuration error \(sw/default/\w+\): task\.model\.kernel_size=5: arch=mlp does not use it",
        proc.stdout,
    )
    (record,) = records(tmp_path / "sw" / "default").values()
    assert record["status"] == "completed" and record["config"]["task"]["model"]["kernel_size"] == 3


def test_parallel_groups_a_grown_grid_and_a_folder_held_elsewhere(tmp_path):
    args = ("-m", "norm=groupnorm,identity", "seed=0,1", *STEPS, "sweep.root=sw", "hydra/launcher=population")
    first = normbench_run(*args, "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "4 runs: 4 completed" in first.stdout
    old = records(tmp_path / "sw" / "default")
    for folder in old:  # the workers log into each member's own log file
        log = (tmp_path / "sw" / "default" / folder / "normbench.log").read_text()
        assert "population of 2 members" in log and "completed: " in log, log
    held = compose_cfg("norm=groupnorm", "seed=2", *STEPS)
    from normbench.experiment.identity import run_identity

    held_dir = tmp_path / "sw" / "default" / run_identity(held)[1]
    with run_lock(held_dir) as acquired:  # another live process trains this one
        assert acquired
        grown = normbench_run(
            *args[:2], "seed=0,1,2,3", *args[3:], "hydra.launcher.max_members=2", cwd=tmp_path
        )
    assert (
        "8 runs: 3 completed, 0 diverged, 0 failed, 4 skipped, 0 config error, 1 running elsewhere"
        in grown.stdout
    )
    new = records(tmp_path / "sw" / "default")
    assert len(new) == 7 and held_dir.name not in new
    assert all(new[f]["finished_at"] == r["finished_at"] for f, r in old.items())


@pytest.mark.parametrize(
    "option, message",
    [
        ("max_members=0", "hydra.launcher.max_members=0: must be an integer >= 1"),
        ("form=fast", "hydra.launcher.form=fast: allowed are auto, wide, vmap"),
        ("cache_mb=-1", "hydra.launcher.cache_mb=-1.0: must be a number >= 0 (0: no limit)"),
    ],
)
def test_bad_launcher_options_are_one_line_errors(tmp_path, monkeypatch, capsys, option, message):
    args = ("-m", "seed=0,1", *STEPS, "hydra/launcher=population", f"hydra.launcher.{option}")
    status, stderr = normbench_run_here(*args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and stderr == f"normbench-run: error: {message}\n"
    assert not list(tmp_path.glob("multirun/**/result.json"))


def test_kill_9_of_a_population_process_loses_only_its_unfinished_group(tmp_path):
    # two groups: 20 steps (finishes first), then 600 steps (killed while it trains)
    args = [sys.executable, "-m", "normbench", "-m", "train.budget=steps", "train.steps=20,600", "seed=0,1"]
    args += ["train.history_points=1", "sweep.root=sw", "hydra/launcher=population"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    sweep_dir = tmp_path / "sw" / "default"
    deadline = time.time() + 240
    while len(list(sweep_dir.glob("*/result.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = records(sweep_dir)
    assert sorted(r["config"]["train"]["steps"] for r in first.values()) == [20, 20]
    rerun = normbench_run(*args[3:], cwd=tmp_path, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "4 runs: 2 completed, 0 diverged, 0 failed, 2 skipped" in rerun.stdout
    second = records(sweep_dir)
    assert sorted(r["config"]["train"]["steps"] for r in second.values()) == [20, 20, 600, 600]
    assert all(second[f]["finished_at"] == r["finished_at"] for f, r in first.items())
    assert not list(sweep_dir.glob("*/.*.tmp"))


def _benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python scripts/SCRIPT.py ARGS`` in a subprocess, as a user runs it."""
    from helpers import ROOT

    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_population_benchmark_writes_one_row_per_setting(tmp_path):

    out = tmp_path / "population.md"
    args = ["--tasks", "mnist1d_mlp", "--batch-sizes", "2", "4", "--members", "2", "--steps", "2"]
    proc = _benchmark("bench_population", *args, "--rounds", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| mnist1d_mlp |")]
    assert [r.split("|")[2:5] for r in rows] == [[" batchnorm ", " 2 ", " 2 "], [" batchnorm ", " 4 ", " 2 "]]
    header = next(line for line in out.read_text().splitlines() if line.startswith("| task |"))
    assert "| wide | wide speed-up | wide loop | vmap | vmap speed-up | vmap loop |" in header
    assert all(len(r.split("|")) == len(header.split("|")) for r in rows)
    assert "Reproduce: `python scripts/bench_population.py --tasks mnist1d_mlp" in out.read_text()


def test_the_hand_written_reference_has_a_column_where_it_exists_and_dashes_elsewhere(tmp_path):

    out = tmp_path / "population.md"
    args = ["--tasks", "mnist1d_mlp", "mnist1d_cnn", "--batch-sizes", "2", "--members", "2", "--steps", "3"]
    args += ["--rounds", "1", "--forms", "wide", "minimal", "--cache-mb", "1", "--out", str(out)]
    proc = _benchmark("bench_population", *args)
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| task |")).split("|")
    # the reference is not trained as cache-sized populations: no minimal/sized column
    assert [h.strip() for h in header if h.strip().startswith("minimal")] == [
        "minimal",
        "minimal speed-up",
        "minimal loop",
    ]
    rows = {line.split("|")[1].strip(): line.split("|") for line in lines if line.startswith("| mnist1d_")}
    cells = {task: row[header.index(" minimal ")].strip() for task, row in rows.items()}
    assert cells["mnist1d_cnn"] == "–"  # written by hand for the MLP only
    assert float(cells["mnist1d_mlp"].replace(",", "")) > 0


def test_the_hand_written_reference_is_k_separate_mlps(monkeypatch):
    """scripts/minimal_wide.py's wide MLP computes, for each member, what an nn.Sequential of the same
    Linear, BatchNorm1d and ReLU layers computes on that member's batch (training mode)."""
    from helpers import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from minimal_wide import HandWideMLP

    k, dims = 3, [5, 6, 6, 4]
    wide = HandWideMLP(k, dims, torch.device("cpu"), torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for b in wide.biases:
            b.normal_()
        for norm in wide.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    x = torch.randn(k, 7, 5, dtype=torch.float64)
    out = wide(x)
    for member in range(k):
        layers = []
        for i, (w, b) in enumerate(zip(wide.weights, wide.biases, strict=True)):
            linear = torch.nn.Linear(*w.shape[1:]).double()
            linear.weight.data, linear.bias.data = w[member].T.detach(), b[member, 0].detach()
            layers.append(linear)
            if i < len(wide.norms):
                norm = torch.nn.BatchNorm1d(dims[i + 1]).double()
                width = slice(member * dims[i + 1], (member + 1) * dims[i + 1])
                norm.weight.data, norm.bias.data = (
                    wide.norms[i].weight[width].detach(),
                    wide.norms[i].bias[width].detach(),
                )
                layers += [norm, torch.nn.ReLU()]
        torch.testing.assert_close(
            out[member], torch.nn.Sequential(*layers)(x[member]), rtol=1e-12, atol=1e-12
        )


def test_the_population_profile_names_each_settings_step_time_and_operators(tmp_path):
    """scripts/profile_population.py on the CPU: a section per setting whose model-steps/s is K over its
    eager step time, a table of the operators' times, and one step's operators and bytes: the wide
    Linear's forward and the optimizer's update as their formulas give them."""

    out = tmp_path / "profile.md"
    args = ["--device", "cpu", "--tasks", "mnist1d_mlp", "--batch-sizes", "2", "--members", "3"]
    args += ["--steps", "10"]
    proc = _benchmark("profile_population", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == ["## mnist1d_mlp, batch 2"]
    summary = next(line for line in text.splitlines() if line.startswith("eager "))
    if "not resolved" in summary:  # 10 steps' time within the noise of a loaded machine: said so
        assert (
            summary.startswith("eager not resolved (raise --steps); busy ") and "model-steps/s" not in summary
        )
    else:  # the rate is K over the step's time, printed to 3 decimals
        found = re.search(r"eager ([\d.]+) ms/step; .*; ([\d,]+) model-steps/s", summary).groups()
        ms, rate = (float(v.replace(",", "")) for v in found)
        assert 3e3 / (ms + 5e-4) - 1 <= rate <= 3e3 / (ms - 5e-4) + 1
    # the time table: at most 12 operators, most time first (which ones is a timing on this machine,
    # where a loaded CPU can push even the batched matmuls out of the difference of two profiles)
    timed = [row.split("|") for row in text.split("Per step: ")[0].splitlines() if row.startswith("| `")]
    times = [float(row[2].replace(",", "")) for row in timed]
    assert 0 < len(times) <= 12 and times == sorted(times, reverse=True) and min(times) > 0
    # counted, not timed: one step's operators and bytes, the difference of two whole counts
    found = re.search(r"Per step: (\d+) operators dispatched, reading and writing ([\d.,]+) MB", text)
    operators, megabytes = int(found.group(1)), float(found.group(2).replace(",", ""))
    assert operators > 0
    moved = {
        row.split("|")[1].strip(" `"): float(row.split("|")[2])
        for row in text.split("Per step: ")[1].splitlines()
        if row.startswith("| `")
    }
    # the wide Linear's forward reads each member's input, weights and bias and writes its output
    in_out = (40 * 256 + 256 * 256 * 2 + 256 * 10) + (256 * 3 + 10) + 2 * (40 + 3 * 256 + 256 * 3 + 10)
    assert moved["aten::baddbmm"] == round(3 * in_out * 4 / 1e6, 2)
    # the optimizer alone passes over the parameters 11 times
    params = 40 * 256 + 256 * 256 * 2 + 256 * 10 + 256 * 3 + 10 + 2 * 3 * 256
    assert megabytes > 11 * 3 * params * 4 / 1e6
    assert list(moved.values()) == sorted(moved.values(), reverse=True)
    assert "Reproduce: `python scripts/profile_population.py --tasks mnist1d_mlp" in text


def test_the_population_host_benchmark_writes_a_row_per_setting_with_its_ratio(tmp_path):

    out = tmp_path / "host.md"
    args = ["--members", "2", "3", "--batch-sizes", "2", "--steps", "5", "--rounds", "1", "--out", str(out)]
    proc = _benchmark("bench_population_host", *args)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if re.match(r"\| \d", line)]
    assert [(k.strip(), b.strip()) for k, b, *_ in rows] == [("2", "2"), ("3", "2")]
    for k, _, stepwise, whole, ratio, stepwise_cap, whole_cap in rows:
        # the table's µs are rounded to 0.1: each derived column within what that rounding allows
        (lo1, hi1), (lo2, hi2) = (
            (v - 0.05, v + 0.05) for v in (float(x.replace(",", "")) for x in (stepwise, whole))
        )
        assert lo1 / hi2 - 0.5 <= float(ratio.strip().rstrip("x")) <= hi1 / lo2 + 0.5
        for cap, lo, hi in ((stepwise_cap, lo1, hi1), (whole_cap, lo2, hi2)):
            assert int(k) * 1e6 / hi - 1 <= int(cap.replace(",", "")) <= int(k) * 1e6 / max(lo, 1e-9) + 1
