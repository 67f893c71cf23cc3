"""Models of one's own: a plug-in reference loaded, checked and given the built-in models' contract.

A reference is ``path/to/file.py:Class`` or ``package.module:Class``. The class is an ``nn.Module``:

- ``__init__(seq_len, ...)``: seqprof passes ``seq_len``, and ``num_items``, ``num_users``,
  ``item_feature_dim`` of the point's dataset profile where the signature names them (or takes
  ``**kwargs``);
- ``forward(**batch) -> Tensor``: the scalar training loss, from the batch entries it names;
- ``predict(**batch) -> Tensor`` (optional): inference scores; without it, infer points are skipped;
- ``family`` (optional): a label for tables and plots; ``profile`` (optional): the dataset profile a
  sweep uses unless told otherwise; ``optimizer`` (optional): an optimizer class or factory called
  with the trainable parameters, or a method returning the optimizer (Adam otherwise).

Beside the class in its module (or as its static method), ``make_batch(batch_size, seq_len, device,
generator) -> dict[str, Tensor]`` builds the synthetic inputs on the device; it receives the
profile's sizes as the constructor does.

``load_plugin`` wraps all of it into a ``PluginSpec``, a ``ModelSpec`` like the registry's, so a
plug-in point takes the path of every point: planned by name, built by ``build_workload`` in the
worker process, which imports the plug-in itself. The name is the resolved reference (a file's
absolute path), so a resumed sweep finds the file again from any folder.
"""
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from models.base import ModelSpec, fused_on_cuda
from models.profiles import PROFILES, get_profile
from models.registry import REGISTRY
from profiler.results.schema import model_label

DEFAULT_FAMILY = "plug-in"
DEFAULT_PROFILE = "ml-1m"
# What the constructor and make_batch may receive besides seq_len (and make_batch's positionals).
SIZE_ARGUMENTS = ("num_items", "num_users", "item_feature_dim")
# The batch make_batch is tried on when a plug-in is loaded: small, on the CPU, the tiny profile.
CHECK_BATCH_SIZE, CHECK_SEQ_LEN = 2, 8
REFERENCE_FORMS = "path/to/file.py:Class or package.module:Class"


class PluginError(ValueError):
    """A plug-in that cannot be used; the message says which and why, in one line."""


def is_plugin_reference(name: str) -> bool:
    return ":" in name


def _split(reference: str) -> tuple[str, str]:
    where, _, attribute = reference.rpartition(":")
    if not where or not attribute:
        raise PluginError(f"plug-in {reference!r} is not of the form {REFERENCE_FORMS}")
    return where, attribute


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where


def resolve_reference(reference: str) -> str:
    """The reference a row records: a file's absolute path, a module's name as given."""
    where, attribute = _split(reference)
    if not _is_file(where):
        return f"{where}:{attribute}"
    return f"{Path(where).expanduser().resolve()}:{attribute}"


