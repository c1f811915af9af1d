"""params.yaml → one frozen :class:`Config`, validated once, before any stage does any work.

    from bench.config import load_config, ConfigError
    config = load_config("params.yaml")      # raises ConfigError(ValueError) naming the bad key

Every error names the file and the dotted key, e.g. ``params.yaml: train.epochs: expected int,
got 'ten'``. Checked: unknown keys (at every level), missing required keys, types (``true`` is not
an int, ``1`` is accepted as a float), ranges (learning rates > 0, epochs ≥ 1, …), optimizer names
against :func:`optimizers.registry.available`, problem names against
:data:`bench.problems.PROBLEMS`. A params file must give every key (dvc.yaml names them as
dependencies; no stage relies on a silent default), except inside ``optimizers.<name>`` and
``aggregate``. The dataclass defaults serve code that builds settings directly (tests).

The sections mirror the DVC stages (stage name = script name = params section: ``prepare``,
``tune``, ``train``, ``aggregate``, ``report``) plus the grid: ``profile`` (results go to
``results/<profile>/``), ``device``, ``problems``, ``seeds`` and ``optimizers`` (one section per
optimizer; the DVC matrix iterates over its keys, so editing one optimizer's section reruns only
that optimizer's cells).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A params file that does not describe a valid pipeline; the message names the key."""


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class PrepareConfig:
    """``prepare``: how each data set is cut before it is cached as an .npz."""

    seed: int = 0  # seed of the train/valid split (bench.data.load_arrays)
    max_train: int | None = None  # keep the first n training examples (None: all)
    max_test: int | None = None  # keep the first n test examples (None: all)


@dataclass(frozen=True)
class TuneConfig:
    """``tune``: the learning-rate grid search on the validation split (one seed)."""

    seed: int = 1000  # one seed, apart from the training seeds
    epochs_fraction: float = 0.5  # budget = max(1, ceil(fraction × the training epochs))


@dataclass(frozen=True)
class PlateauConfig:
    """``train.plateau``: halve λ1 (the global lr) when the epoch's training loss stalls (§4)."""

    threshold: float = 1e-4  # relative improvement that counts as progress
    patience: int = 2  # epochs without progress before the lr is multiplied by `factor`
    factor: float = 0.5
    scope: Literal["ours", "all", "none"] = "ours"  # ours = optimizers with a curvature batch


@dataclass(frozen=True)
class ProbeConfig:
    """``train.probe``: η* = H̄⁻¹ḡ (METHOD.md §3) along the step of these optimizers."""

    optimizers: tuple[str, ...] = ()
    every: int = 50  # steps between two probes
    batch_size: int = 100  # examples of the (unshuffled, cycled) probe batch


@dataclass(frozen=True)
class TrainConfig:
    """``train``: the budget and the mechanics of one training run."""

    epochs: int | None = None  # None: the problem's own number of epochs
    batch_size: int | None = None  # None: the problem's batch size
    curvature_batch_size: int | None = None  # B'; None: the problem's
    eval_batch_size: int = 1000  # chunk size of the end-of-epoch evaluations
    threads: int = 1  # torch.set_num_threads
    deterministic: bool = True  # torch.use_deterministic_algorithms(warn_only=True)
    progress: bool = True  # tqdm bars on stderr (also off when stderr is not a TTY)
    divergence_factor: float = 100.0  # diverged when train loss > factor × previous epoch's
    checkpoint_dir: str = ".checkpoints"  # resumable state, outside the DVC outs
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class RegisterConfig:
    """``optimizers.<name>.register``: a new registry entry defined in params alone.

    Give exactly one of ``torch_optimizer`` (dotted path of a ``torch.optim.Optimizer``
    subclass, built as ``cls(model.parameters(), **hyperparameters)``) and ``factory``
    (``"pkg.module:function"`` with the registry's signature ``factory(model, hyperparameters,
    criterion) -> TrainingOptimizer``). ``defaults`` lists every accepted hyperparameter
    (``lr`` included), ``lr_grid`` the learning rates the tune stage tries, ``grid`` extra
    tuning axes. See :func:`optimizers.registry.register_optimizer`.
    """

    torch_optimizer: str | None = None
    factory: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=_frozen)
    lr_grid: tuple[float, ...] = ()
    grid: Mapping[str, tuple[Any, ...]] | None = None
    description: str = ""


