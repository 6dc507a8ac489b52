"""Name resolution, registration rules, entry-point discovery and error messages of the registry."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_distribution
from torch import nn

from normbench import available_norms, build_norm, norm_spec, register_norm
from normbench.norms.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def test_core_plugins_are_listed_sorted():
    names = available_norms()
    assert names == sorted(names)
    assert {"batchnorm", "layernorm", "instancenorm", "groupnorm", "identity"} <= set(names)


@pytest.mark.parametrize(
    ("asked", "canonical"),
    [
        ("Group-Norm", "groupnorm"),
        ("group_norm", "groupnorm"),
        ("GROUPNORM", "groupnorm"),
        ("bn", "batchnorm"),
        ("ln", "layernorm"),
        ("in", "instancenorm"),
        ("gn", "groupnorm"),
        ("Batch_Norm", "batchnorm"),
    ],
)
def test_names_resolve_ignoring_case_and_separators(asked, canonical):
    assert norm_spec(asked).name == canonical


def test_unknown_name_lists_available_and_suggests_closest():
    with pytest.raises(KeyError) as err:
        build_norm("groupnrom", 8)
    msg = str(err.value)
    assert "'groupnrom'" in msg and "Did you mean 'groupnorm'?" in msg
    for name in available_norms():
        assert name in msg


def test_unknown_option_is_type_error_naming_plugin_and_options():
    with pytest.raises(TypeError, match=r"groupnorm: unknown option\(s\) 'groups'.*num_groups=None"):
        build_norm("gn", 8, groups=4)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_num_channels(bad):
    with pytest.raises(ValueError, match=re.escape(f"got {bad!r}")):
        build_norm("batchnorm", bad)


@pytest.mark.parametrize(
    "name, option, value, message",
    [  # a value of another type than the option's annotation, for every kind it checks
        ("batchnorm", "affine", "no", "batchnorm: affine='no': must be bool, got str"),  # "no" is true
        ("rmsnorm", "eps", "1e-5", "rmsnorm: eps='1e-5': must be float, got str"),
        ("batchnorm", "momentum", "0.1", "batchnorm: momentum='0.1': must be float or None, got str"),
        ("groupnorm", "num_groups", 2.0, "groupnorm: num_groups=2.0: must be int or None, got float"),
        ("batchnorm", "positions", True, "batchnorm: positions=True: must be int, got bool"),
    ],
)
def test_an_option_of_the_wrong_type_is_a_type_error_naming_it(name, option, value, message):
    with pytest.raises(TypeError) as info:
        build_norm(name, 8, **{option: value})
    assert str(info.value) == message


def test_an_option_of_its_type_builds():
    import numpy as np

    assert build_norm("groupnorm", 8, num_groups=np.int64(2)).num_groups == 2  # any integral number
    assert build_norm("batchnorm", 8, eps=1, momentum=None).momentum is None  # an int is a float
    assert build_norm("instancenorm", 8, affine=False).weight is None


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("batchnorm", {"eps": float("nan")}, "BatchNorm: eps must be a finite number > 0, got nan"),
        ("layernorm", {"eps": float("inf")}, "LayerNorm: eps must be a finite number > 0, got inf"),
        ("switchnorm", {"momentum": -1.0}, "SwitchNorm: momentum must be in [0, 1], got -1.0"),
        ("evonorm_b0", {"momentum": 1.5}, "EvoNormB0: momentum must be in [0, 1], got 1.5"),
        ("ghost_batchnorm", {"momentum": 2.0}, "GhostBatchNorm: momentum must be in [0, 1] or None, got 2.0"),
    ],
)
def test_an_option_out_of_range_is_a_value_error_naming_it(name, options, message):
    with pytest.raises(ValueError) as info:
        build_norm(name, 8, **options)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"aliases": "cn"}, "aliases='cn' must be a list of names, e.g. ['gn']"),  # would be 'c' and 'n'
        ({"batch_dependent": "yes"}, "batch_dependent='yes' must be True or False"),
        ({"min_spatial_positions": -1}, "min_spatial_positions=-1 must be an integer >= 0"),
        ({"adapt_layer": 5}, "adapt_layer=5 must be a function or None"),
    ],
)
def test_a_registration_setting_of_the_wrong_kind_is_refused_naming_it(settings, message):
    with pytest.raises(ValueError) as info:
        register_norm("misregistered", paper="-", **settings)(nn.Identity)
    assert str(info.value) == f"norm 'misregistered': {message}"
    with pytest.raises(KeyError):
        build_norm("misregistered", 4)


def test_registering_what_builds_no_norm_is_a_type_error_naming_it():
    with pytest.raises(
        TypeError,
        match=r"^register_norm\('centernorm'\) registers a norm class or a function that returns one, got 3$",
    ):
        register_norm("centernorm", paper="-")(3)
    with pytest.raises(ValueError, match=r"^norm name 3 must be lower case letters"):
        register_norm(3)
    with pytest.raises(KeyError):
        build_norm("centernorm", 4)


def test_spec_lists_options_with_defaults():
    spec = norm_spec("batchnorm")
    assert dict(spec.options) == {
        "eps": 1e-5,
        "momentum": 0.1,
        "affine": True,
        "track_running_stats": True,
        "positions": 0,
    }
    assert spec.batch_dependent and spec.running_stats
    assert not norm_spec("layernorm").batch_dependent
    assert "1803.08494" in norm_spec("gn").paper


def test_duplicate_registration_needs_override(isolated_registry):
    class Mine(torch.nn.Identity):
        def __init__(self, num_channels: int) -> None:
            super().__init__()

    with pytest.raises(ValueError, match="'bn' is already registered by 'batchnorm'"):
        register_norm("mybn", aliases=("bn",))(Mine)
    register_norm("batchnorm", paper="x", override=True)(Mine)
    assert isinstance(build_norm("batchnorm", 3), Mine)
    with pytest.raises(KeyError):
        norm_spec("bn")  # the replaced plugin's aliases went with it


def test_a_class_defined_elsewhere_registers_by_a_call(isolated_registry):
    assert register_norm("localresponse", nn.LocalResponseNorm, paper="AlexNet") is nn.LocalResponseNorm
    assert dict(norm_spec("localresponse").options) == {"alpha": 1e-4, "beta": 0.75, "k": 1.0}
    assert build_norm("localresponse", 5).size == 5

    class EpsFirst(nn.Module):  # it would have been built as EpsFirst(eps=num_channels)
        def __init__(self, eps: float = 1e-5) -> None:
            super().__init__()

    with pytest.raises(TypeError, match=r"must take num_channels as its first argument, without a default; "):
        register_norm("epsfirst", EpsFirst)
    with pytest.raises(KeyError):
        norm_spec("epsfirst")


# Run in a fresh interpreter: the built-ins load on first use, so this test's process has them already.
BEFORE_THE_BUILT_INS_LOAD = """
import sys, pytest
from torch import nn
from normbench import available_norms, build_norm, register_norm
from normbench.norms.registry import REGISTRY