def file_sha256(path: str | Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class PluginConfig:
    """The knobs the harness sets, under the config field names every model uses."""

    max_len: int
    num_items: int
    num_users: int
    item_feature_dim: int | None = None


@dataclass(frozen=True)
class Parameters:
    """What a function accepts by keyword: its named parameters, the required ones, **kwargs."""

    names: tuple[str, ...]
    required: tuple[str, ...]
    takes_any: bool

    @classmethod
    def of(cls, function, skip: int = 0) -> "Parameters":
        try:
            parameters = list(inspect.signature(function).parameters.values())[skip:]
        except (TypeError, ValueError):  # no signature to read: pass what the contract names
            return cls((), (), True)
        named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return cls(
            names=tuple(p.name for p in named),
            required=tuple(p.name for p in named if p.default is p.empty),
            takes_any=any(p.kind is p.VAR_KEYWORD for p in parameters),
        )

    def accepts(self, name: str) -> bool:
        return self.takes_any or name in self.names

    def pick(self, values: dict) -> dict:
        return dict(values) if self.takes_any else {k: v for k, v in values.items() if k in self.names}


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if inspect.isroutine(value):
        return f"the function {value.__name__}"
    return f"a value of type {type(value).__name__}"


def _sizes(config: PluginConfig) -> dict:
    return {name: getattr(config, name) for name in SIZE_ARGUMENTS}


class PluginModel(nn.Module):
    """A plug-in's module behind the built-in contract: ``forward(batch) -> loss``,
    ``predict(batch) -> scores``, ``configure_optimizer()``."""

    def __init__(self, module: nn.Module, plugin: "Plugin"):
        super().__init__()
        self.module = module
        self._plugin = plugin

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.module(**self._plugin.forward_parameters.pick(batch))
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"{self._plugin.name}.forward returned {_describe(loss)}, not the scalar loss")
        return loss

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._plugin.predict_parameters is None:
            raise ValueError(f"{self._plugin.name} has no predict method: infer mode needs one")
        return self.module.predict(**self._plugin.predict_parameters.pick(batch))

    def configure_optimizer(self) -> torch.optim.Optimizer:
        rule = inspect.getattr_static(type(self.module), "optimizer", None)
        if rule is None:
            trainable = [p for p in self.module.parameters() if p.requires_grad]
            return torch.optim.Adam(trainable, **fused_on_cuda(self.module))
        if inspect.isfunction(rule):  # a method: it builds its own optimizer
            return self.module.optimizer()
        factory = getattr(type(self.module), "optimizer")  # a class, a factory, a static method
        return factory([p for p in self.module.parameters() if p.requires_grad])


@dataclass(frozen=True, eq=False)
class Plugin:
    """A loaded plug-in class and what its signatures accept."""

    name: str  # the class's name, for messages
    cls: type
    make_batch_fn: Callable
    init_parameters: Parameters
    batch_parameters: Parameters  # make_batch's, past its four positionals
    forward_parameters: Parameters
    predict_parameters: Parameters | None  # None: no predict

    def build(self, config: PluginConfig) -> PluginModel:
        arguments = {"seq_len": config.max_len, **_sizes(config)}
        return PluginModel(self.cls(**self.init_parameters.pick(arguments)), self)

    def make_batch(self, config: PluginConfig, batch_size: int, seq_len: int, device, generator) -> dict:
        return self.make_batch_fn(batch_size, seq_len, device, generator, **self.batch_parameters.pick(_sizes(config)))


@dataclass(frozen=True, kw_only=True)
class PluginSpec(ModelSpec):
    """A ModelSpec built from a plug-in; ``reference`` is also its ``name``."""

    reference: str
    sha256: str | None  # of the file that defines the class
    has_predict: bool


def _import_file(path: Path, reference: str):
    if not path.is_file():
        raise PluginError(f"plug-in {reference}: no such file {path}")
    # A name of its own per file, so two plug-ins named alike never replace each other.
    module_name = f"seqprof_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plug-in {reference}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    # As `python file.py` would: the file may import the modules beside it. Appended, so that a
    # folder of the user's never shadows seqprof's own packages.
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        raise PluginError(f"cannot import plug-in {reference}: {_reason(exc)}") from None
    return module


