"""convert_norms on models built like torchvision's (torchvision cannot be imported here): ResNet basic
and bottleneck blocks with downsample, MobileNet inverted residuals with depthwise convs and BN eps /
momentum variants, ConvNeXt-style LayerNorm2d blocks, and a ViT-style token model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench import available_norms, build_norm, convert_norms, norm_spec
from normbench.convert import norm_channels


class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock's structure
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):  # torchvision.models.resnet.Bottleneck's structure
    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * 4
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


def resnet_like(block: str) -> nn.Module:
    stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    blocks = (
        [BasicBlock(16, 16), BasicBlock(16, 32, 2)]
        if block == "basic"
        else [Bottleneck(16, 8), Bottleneck(32, 8, 2)]
    )
    return nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(10))


def conv_bn_act(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act=nn.Hardswish):
    # torchvision.ops.Conv2dNormActivation with MobileNetV3's BatchNorm (eps=0.001, momentum=0.01)
    layers = [
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01),
    ]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):  # MobileNetV2/V3: expand, depthwise, project (no activation)
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(
            conv_bn_act(c, hidden, 1),
            conv_bn_act(hidden, hidden, 3, groups=hidden),
            conv_bn_act(hidden, c, 1, act=None),
        )

    def forward(self, x):
        return x + self.block(x)


def mobilenet_like() -> nn.Module:
    return nn.Sequential(
        conv_bn_act(3, 16, 3, 2), InvertedResidual(16, 4), InvertedResidual(16, 3),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


class LayerNorm2d(nn.LayerNorm):  # torchvision.models.convnext.LayerNorm2d: LayerNorm over channels
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def convnext_like() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 16, 7, padding=3, groups=16),
        LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 32, 1), nn.GELU(), nn.Conv2d(32, 16, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


class VitLike(nn.Module):  # LayerNorm over the last dimension of (N, L, C) tokens only
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.ln1, self.mlp, self.ln2 = nn.LayerNorm(16), nn.Linear(16, 16), nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.mlp(self.ln1(tokens))
        return self.head(self.ln2(tokens).mean(1))


MODELS = {
    "resnet18_like": lambda: resnet_like("basic"),
    "resnet50_like": lambda: resnet_like("bottleneck"),
    "mobilenet_like": mobilenet_like,
    "convnext_like": convnext_like,
}
SOURCE_TYPES = (nn.BatchNorm2d, LayerNorm2d)


def _sources(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, SOURCE_TYPES)]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]()
    model(torch.randn(2, 3, 16, 16))  # materialize lazy layers
    return model


@pytest.mark.parametrize("target", ["groupnorm", "layernorm", "batchrenorm", "rmsnorm", "identity"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_former_norm_is_replaced_and_the_model_still_trains(name, target):
    model = _model(name)
    before = _sources(model)
    x = torch.randn(4, 3, 16, 16)
    shape = model(x).shape
    options = {"num_groups": 4} if target == "groupnorm" else {}
    done = convert_norms(model, target, **options)
    assert [c.name for c in done] == before and before
    assert _sources(model) == []
    assert all(type(model.get_submodule(c.name)) is norm_spec(target).factory for c in done)
    out = model(x)
    assert out.shape == shape and out.dtype == x.dtype
    loss = out.square().mean()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(model(x)).all()
    clone = _model(name)
    convert_norms(clone, target, **options)
    clone.load_state_dict(model.state_dict())  # state_dict round trip
    torch.testing.assert_close(clone.eval()(x), model.eval()(x))


def test_batchnorm_statistics_carry_over_exactly_where_they_mean_the_same():
    model = _model("resnet18_like")
    for _ in range(3):  # running statistics away from their initial values
        model.train()(torch.randn(8, 3, 16, 16) * 2 + 1)
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    expected = model(x)
    for target in ("frozen_batchnorm", "batchrenorm", "sync_batchnorm", "batchnorm"):
        converted = copy.deepcopy(model)
        done = convert_norms(converted, target)
        assert all({"running_mean", "running_var", "weight", "bias"} <= set(c.copied) for c in done)
        assert not converted.training
        torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)
    gn = copy.deepcopy(model)
    done = convert_norms(gn, "groupnorm", num_groups=4)
    assert all(c.copied == ("weight", "bias") for c in done)  # GN keeps no statistics: affine only


@pytest.mark.parametrize(
    "layer",
    [
        nn.BatchNorm2d(4, track_running_stats=False),
        build_norm("batchnorm", 4, track_running_stats=False),
        nn.GroupNorm(2, 4),
    ],
    ids=["torch_bn_no_stats", "normbench_bn_no_stats", "groupnorm"],
)
def test_a_layer_without_running_statistics_is_not_frozen_into_initial_ones(layer):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.ReLU())
    with pytest.raises(ValueError, match=r"convert_norms: 1 \(\w+\) keeps no running statistics.*mean 0"):
        convert_norms(model, "frozen_batchnorm")
    assert model[1] is layer  # nothing changed
    done = convert_norms(model, "batchrenorm")  # a norm that computes its own statistics still converts
    assert done[0].copied == ("weight", "bias")


def test_eps_momentum_device_dtype_and_mode_are_kept():
    model = _model("mobilenet_like").double().train()
    done = convert_norms(model, "batchnorm")
    for c in done:
        layer = model.get_submodule(c.name)
        assert layer.eps == 0.001 and layer.momentum == 0.01  # MobileNet's BN variant
        assert layer.weight.dtype == torch.float64 and layer.training
    convert_norms(model, "batchnorm", eps=1e-3, momentum=0.2)  # the caller's options win
    assert {model.get_submodule(c.name).momentum for c in done} == {0.2}


def test_include_and_exclude_choose_layers():
    model = _model("resnet18_like")
    done = convert_norms(model, "groupnorm", num_groups=4, exclude=lambda name, m: "downsample" in name)
    assert done and all("downsample" not in c.name for c in done)
    assert isinstance(model.get_submodule("4.downsample.1"), nn.BatchNorm2d)
    done = convert_norms(model, "identity", include=lambda name, m: isinstance(m, nn.BatchNorm2d))
    assert [c.name for c in done] == ["4.downsample.1"]


def test_adapt_layer_hook_standardizes_the_conv_before_each_norm():
    model = _model("resnet18_like")
    done = convert_norms(model, "ws_groupnorm", num_groups=4)
    assert {c.adapted_layer for c in done} >= {"0", "3.conv1", "3.conv2", "4.downsample.0"}
    conv = model.get_submodule("3.conv1")
    w = conv.weight.flatten(1)
    torch.testing.assert_close(w.mean(1), torch.zeros(len(w)), atol=1e-5, rtol=0)  # standardized
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16))).all()


def test_replaces_activation_hook_removes_the_following_activation_or_refuses():
    model = _model("mobilenet_like")
    with pytest.raises(ValueError, match=r"1\.block\.2\.1 is not followed by an activation module"):
        convert_norms(model, "evonorm_s0", num_groups=4)  # a projection without activation: refused
    done = convert_norms(model, "evonorm_s0", num_groups=4, exclude=lambda n, m: n.endswith("block.2.1"))
    assert len(done) == 5 and all(c.removed_activation == f"{c.name[:-2]}.2" for c in done)
    assert all(isinstance(model.get_submodule(c.removed_activation), nn.Identity) for c in done)
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16))).all()
    resnet = _model("resnet18_like")
    untouched = copy.deepcopy(resnet.state_dict())
    with pytest.raises(
        ValueError, match=r"3\.bn1 is not followed by an activation module in an nn\.Sequential"
    ):
        convert_norms(resnet, "frn")
    assert all(type(m) is not norm_spec("frn").factory for m in resnet.modules())  # nothing changed
    assert resnet.state_dict().keys() == untouched.keys()
    assert convert_norms(resnet, "frn", keep_activation=True)


def test_token_layernorm_models_have_nothing_to_convert(caplog):
    model = VitLike()
    with caplog.at_level("WARNING"):
        assert convert_norms(model, "groupnorm") == []
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "nothing to convert in VitLike" in caplog.text
    assert isinstance(model.ln1, nn.LayerNorm)


def test_every_plugin_and_torch_norm_is_recognized_as_a_source():
    for name in available_norms():
        assert norm_channels(build_norm(name, 8)) == 8
    for layer in (
        nn.BatchNorm1d(8),
        nn.BatchNorm3d(8),
        nn.SyncBatchNorm(8),
        nn.GroupNorm(2, 8),
        nn.InstanceNorm2d(8),
    ):
        assert norm_channels(layer) == 8
    assert norm_channels(nn.LayerNorm(8)) is None and norm_channels(LayerNorm2d(8)) == 8


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((5, "groupnorm"), {}, "convert_norms: model must be an nn.Module, got int"),
        (
            (nn.Sequential(nn.BatchNorm2d(4)), "groupnorm"),
            {"include": "0"},
            "convert_norms: include must be a predicate (qualified_name, module) -> bool, got str",
        ),
        (
            (nn.Sequential(nn.BatchNorm2d(4)), "groupnorm"),
            {"num_groups": "2"},
            "groupnorm: num_groups='2': must be",
        ),
    ],
)
def test_a_misused_call_is_a_type_error_naming_the_argument(args, kwargs, message):
    with pytest.raises(TypeError) as info:
        convert_norms(*args, **kwargs)
    assert str(info.value).startswith(message)


def test_unknown_norm_names_the_closest():
    with pytest.raises(KeyError, match="Did you mean 'groupnorm'"):
        convert_norms(_model("resnet18_like"), "grupnorm")


class BatchNormAct2d(nn.BatchNorm2d):  # timm.layers.BatchNormAct2d: BatchNorm, then drop, then act
    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.drop, self.act = nn.Identity(), nn.SiLU()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


def test_timm_norm_act_layers_keep_their_activation_or_give_it_to_the_plugin():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8), nn.Conv2d(8, 8, 3), BatchNormAct2d(8))
    x = torch.randn(2, 3, 9, 9)
    reference = copy.deepcopy(model).eval()(x)
    frozen = copy.deepcopy(model).eval()
    done = convert_norms(frozen, "frozen_batchnorm")
    assert [c.name for c in done] == ["1", "3"] and isinstance(frozen[1][2], nn.SiLU)
    torch.testing.assert_close(frozen(x), reference)  # same statistics, the SiLU kept
    evo = copy.deepcopy(model)
    done = convert_norms(evo, "evonorm_s0", num_groups=4)
    assert [c.removed_activation for c in done] == ["1.2", "3.2"]
    assert isinstance(evo[1][2], nn.Identity) and isinstance(evo[1][0], norm_spec("evonorm_s0").factory)
    odd = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8))
    odd[1].extra = nn.ReLU()
    with pytest.raises(ValueError, match=r"1 \(BatchNormAct2d\) holds submodules \['drop', 'act', 'extra'\]"):
        convert_norms(odd, "groupnorm", num_groups=4)


def test_a_shared_layer_becomes_one_new_layer_in_every_place_that_held_it():
    shared = nn.BatchNorm2d(4)
    model = nn.Module()
    model.a, model.b = shared, shared  # e.g. one norm applied to two branches
    done = convert_norms(model, "groupnorm", num_groups=2)
    assert [c.name for c in done] == ["a", "b"]
    assert isinstance(model.a, norm_spec("groupnorm").factory) and model.a is model.b


def test_a_layer_the_options_do_not_fit_is_named_and_the_model_is_left_as_it_was():
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 48, 3), nn.BatchNorm2d(48)
    )
    with pytest.raises(ValueError) as info:
        convert_norms(model, "groupnorm", num_groups=32)
    assert str(info.value).startswith("convert_norms: 4 (BatchNorm2d, 48 channels): ")
    assert "48" in str(info.value) and "32" in str(info.value)
    assert [type(m) for m in model] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]


def test_a_lazy_layer_is_converted_once_it_knows_its_channels():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d())
    with pytest.raises(ValueError, match=r"^convert_norms: 1 \(LazyBatchNorm2d\) has not seen an input yet"):
        convert_norms(model, "groupnorm", num_groups=2)
    model(torch.randn(2, 3, 6, 6))  # now a BatchNorm2d of 4 channels
    assert convert_norms(model, "groupnorm", num_groups=2)[0].new == "GroupNorm"


@pytest.mark.parametrize(
    "source, target, affine",
    [
        (nn.BatchNorm2d(4, affine=False), "groupnorm", False),  # a conv's bias absorbs them
        (nn.GroupNorm(2, 4, affine=False), "batchnorm", False),
        (build_norm("layernorm", 4, affine=False), "rmsnorm", False),
        (nn.InstanceNorm2d(4), "batchnorm", True),  # torch IN's default describes IN: the target's own
        (build_norm("frozen_batchnorm", 4), "groupnorm", True),  # its affine transform is in buffers
    ],
    ids=["bn-gn", "gn-bn", "ln-rms", "torch_in-bn", "frozen-gn"],
)
def test_a_layer_without_affine_parameters_becomes_one_without(source, target, affine):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), source)
    done = convert_norms(model, target, **({"num_groups": 2} if target == "groupnorm" else {}))
    assert (model[1].weight is not None) is affine
    assert done[0].copied[:2] == (("weight", "bias") if isinstance(source.weight, torch.Tensor) else ())


def test_batch_statistics_in_eval_and_a_cumulative_average_carry_over_or_are_refused():
    x = torch.randn(4, 3, 6, 6)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False)).eval()
    expected = model(x)  # normalized with the batch's own statistics, in eval mode too
    convert_norms(model, "batchnorm")
    assert model[1].track_running_stats is False
    torch.testing.assert_close(model(x), expected)
    instance = nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8))  # track_running_stats=False
    convert_norms(instance, "batchnorm")
    assert instance[1].track_running_stats is True  # IN's flag is about IN's statistics
    cumulative = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=None))
    convert_norms(cumulative, "batchrenorm")
    assert cumulative[1].momentum is None
    cumulative = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=None))
    with pytest.raises(
        ValueError, match=r"^convert_norms: 1 has momentum=None, which switchnorm does not take"
    ):
        convert_norms(cumulative, "switchnorm")
    assert type(cumulative[1]) is nn.BatchNorm2d
    assert convert_norms(cumulative, "switchnorm", momentum=0.1)  # the caller's value


def test_a_model_that_is_itself_a_norm_is_refused_with_what_to_call():
    with pytest.raises(
        ValueError, match=r"itself a normalization layer \(BatchNorm2d\).*build_norm\('groupnorm', 4\)"
    ):
        convert_norms(nn.BatchNorm2d(4), "groupnorm")


def test_a_learned_shift_survives_conversion_into_a_norm_whose_bias_is_optional():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))  # the BN's bias: the only shift
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    weight, bias = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    done = convert_norms(model, "rmsnorm")
    assert done[0].copied == ("weight", "bias")
    x = torch.randn(2, 3, 6, 6)
    h = model[0](x)
    rms = h.square().mean(dim=(1, 2, 3), keepdim=True).add(1e-5).sqrt()  # over channels and positions
    expected = h / rms * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    torch.testing.assert_close(model(x), expected)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    convert_norms(model, "rmsnorm", bias=False)  # the caller's choice stands
    assert model[1].bias is None