class Mine(nn.Identity):
    def __init__(self, num_channels: int) -> None:
        super().__init__()

assert not REGISTRY._loaded
with pytest.raises(ValueError, match="'batchnorm' is already registered by 'batchnorm'"):
    register_norm("batchnorm", Mine)
register_norm("mine", Mine, aliases=["bn2"])
register_norm("groupnorm", Mine, override=True)
assert type(build_norm("groupnorm", 4)) is Mine and type(build_norm("bn2", 4)) is Mine
assert {"batchnorm", "layernorm", "mine"} <= set(available_norms())
"""


@pytest.mark.parametrize("first", ["user", "batchnorm", "groupnorm"])  # others import from these two
def test_built_in_names_are_taken_before_the_built_ins_load_and_each_imports_alone(first):
    """A user's plugin named like a built-in got in while the built-ins were not loaded yet; loading
    them then failed on the name, leaving the registry without the rest."""
    built_in = [n for n in available_norms() if norm_spec(n).source.startswith("normbench.norms.")]
    alone = (
        f"import normbench.norms.{first}\nimport normbench\nassert normbench.available_norms() == {built_in}"
    )
    code = BEFORE_THE_BUILT_INS_LOAD if first == "user" else alone
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_factory_function_can_be_registered(isolated_registry):
    @register_norm("halfscale", paper="test")
    def halfscale(num_channels: int, scale: float = 0.5) -> torch.nn.Module:
        """Multiply by a constant."""
        return torch.nn.Identity() if scale == 1 else _Scale(scale)

    spec = norm_spec("half-scale")
    assert spec.summary == "Multiply by a constant." and dict(spec.options) == {"scale": 0.5}
    assert build_norm("halfscale", 4)(torch.ones(2, 4)).sum() == 4.0


def test_a_factory_taking_keyword_arguments_gets_the_options_it_does_not_name(isolated_registry):
    """A wrapper such as ``lambda c, **kw: timm_norm(c, **kw)`` registered, then refused every option
    it passes on: its **kwargs were not in the options read from its signature."""

    @register_norm("scaled", paper="test")
    def scaled(num_channels: int, scale: float = 1.0, **more: float) -> torch.nn.Module:
        return _Scale(scale * more.get("factor", 1.0))

    spec = norm_spec("scaled")
    assert spec.open_options and dict(spec.options) == {"scale": 1.0}
    assert build_norm("scaled", 4, scale=2.0, factor=3.0).s == 6.0
    with pytest.raises(TypeError, match=r"^scaled: scale='2': must be float"):
        build_norm("scaled", 4, scale="2")  # the named options keep their checks
    assert not norm_spec("groupnorm").open_options


class _Scale(torch.nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


def test_entry_point_plugins_are_discovered_and_broken_ones_reported(
    isolated_registry, tmp_path, monkeypatch, caplog
):
    write_distribution(
        tmp_path,
        "nb_fake_plugins",
        "centering = nb_fake_center\nbroken = nb_fake_broken",
        {
            "nb_fake_center": """
                from torch import nn
                from normbench import register_norm

                @register_norm("centernorm", paper="test plugin")
                class CenterNorm(nn.Module):
                    '''Subtract the per-sample mean over channels.'''
                    def __init__(self, num_channels: int) -> None:
                        super().__init__()
                    def forward(self, x):
                        return x - x.mean(1, keepdim=True)
            """,
            "nb_fake_broken": "raise ImportError('needs a GPU library')\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    isolated_registry._loaded = False
    caplog.set_level("WARNING")
    assert "centernorm" in available_norms()
    assert "batchnorm" in available_norms()
    assert norm_spec("centernorm").source == "nb_fake_center"
    assert "broken" in REGISTRY.plugin_errors
    assert "needs a GPU library" in REGISTRY.plugin_errors["broken"]
    assert "'broken'" in caplog.text and "needs a GPU library" in caplog.text
    with pytest.raises(KeyError, match="failed to load: broken"):
        norm_spec("nothere")
    sys.modules.pop("nb_fake_center", None)


def test_the_documented_plugin_example_runs(isolated_registry):
    page = (ROOT / "docs" / "plugins.md").read_text()
    section = page.split("## Writing a norm plugin", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    spec = norm_spec("meanonlynorm")
    assert spec.paper and not spec.batch_dependent
    module = build_norm("mean-only-norm", 4)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    y = module.double()(x)
    torch.testing.assert_close(y.mean(dim=(1, 2)), torch.zeros(3, dtype=torch.float64))