def _import_module(name: str, reference: str):
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        raise PluginError(f"cannot import plug-in {reference}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _module_classes(module) -> list[str]:
    return sorted(name for name, value in vars(module).items()
                  if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__)


def _attribute(module, attribute: str, reference: str):
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            classes = _module_classes(module)
            defined = f"its nn.Module classes: {', '.join(classes)}" if classes else "it defines no nn.Module class"
            raise PluginError(f"plug-in {reference}: no attribute {attribute!r} in {_split(reference)[0]}; {defined}")
        value = getattr(value, part)
    return value


def _check_batch(batch, shown: str) -> None:
    if not isinstance(batch, dict) or not batch:
        raise PluginError(f"plug-in {shown}: make_batch returned {_describe(batch)}, not a dict of tensors")
    for key, value in batch.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise PluginError(f"plug-in {shown}: make_batch returned {key!r}: {_describe(value)}; every entry must "
                              "be a tensor")


def plugin_from_class(cls, reference: str, sha256: str | None, module=None, shown: str | None = None) -> PluginSpec:
    """Checks a plug-in class against the contract and wraps it; raises PluginError saying why not.

    ``reference`` is the resolved reference, ``shown`` the one the user gave (for messages).
    """
    shown = shown or reference
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        what = f"an instance of {type(cls).__name__}" if isinstance(cls, nn.Module) else _describe(cls)
        raise PluginError(f"plug-in {shown} is {what}, not an nn.Module subclass")
    name = cls.__name__
    init = Parameters.of(cls.__init__, skip=1)
    if not init.accepts("seq_len"):
        raise PluginError(f"plug-in {shown}: {name}.__init__ does not accept seq_len; seqprof builds every model "
                          "for its length, so add a seq_len parameter")
    unknown = [p for p in init.required if p not in ("seq_len", *SIZE_ARGUMENTS)]
    if unknown:
        raise PluginError(f"plug-in {shown}: {name}.__init__ needs {', '.join(unknown)}, which seqprof does not "
                          f"pass (it passes seq_len, {', '.join(SIZE_ARGUMENTS)}); give defaults")
    if cls.forward is nn.Module.forward:
        raise PluginError(f"plug-in {shown}: {name} has no forward method")
    make_batch = getattr(cls, "make_batch", None) or getattr(module, "make_batch", None)
    if not callable(make_batch):
        raise PluginError(f"plug-in {shown}: no make_batch(batch_size, seq_len, device, generator) beside {name} "
                          "in its module nor as its static method")
    rule = getattr(cls, "optimizer", None)
    if rule is not None and not callable(rule):
        raise PluginError(f"plug-in {shown}: {name}.optimizer is {_describe(rule)}, not an optimizer class, "
                          "factory or method")
    family = getattr(cls, "family", DEFAULT_FAMILY)
    if not isinstance(family, str) or not family:
        raise PluginError(f"plug-in {shown}: {name}.family is {_describe(family)}, not a label")
    profile = getattr(cls, "profile", DEFAULT_PROFILE)
    if profile not in PROFILES:
        raise PluginError(f"plug-in {shown}: {name}.profile {profile!r} is not a profile; choose from {sorted(PROFILES)}")
    predict = getattr(cls, "predict", None)
    plugin = Plugin(
        name=name,
        cls=cls,
        make_batch_fn=make_batch,
        init_parameters=init,
        batch_parameters=Parameters.of(make_batch, skip=4),
        forward_parameters=Parameters.of(cls.forward, skip=1),
        predict_parameters=Parameters.of(predict, skip=1) if callable(predict) else None,
    )
    needs_features = "item_feature_dim" in (*init.required, *plugin.batch_parameters.required)
    # make_batch is tried once, small and on the CPU: a batch that is not tensors is bad input, not
    # a failed point of every length.
    tiny = get_profile("tiny")
    config = PluginConfig(CHECK_SEQ_LEN, tiny.num_items, tiny.num_users, tiny.item_feature_dim)
    try:
        batch = plugin.make_batch(config, CHECK_BATCH_SIZE, CHECK_SEQ_LEN, "cpu", torch.Generator().manual_seed(0))
    except Exception as exc:  # noqa: BLE001 - the user's code: say what it raised
        raise PluginError(f"plug-in {shown}: make_batch failed: {_reason(exc)}") from None
    _check_batch(batch, shown)
    for method, parameters in (("forward", plugin.forward_parameters), ("predict", plugin.predict_parameters)):
        missing = [p for p in (parameters.required if parameters else ()) if p not in batch]
        if missing:
            raise PluginError(f"plug-in {shown}: {name}.{method} needs {', '.join(missing)}, which make_batch does "
                              f"not give (it gives {', '.join(batch)})")
    return PluginSpec(
        name=reference,
        family=family,
        paper="plug-in",
        code=f"{reference} (sha256 {sha256})" if sha256 else reference,
        config_cls=PluginConfig,
        model_cls=plugin.build,
        make_batch=plugin.make_batch,
        default_profile=profile,
        causal=False,  # unknown; nothing the harness measures depends on it
        needs_item_features=needs_features,
        reference=reference,
        sha256=sha256,
        has_predict=plugin.predict_parameters is not None,
    )


# Loaded plug-ins by resolved reference, with the hash of the file they were loaded from: a file that
# changed is loaded again.
_LOADED: dict[str, PluginSpec] = {}


def load_plugin(reference: str) -> PluginSpec:
    """The plug-in a reference names, imported in this process; raises PluginError saying why not."""
    resolved = resolve_reference(reference)
    where, attribute = _split(resolved)
    path = Path(where) if _is_file(where) else None
    loaded = _LOADED.get(resolved)
    if loaded is not None and (path is None or loaded.sha256 == file_sha256(path)):
        return loaded
    module = _import_file(path, reference) if path is not None else _import_module(where, reference)
    cls = _attribute(module, attribute, reference)
    spec = plugin_from_class(cls, resolved, file_sha256(path or getattr(module, "__file__", None)), module, reference)
    _LOADED[resolved] = spec
    return spec


def _module_file(reference: str) -> str | None:
    """The file a resolved reference's class is defined in (None for a module without one)."""
    where, _ = _split(reference)
    if _is_file(where):
        return where
    return getattr(sys.modules.get(where), "__file__", None)


def class_reference(cls) -> str:
    """The reference of a class a caller holds (a notebook's), for workers to import it by.

    A class of a running script, or of a file seqprof loaded, is found through its file; one
    defined interactively cannot be imported by another process, and says so.
    """
    if not isinstance(cls, type):
        raise PluginError(f"{cls!r} is {_describe(cls)}, not a model class or a reference")
    module = sys.modules.get(cls.__module__)
    if cls.__module__ == "__main__" or cls.__module__.startswith("seqprof_plugin_"):
        file = getattr(module, "__file__", None)
        if file is None:
            raise PluginError(f"{cls.__qualname__} is defined interactively; worker processes cannot import it: "
                              f"put it in a .py file and pass the class imported from there, or 'file.py:{cls.__qualname__}'")
        return f"{Path(file).resolve()}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_spec(name: str) -> ModelSpec:
    """The spec of a registry name or a plug-in reference; raises ValueError for anything else."""
    if name in REGISTRY:
        return REGISTRY[name]
    if is_plugin_reference(name):
        return load_plugin(name)
    raise PluginError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}, or give a plug-in as {REFERENCE_FORMS}")


