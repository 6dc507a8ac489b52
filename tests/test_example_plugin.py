"""The example plugin package, installed like a third-party package, extends normbench end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import installed_env, run_python

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "normbench-plugin-example"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    return installed_env(EXAMPLE, tmp_path_factory.mktemp("site"))


def test_plugin_is_listed_and_built(plugin_env, tmp_path):
    proc = run_python(
        ["-c", "import normbench, torch; print(normbench.available_norms()); "
               "print(normbench.norm_spec('scale-norm').source); "
               "print(normbench.build_norm('scalenorm', 4)(torch.ones(2, 4)).norm(dim=1).tolist())"],
        plugin_env,
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names, source, norms = proc.stdout.strip().splitlines()
    assert "'scalenorm'" in names and "'batchnorm'" in names
    assert source == "normbench_plugin_example.scalenorm"
    assert norms == "[2.0, 2.0]"  # g = sqrt(C) = 2: every sample lies on the sphere of radius 2


def test_conformance_suite_accepts_the_plugin(plugin_env):
    proc = run_python(
        [
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "test_conformance.py"),
            "-k",
            "scalenorm",
        ],
        plugin_env,
        ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_training_run_with_the_plugin(plugin_env, tmp_path):
    proc = run_python(
        [
            "-m",
            "normbench",
            "norm=scalenorm",
            "task=mnist1d_cnn",
            "train.budget=steps",
            "train.steps=5",
            "hydra.run.dir=out",
        ],
        plugin_env,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    from normbench.results import load_run

    record = load_run(tmp_path / "out")
    assert record["status"] == "completed" and record["config"]["norm"]["name"] == "scalenorm"