@dataclass(frozen=True)
class OptimizerConfig:
    """``optimizers.<name>``: fixed hyperparameters and the search grid of the tune stage.

    ``grid``: hyperparameter → values, searched as a Cartesian product (e.g. ``{lr: [0.01,
    0.1]}``); None: the registry spec's grid without the axes fixed in ``hyperparameters``.
    """

    hyperparameters: Mapping[str, Any] = field(default_factory=_frozen)
    grid: Mapping[str, tuple[Any, ...]] | None = None
    register: RegisterConfig | None = None  # define a new optimizer here (not a built-in name)


@dataclass(frozen=True)
class AggregateConfig:
    """``aggregate``: see :mod:`bench.aggregate`."""

    train_loss_target: Mapping[str, float] = field(default_factory=_frozen)


@dataclass(frozen=True)
class InvarianceConfig:
    """``invariance``: see :mod:`bench.invariance` (METHOD.md §6)."""

    optimizers: tuple[str, ...] = ()  # registry names; empty: every optimizer of `optimizers`
    steps: int = 40  # optimisation steps of model and twin
    batch_size: int = 32
    seed: int = 0  # model init and the affine maps
    dtype: Literal["float64", "float32"] = "float64"
    scale_range: float = 10.0  # a_s log-uniform in [1/scale_range, scale_range]
    shift_std: float = 0.1  # b_s ~ N(0, shift_std²)
    min_movement: float = 1e-3  # relative weight change below which invariance is not exercised
    overrides: Mapping[str, Any] = field(default_factory=_frozen)  # e.g. update_every, warmup


@dataclass(frozen=True)
class ScalingConfig:
    """``timing.scaling``: the projected-derivative sweeps of :mod:`bench.timing` (a tanh MLP)."""

    width: int = 128  # the base point of every sweep
    depth: int = 4
    batch: int = 64
    partitions: tuple[str, ...] = ("single", "blocks2", "per_module", "per_tensor")
    widths: tuple[int, ...] = (64, 128, 256)
    depths: tuple[int, ...] = (2, 4, 8)
    batches: tuple[int, ...] = (32, 64, 128)
    full_order3_max_subsets: int = 10  # the full order-3 tensor only up to this S
    rounds: int = 3


@dataclass(frozen=True)
class TimingConfig:
    """``timing``: see :mod:`bench.timing`."""

    optimizers: tuple[str, ...] = ()  # registry names; empty: every optimizer of `optimizers`
    period: int = 10  # steps timed together (ours recomputes once per period)
    rounds: int = 3
    memory: bool = True  # peak memory per optimizer, in a fresh process each
    scaling: ScalingConfig = field(default_factory=ScalingConfig)


@dataclass(frozen=True)
class ReportConfig:
    """``report``: no parameters yet (the section exists so the stage has one)."""


@dataclass(frozen=True)
class Config:
    profile: str
    problems: tuple[str, ...]
    seeds: tuple[int, ...]
    optimizers: Mapping[str, OptimizerConfig]
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    invariance: InvarianceConfig = field(default_factory=InvarianceConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    plugins: tuple[str, ...] = ()  # modules imported first (they may register problems/optimizers)
    raw: Mapping[str, Any] = field(default_factory=_frozen, repr=False, compare=False)

    # The results layout (docs: notes/PIPELINE_CONTRACTS.md), relative to ``root``.
    def results_dir(self, root: str | Path = "results") -> Path:
        return Path(root) / self.profile

    def data_path(self, dataset: str, root: str | Path = "results") -> Path:
        return self.results_dir(root) / "data" / f"{dataset}.npz"

    def tune_path(self, problem: str, optimizer: str, root: str | Path = "results") -> Path:
        return self.results_dir(root) / "tune" / problem / f"{optimizer}.json"

    def run_dir(
        self, problem: str, optimizer: str, seed: int, root: str | Path = "results"
    ) -> Path:
        return self.results_dir(root) / "runs" / problem / optimizer / str(seed)

    def checkpoint_path(self, problem: str, optimizer: str, seed: int) -> Path:
        return Path(self.train.checkpoint_dir) / self.profile / problem / optimizer / f"{seed}.pt"


# In a params file every key is required (dvc.yaml names them as params dependencies, and no
# stage relies on a silent default), except in these sections, whose keys may be left out.
OMISSIBLE = (OptimizerConfig, AggregateConfig, RegisterConfig)
OPTIONAL_TOP_LEVEL = ("plugins",)  # top-level keys that may be left out


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, Mapping | list) else type(value).__name__


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