def model_name(model: Any) -> str:
    """The name a point records for a registry name, a plug-in reference or a plug-in class."""
    if isinstance(model, str):
        return resolve_spec(model).name
    reference = class_reference(model)
    # Checked as it is held, not imported again: a script's top level would run a second time.
    spec = plugin_from_class(model, reference, file_sha256(_module_file(reference)), sys.modules.get(model.__module__))
    _LOADED[reference] = spec
    return reference


def unsupported(spec: ModelSpec, mode: str) -> str | None:
    """Why ``spec`` cannot run ``mode``, or None when it can."""
    if mode == "infer" and isinstance(spec, PluginSpec) and not spec.has_predict:
        return f"no predict method: {model_label(spec.name)} cannot run infer mode"
    return None


def plugin_columns(spec: ModelSpec) -> dict:
    """The plug-in columns of a row (empty for a registry model)."""
    if not isinstance(spec, PluginSpec):
        return {}
    return {"plugin_ref": spec.reference, "plugin_sha256": spec.sha256}


def check_unchanged(frame: pd.DataFrame, models: list[str]) -> None:
    """Raises PluginError when a plug-in's file differs from the one ``frame``'s rows measured."""
    if "plugin_sha256" not in frame:
        return
    for name in models:
        if not is_plugin_reference(name):
            continue
        stored = set(frame.loc[frame["model"] == name, "plugin_sha256"].dropna().astype(str))
        current = file_sha256(_module_file(name))
        changed = sorted(stored - {current})
        if changed:
            raise PluginError(f"plug-in {model_label(name)} changed since its rows were measured (sha256 "
                              f"{changed[0][:12]} there, {str(current)[:12]} now); give another --out to measure it anew")
