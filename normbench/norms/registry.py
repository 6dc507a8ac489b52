"""The registry of normalization plugins: the only place that knows which norms exist.

A plugin is a module class (or a factory returning a module) called as ``factory(num_channels,
**options)``. It is registered under a canonical lower-case name with :func:`register_norm`; names are
resolved ignoring case, ``-`` and ``_``. Built-in plugins live in ``normbench.norms`` (one file each);
third-party packages add theirs through the ``normbench.norms`` entry-point group, loaded lazily on the
first use of the registry.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import numbers
import pkgutil
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType, NoneType, UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

from torch import nn

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "normbench.norms"
# how a plugin trains inside a population (NormSpec.population)
POPULATION_FORMS = ("wide", "vmap", False)

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class NormSpec:
    """What the registry knows about one plugin.

    Attributes:
        name: canonical name (lower case, no separators needed to resolve it).
        factory: class or callable; ``factory(num_channels, **options)`` returns the module.
        summary: one line, from the first line of the factory's docstring unless given.
        paper: the reference that defines the operation.
        batch_dependent: in training mode, does one sample's output depend on the other samples?
        running_stats: does it keep population statistics that eval mode uses?
        options: accepted keyword options and their defaults (read from the factory's signature).
        option_types: the annotated type of each option (``Any`` when not annotated).
        aliases: other names that resolve to this plugin.
        min_spatial_positions: with the default options, inputs need at least this many positions
            per channel (e.g. 2 for instance statistics); 0 means (N, C) features work.
        replaces_activation: the module includes its non-linearity, so models must not add one.
        adapt_layer: optional hook ``adapt_layer(layer) -> layer`` applied once to the conv/linear
            layer that precedes the norm (e.g. weight standardization).
        population: how K copies of the module train side by side in a population (K runs of one
            architecture trained as one model). ``"wide"``: one module over K·C channels computes the K
            copies at once (each copy's channels in their own block, its per-channel tensors
            concatenated; :attr:`widen` builds it), the fast form. ``"vmap"``: the module runs under
            ``torch.func.vmap`` over stacked parameters and buffers (``functional_call``), each member
            with its own statistics, exactly as separate modules would. ``False``: neither (a custom
            autograd Function without vmap support, a ``.item()`` in forward); ``hydra/launcher=
            population`` then trains its runs one by one, with a notice. ``True`` means ``"vmap"``.
            Every wide plugin also runs under vmap. tests/test_population.py holds each plugin to its
            claim (outputs, gradients and buffers equal to K separate modules).
        widen: for ``population="wide"``, ``widen(member, k)`` returns a module that computes ``k``
            copies of ``member`` side by side on (N, k·C, *) inputs; every parameter and buffer it
            holds must have ``member``'s name with k times its leading size (0-dim buffers, such as
            step counters, shared), and the caller fills them with the members' tensors concatenated.
            ``None`` means :func:`normbench.norms._base.wide_copy` (a copy with ``num_channels`` times
            k: right for any per-channel formula).
        source: where it was registered from (module name, or ``entry point NAME``).
        open_options: the factory also takes ``**kwargs``: :func:`build_norm` passes it options beyond
            :attr:`options` as they are (unchecked; Hydra configs hold the named ones only).
    """

    name: str
    factory: Callable[..., nn.Module]
    summary: str
    paper: str
    batch_dependent: bool
    running_stats: bool
    options: Mapping[str, Any]
    option_types: Mapping[str, Any]
    aliases: tuple[str, ...] = ()
    min_spatial_positions: int = 0
    replaces_activation: bool = False
    adapt_layer: Callable[[nn.Module], nn.Module] | None = None
    population: str | bool = "vmap"
    widen: Callable[[nn.Module, int], nn.Module] | None = None
    source: str = ""
    open_options: bool = False

    @property
    def frozen_statistics(self) -> bool:
        """Running statistics used in every mode and estimated by nothing (``running_stats`` without
        ``batch_dependent``: frozen_batchnorm): a trained model's carry over; from scratch they stay at
        their initial values."""
        return self.running_stats and not self.batch_dependent


def normalize_name(name: str) -> str:
    """The lookup key of a name: lower case, without ``-``, ``_`` and spaces."""
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def _factory_parameters(factory: Callable[..., nn.Module]) -> tuple[Callable, list[inspect.Parameter]]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = list(inspect.signature(target).parameters.values())
    return target, params[1:] if inspect.isclass(factory) else params  # a class's self left out


def _takes_more_options(factory: Callable[..., nn.Module]) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in _factory_parameters(factory)[1])


def _signature_options(factory: Callable[..., nn.Module]) -> tuple[dict[str, Any], dict[str, Any]]:
    target, params = _factory_parameters(factory)
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"{factory!r}: a norm factory must take num_channels as its first argument")
    if params[0].default is not params[0].empty:  # it would get the channel count as that option
        raise TypeError(
            f"{factory!r}: a norm factory must take num_channels as its first argument, without a default; "
            f"its first is {params[0]}"
        )
    try:
        hints = inspect.get_annotations(target, eval_str=True)
    except Exception:  # unresolvable annotations only lose type checking in configs
        hints = {}
    defaults: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise TypeError(f"{factory!r}: option {p.name!r} needs a default value")
        defaults[p.name] = p.default
        types[p.name] = hints.get(p.name, Any)
    return defaults, types


class _Registry:
    def __init__(self) -> None:
        self._specs: dict[str, NormSpec] = {}
        self._keys: dict[str, str] = {}  # normalized name or alias -> canonical name
        self._loaded = False
        self._loading = threading.RLock()
        self.plugin_errors: dict[str, str] = {}

    def add(self, spec: NormSpec, override: bool) -> None:
        # a plugin of the user's meets the built-ins' names even before they load; a built-in does not
        # load them (imported alone, it would import the modules that import from it, half-initialized)
        if not spec.source.startswith(f"{__package__}."):
            self.ensure_loaded()
        keys = [normalize_name(spec.name), *(normalize_name(a) for a in spec.aliases)]
        if not override:
            for key in keys:
                if key in self._keys:
                    owner = self._specs[self._keys[key]]
                    raise ValueError(
                        f"norm name {key!r} is already registered by {owner.name!r} "
                        f"(from {owner.source}); pass override=True to replace it"
                    )
        if override and spec.name in self._specs:
            old = self._specs.pop(spec.name)
            for key in [normalize_name(old.name), *(normalize_name(a) for a in old.aliases)]:
                self._keys.pop(key, None)
        self._specs[spec.name] = spec
        for key in keys:
            self._keys[key] = spec.name

    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._loading:
            if self._loaded:
                return
            self._loaded = True
            # the built-in plugins: every public module beside this one (found by path, so that the
            # registry never imports the package that imports it)
            for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
                if mod.name != "registry" and not mod.name.startswith("_"):
                    importlib.import_module(f"{__package__}.{mod.name}")
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    ep.load()
                except Exception as exc:  # a broken third-party plugin must not break the rest
                    msg = f"{type(exc).__name__}: {exc}"
                    self.plugin_errors[ep.name] = msg
                    log.warning("normbench: norm plugin entry point %r failed to load: %s", ep.name, msg)

    def specs(self) -> dict[str, NormSpec]:
        self.ensure_loaded()
        return self._specs

    def resolve(self, name: str) -> NormSpec:
        if not isinstance(name, str):
            raise TypeError(f"norm name must be a string, got {name!r}")
        self.ensure_loaded()
        key = normalize_name(name)
        if key in self._keys:
            return self._specs[self._keys[key]]
        names = sorted(self._specs)
        close = difflib.get_close_matches(key, list(self._keys), n=1, cutoff=0.6)
        hint = f" Did you mean {self._keys[close[0]]!r}?" if close else ""
        broken = (
            f" (plugins that failed to load: {', '.join(sorted(self.plugin_errors))})"
            if self.plugin_errors
            else ""
        )
        raise KeyError(f"unknown norm {name!r}.{hint} Available norms: {', '.join(names)}{broken}")


REGISTRY = _Registry()


def register_norm(
    name: str,
    factory: Callable[..., nn.Module] | None = None,
    *,
    aliases: tuple[str, ...] | list[str] = (),
    override: bool = False,
    summary: str | None = None,
    paper: str = "",
    batch_dependent: bool = False,
    running_stats: bool = False,
    min_spatial_positions: int = 0,
    replaces_activation: bool = False,
    adapt_layer: Callable[[nn.Module], nn.Module] | None = None,
    population: str | bool = "vmap",
    widen: Callable[[nn.Module, int], nn.Module] | None = None,
) -> Any:
    """Register a norm class or factory under ``name``: as a decorator, or called with the ``factory``
    (a class defined elsewhere), returning it either way.

    The factory is called as ``factory(num_channels, **options)``; its keyword parameters (each with a
    default) are the plugin's options. Registering a taken name or alias raises ``ValueError`` unless
    ``override=True``.

    Example::

        @register_norm("centernorm", paper="...", batch_dependent=False)
        class CenterNorm(nn.Module):
            '''Subtract the per-sample mean over channels.'''
            def __init__(self, num_channels: int, eps: float = 1e-5): ...

        register_norm("lrn", LocalResponseNorm)  # the same, for a class you do not define
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(
            f"norm name {name!r} must be lower case letters, digits and '_' (e.g. 'ghost_batchnorm')"
        )

    flags = {
        "batch_dependent": batch_dependent,
        "running_stats": running_stats,
        "replaces_activation": replaces_activation,
        "override": override,
    }
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"norm {name!r}: {flag}={value!r} must be True or False")
    if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
        raise ValueError(f"norm {name!r}: aliases={aliases!r} must be a list of names, e.g. ['gn']")
    if (
        isinstance(min_spatial_positions, bool)
        or not isinstance(min_spatial_positions, int)
        or min_spatial_positions < 0
    ):
        raise ValueError(
            f"norm {name!r}: min_spatial_positions={min_spatial_positions!r} must be an integer >= 0"
        )
    for hook, value in (("adapt_layer", adapt_layer), ("widen", widen)):
        if value is not None and not callable(value):
            raise ValueError(f"norm {name!r}: {hook}={value!r} must be a function or None")
    if population is True:
        population = "vmap"
    if population not in POPULATION_FORMS:
        raise ValueError(
            f"norm {name!r}: population={population!r} is not one of {', '.join(map(repr, POPULATION_FORMS))}"
        )
    if widen is not None and population != "wide":
        raise ValueError(f"norm {name!r}: widen is given but population={population!r} (needs 'wide')")

    def decorator(plugin: F) -> F:
        if not callable(plugin):
            raise TypeError(
                f"register_norm({name!r}) registers a norm class or a function that returns one, got {plugin!r}"
            )
        options, types = _signature_options(plugin)
        doc = inspect.getdoc(plugin) or ""
        line = summary or (doc.strip().splitlines()[0] if doc.strip() else name)
        spec = NormSpec(
            name=name,
            factory=plugin,
            summary=line,
            paper=paper,
            batch_dependent=batch_dependent,
            running_stats=running_stats,
            options=MappingProxyType(options),
            option_types=MappingProxyType(types),
            aliases=tuple(aliases),
            min_spatial_positions=min_spatial_positions,
            replaces_activation=replaces_activation,
            adapt_layer=adapt_layer,
            population=population,
            widen=widen,
            source=getattr(plugin, "__module__", "?"),
            open_options=_takes_more_options(plugin),
        )
        REGISTRY.add(spec, override)
        return plugin

    return decorator if factory is None else decorator(factory)