class _Validator:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {key}: {message}")

    def value(self, annotation: Any, value: Any, key: str) -> Any:
        origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
        if origin in (types.UnionType, typing.Union):
            if value is None and type(None) in arguments:
                return None
            inner = [a for a in arguments if a is not type(None)]
            return self.value(inner[0], value, key)
        if origin is Literal:
            if value not in arguments:
                self.fail(key, f"expected one of {_type_name(annotation)}, got {value!r}")
            return value
        if dataclasses.is_dataclass(annotation):
            return self.dataclass(annotation, value, key)
        if origin is tuple:
            if not isinstance(value, list | tuple):
                self.fail(key, f"expected a list, got {_describe(value)}")
            return tuple(self.value(arguments[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if origin is Mapping or annotation is Mapping:
            if not isinstance(value, Mapping):
                self.fail(key, f"expected a mapping, got {_describe(value)}")
            value_type = arguments[1] if arguments else Any
            return _frozen(
                {str(k): self.value(value_type, v, f"{key}.{k}") for k, v in value.items()}
            )
        if annotation is Any:
            return value
        if annotation is bool:
            if not isinstance(value, bool):
                self.fail(key, f"expected bool, got {_describe(value)}")
            return value
        if annotation is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"expected int, got {_describe(value)}")
            return value
        if annotation is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(key, f"expected float, got {_describe(value)}")
            if not math.isfinite(value):
                self.fail(key, f"expected a finite float, got {value!r}")
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                self.fail(key, f"expected str, got {_describe(value)}")
            return value
        raise TypeError(f"config schema: unsupported annotation {annotation!r} at {key}")

    def dataclass(self, cls: type, value: Any, key: str, **extra: Any) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.fail(key or "(top level)", f"expected a mapping, got {_describe(value)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in extra}
        prefix = f"{key}." if key else ""
        for name in value:
            if name not in fields:
                known = ", ".join(sorted(fields))
                self.fail(f"{prefix}{name}", f"unknown key (known keys: {known})")
        arguments = dict(extra)
        for name in fields:
            if name in value:
                arguments[name] = self.value(hints[name], value[name], f"{prefix}{name}")
            elif cls not in OMISSIBLE:
                self.fail(f"{prefix}{name}", "missing required key")
        return cls(**arguments)


def _check_ranges(config: Config, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    def positive(key: str, value: float | None, strict: bool = True) -> None:
        if value is not None and (value <= 0 if strict else value < 0):
            fail(
                key, f"expected a {'positive' if strict else 'non-negative'} number, got {value!r}"
            )

    if not config.profile or not config.profile.replace("-", "").replace("_", "").isalnum():
        fail("profile", f"expected a name of letters, digits, '-' or '_', got {config.profile!r}")
    for key, values in (("problems", config.problems), ("seeds", config.seeds)):
        if not values:
            fail(key, "expected a non-empty list")
        if len(set(values)) != len(values):
            fail(key, f"duplicate entries in {list(values)}")
    for index, seed in enumerate(config.seeds):
        positive(f"seeds[{index}]", seed, strict=False)
    if not config.optimizers:
        fail("optimizers", "expected at least one optimizer section")

    def learning_rate(key: str, lr: Any) -> None:
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr):
            fail(key, f"expected float, got {lr!r}")
        positive(key, lr)

    for name, optimizer in config.optimizers.items():
        prefix = f"optimizers.{name}"
        if "lr" in optimizer.hyperparameters:
            learning_rate(f"{prefix}.hyperparameters.lr", optimizer.hyperparameters["lr"])
        for axis, values in (optimizer.grid or {}).items():
            if not values:
                fail(f"{prefix}.grid.{axis}", "expected a non-empty list")
            if axis in optimizer.hyperparameters:
                fail(
                    f"{prefix}.grid.{axis}", "also fixed in hyperparameters: give one or the other"
                )
            for index, value in enumerate(values if axis == "lr" else ()):
                learning_rate(f"{prefix}.grid.lr[{index}]", value)
    positive("prepare.seed", config.prepare.seed, strict=False)
    for key in ("max_train", "max_test"):
        positive(f"prepare.{key}", getattr(config.prepare, key))
    positive("tune.seed", config.tune.seed, strict=False)
    if not 0 < config.tune.epochs_fraction <= 1:
        fail(
            "tune.epochs_fraction",
            f"expected a fraction in (0, 1], got {config.tune.epochs_fraction}",
        )
    train = config.train
    for key in ("epochs", "batch_size", "curvature_batch_size", "eval_batch_size", "threads"):
        positive(f"train.{key}", getattr(train, key))
    if train.divergence_factor <= 1:
        fail("train.divergence_factor", f"expected a factor > 1, got {train.divergence_factor}")
    positive("train.plateau.threshold", train.plateau.threshold, strict=False)
    positive("train.plateau.patience", train.plateau.patience)
    if not 0 < train.plateau.factor < 1:
        fail("train.plateau.factor", f"expected a factor in (0, 1), got {train.plateau.factor}")
    positive("train.probe.every", train.probe.every)
    positive("train.probe.batch_size", train.probe.batch_size)
    for key, value in config.aggregate.train_loss_target.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(f"aggregate.train_loss_target.{key}", f"expected float, got {value!r}")
    invariance = config.invariance
    for key in ("steps", "batch_size", "shift_std", "min_movement"):
        positive(f"invariance.{key}", getattr(invariance, key), strict=key != "shift_std")
    positive("invariance.seed", invariance.seed, strict=False)
    timing = config.timing
    for key in ("period", "rounds"):
        positive(f"timing.{key}", getattr(timing, key))
    scaling = timing.scaling
    for key in ("width", "depth", "batch", "full_order3_max_subsets", "rounds"):
        positive(f"timing.scaling.{key}", getattr(scaling, key))
    for key in ("widths", "depths", "batches"):
        for index, value in enumerate(getattr(scaling, key)):
            positive(f"timing.scaling.{key}[{index}]", value)
    for index, name in enumerate(scaling.partitions):
        blocks = name.startswith("blocks") and name[len("blocks") :].isdigit()
        if name not in ("single", "per_module", "per_tensor", "weights_biases") and not blocks:
            fail(f"timing.scaling.partitions[{index}]", f"unknown partition {name!r}")
    if invariance.scale_range < 1:
        fail("invariance.scale_range", f"expected a number >= 1, got {invariance.scale_range}")


def _check_names(config: Config, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    """Optimizer and problem names against the registries (imported only here)."""
    from bench.problems import PROBLEMS
    from optimizers.registry import available, get_spec

    known_optimizers = set(available())
    for index, name in enumerate(config.timing.optimizers):
        if name not in known_optimizers:
            known = ", ".join(sorted(known_optimizers))
            fail(f"timing.optimizers[{index}]", f"unknown optimizer {name!r} (known: {known})")
    for index, name in enumerate(config.invariance.optimizers):
        if name not in known_optimizers:
            known = ", ".join(sorted(known_optimizers))
            fail(f"invariance.optimizers[{index}]", f"unknown optimizer {name!r} (known: {known})")
    for name, section in config.optimizers.items():
        if name not in known_optimizers:
            known = ", ".join(sorted(known_optimizers))
            fail(f"optimizers.{name}", f"unknown optimizer {name!r} (known: {known})")
        accepted = get_spec(name).defaults
        for part, keys in (("hyperparameters", section.hyperparameters), ("grid", section.grid)):
            for key in keys or ():
                if key not in accepted:
                    fail(
                        f"optimizers.{name}.{part}.{key}",
                        f"unknown hyperparameter of {name} (known: {', '.join(sorted(accepted))})",
                    )
    for index, name in enumerate(config.train.probe.optimizers):
        if name not in known_optimizers:
            fail(f"train.probe.optimizers[{index}]", f"unknown optimizer {name!r}")
    for index, name in enumerate(config.problems):
        if name not in PROBLEMS:
            known = ", ".join(sorted(PROBLEMS))
            fail(f"problems[{index}]", f"unknown problem {name!r} (known: {known})")
    for name in config.aggregate.train_loss_target:
        if name not in config.problems:
            fail(f"aggregate.train_loss_target.{name}", f"{name!r} is not in problems")


def parse_config(params: Any, source: str = "params.yaml", *, check_names: bool = True) -> Config:
    """Validate an already parsed params mapping (see :func:`load_config`)."""
    validator = _Validator(source)
    if not isinstance(params, Mapping):
        validator.fail("(top level)", f"expected a mapping, got {_describe(params)}")
    if "optimizers" not in params:
        validator.fail("optimizers", "missing required key")
    optimizers = params["optimizers"]
    if not isinstance(optimizers, Mapping):
        validator.fail(
            "optimizers", f"expected a mapping name → section, got {_describe(optimizers)}"
        )
    sections = {
        str(name): validator.dataclass(OptimizerConfig, section, f"optimizers.{name}")
        for name, section in optimizers.items()
    }
    plugins = validator.value(tuple[str, ...], params.get("plugins") or [], "plugins")
    rest = {key: value for key, value in params.items() if key not in ("optimizers", "plugins")}
    config = validator.dataclass(
        Config, rest, "", optimizers=_frozen(sections), plugins=plugins, raw=_frozen(params)
    )
    _check_ranges(config, validator.fail)
    if check_names:
        load_extensions(config, validator.fail)
        _check_names(config, validator.fail)
    return config


def load_extensions(
    config: Config, fail: typing.Callable[[str, str], typing.NoReturn] | None = None
) -> None:
    """Import ``plugins``, then register every ``optimizers.<name>.register`` entry.

    Idempotent: loading the same params twice in one process re-registers the same entries. A
    ``register`` section may not redefine a built-in optimizer. Errors name the params key.
    """
    import importlib

    from optimizers import registry

    if fail is None:
        fail = _Validator("params.yaml").fail
    for index, module in enumerate(config.plugins):
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - any failure of a user's module
            fail(f"plugins[{index}]", f"cannot import {module!r}: {type(error).__name__}: {error}")
    for name, section in config.optimizers.items():
        entry = section.register
        if entry is None:
            continue
        key = f"optimizers.{name}.register"
        existing = registry.get_spec(name) if name in registry.available() else None
        if existing is not None and existing.builtin:
            fail(key, f"{name!r} is a built-in optimizer: choose another name")
        if (entry.torch_optimizer is None) == (entry.factory is None):
            fail(key, "give exactly one of torch_optimizer and factory")
        options = {
            "defaults": dict(entry.defaults),
            "lr_grid": entry.lr_grid,
            "description": entry.description or (entry.torch_optimizer or entry.factory),
            "grid": entry.grid,
            "replace": existing is not None,
        }
        try:
            if entry.torch_optimizer is not None:
                registry.register_torch_optimizer(name, entry.torch_optimizer, **options)
            else:
                registry.register_optimizer(name, entry.factory, **options)
        except ValueError as error:
            fail(key, str(error))


def load_config(path: str | Path = "params.yaml", *, check_names: bool = True) -> Config:
    """Read and validate ``path``; :class:`ConfigError` (a ValueError) names the first bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the params file ({error.strerror})") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_config(params, str(path), check_names=check_names)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: device: 'cuda' requested but CUDA is not available")
    return device


def load_pipeline_config(path: str | Path = "params.yaml") -> Config:
    """What every stage and reader of params.yaml calls: read and validate the whole file, import
    its ``plugins`` and register its ``optimizers.<name>.register`` entries, then check every
    optimizer and problem name against the registries. :class:`ConfigError` names the key."""
    return load_config(path, check_names=True)
