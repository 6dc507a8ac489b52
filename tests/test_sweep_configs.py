"""The population launcher's composition of a multirun's jobs: each job's config is the one Hydra's
``load_sweep_config`` gives, ``hydra`` node included, while group choices are composed once."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from normbench.cli import CONF_DIR
from normbench.population.sweep_configs import SweepComposer

MASTER = [
    "hydra/launcher=population",
    "hydra.launcher.n_jobs=2",
    "experiment=curve_cnn",
    "norm=batchnorm,groupnorm",
    "batch_size=2,32",
    "seed=0,1",
]
JOBS = [
    ["experiment=curve_cnn", "norm=batchnorm", "batch_size=2", "seed=0"],
    ["experiment=curve_cnn", "norm=batchnorm", "batch_size=2", "seed=1", "optim.lr=0.05"],
    ["experiment=curve_cnn", "norm=groupnorm", "batch_size=32", "seed=0", "norm.num_groups=4"],
    ["experiment=curve_cnn", "norm=batchnorm", "batch_size=32", "seed=1", "norm.positions=40"],
    ["experiment=curve_cnn", "batch_size=4", "norm=batchnorm", "task.model.downsample=[2]", "seed=0"],
    ["experiment=curve_mlp", "norm=layernorm", "seed=3", "++train.extra_note=x", "data.val_size=0"],
    ["experiment=curve_cnn", "norm=batchnorm", "seed=2", "optim={lr: 0.3}", "sweep.name=other"],
    ["experiment=curve_cnn", "norm=groupnorm", "seed=2", "hydra.job.chdir=false"],
]


@pytest.fixture(scope="module")
def loader_and_master():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=MASTER, run_mode=RunMode.MULTIRUN)
        yield loader, master


def _tree(cfg):
    return OmegaConf.to_container(cfg, resolve=False), OmegaConf.is_struct(cfg)


def test_each_job_composes_to_hydras_own_config(loader_and_master):
    loader, master = loader_and_master
    composer = SweepComposer(loader, master)
    for job in JOBS * 2:  # the second time from the composed bases
        expected = loader.load_sweep_config(master, job)
        got = composer.compose(job)
        assert _tree(got) == _tree(expected), job
        plain = {k: v for k, v in got.items() if k != "hydra"}
        assert OmegaConf.to_container(OmegaConf.create(plain), resolve=True) == OmegaConf.to_container(
            OmegaConf.create({k: v for k, v in expected.items() if k != "hydra"}), resolve=True
        )
    # one composition per distinct set of group choices (and hydra overrides), not per job
    assert len(composer.bases) == 4


def test_jobs_do_not_share_state(loader_and_master):
    loader, master = loader_and_master
    composer = SweepComposer(loader, master)
    a = composer.compose(JOBS[0])
    b = composer.compose(JOBS[1])
    a.seed = 99
    assert b.seed == 1 and composer.compose(JOBS[0]).seed == 0 and b.optim.lr == 0.05


def test_a_bad_value_override_fails_as_in_hydra(loader_and_master):
    from hydra.errors import ConfigCompositionException

    loader, master = loader_and_master
    job = ["experiment=curve_cnn", "norm=batchnorm", "no_such_key=1"]
    with pytest.raises(ConfigCompositionException) as hydras:
        loader.load_sweep_config(master, job)
    with pytest.raises(ConfigCompositionException) as ours:
        SweepComposer(loader, master).compose(job)
    assert str(ours.value) == str(hydras.value)


def test_the_composition_benchmark_writes_its_table_and_the_command_that_made_it(tmp_path):
    import re
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "compose.md"
    subprocess.run(
        [sys.executable, "scripts/bench_compose.py", "--rounds", "1", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    text = out.read_text()
    assert f"Reproduce: `python scripts/bench_compose.py --out {out}`" in text
    assert "120 jobs of `experiment=curve_cnn`" in text
    hydra_ms, ours_ms, ratio = re.search(r"^\| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", text, re.M).groups()
    assert float(ratio) == pytest.approx(float(hydra_ms) / float(ours_ms), rel=0.05)  # one round: its ratio