def available_norms() -> list[str]:
    """Canonical names of all registered norms, sorted."""
    return sorted(REGISTRY.specs())


def norm_spec(name: str) -> NormSpec:
    """Metadata of the plugin that ``name`` (or an alias) resolves to."""
    return REGISTRY.resolve(name)


def iter_specs() -> Iterator[NormSpec]:
    """All specs in name order."""
    specs = REGISTRY.specs()
    return (specs[n] for n in sorted(specs))


def plugin_classes() -> dict[type, NormSpec]:
    """The spec of every plugin whose factory is a class, by that class (to recognise its modules)."""
    return {s.factory: s for s in iter_specs() if inspect.isclass(s.factory)}


# The annotations an option's value is checked against (a string "no" would be a true affine=);
# options annotated otherwise (or not at all) are left to the plugin.
_CHECKED_TYPES: dict[Any, Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    NoneType: lambda v: v is None,
}


def option_type_problem(annotation: Any, value: Any) -> str | None:
    """What ``value`` must be for an option annotated ``annotation`` (``bool``, ``float | None``...), or
    None where it is that (or the annotation is not one this checks)."""
    kinds = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    if not all(kind in _CHECKED_TYPES for kind in kinds) or any(_CHECKED_TYPES[k](value) for k in kinds):
        return None
    return " or ".join("None" if kind is NoneType else kind.__name__ for kind in kinds)


def build_norm(name: str, num_channels: int, **options: Any) -> nn.Module:
    """Build the norm ``name`` for ``num_channels`` channels with the plugin's ``options``.

    Raises:
        KeyError: unknown name (the message lists the available norms and the closest one).
        TypeError: an option the plugin does not accept (the message lists the accepted ones), or a
            value that is not of the option's annotated type (bool, int, float, str, or X | None).
        ValueError: ``num_channels`` is not a positive integer, or the plugin rejects the options.
    """
    spec = norm_spec(name)
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels <= 0:
        raise ValueError(f"{spec.name}: num_channels must be a positive int, got {num_channels!r}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown and not spec.open_options:
        accepted = ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "none"
        raise TypeError(
            f"{spec.name}: unknown option(s) {', '.join(map(repr, unknown))}; accepted options: {accepted}"
        )
    for key, value in options.items():
        allowed = option_type_problem(spec.option_types.get(key, Any), value)
        if allowed:
            raise TypeError(f"{spec.name}: {key}={value!r}: must be {allowed}, got {type(value).__name__}")
    return spec.factory(num_channels, **options)
