"""params.yaml → one frozen :class:`Config`, validated before any stage does any work.

    from bench.config import load_pipeline_config, ConfigError
    config = load_pipeline_config("params.yaml")   # ConfigError(ValueError) naming the bad key

Every error names the file, the dotted key and the value, e.g. ``params.yaml: train.epochs:
expected int, got 'ten'``. Three steps, each explicit:

1. :func:`load_config` / :func:`parse_config` — reading and validation, no side effect: unknown
   keys (at every level), missing required keys, types (``true`` is not an int, ``1`` is accepted
   as a float) and the ranges of each field. Each section is a frozen dataclass that checks its own
   fields (``check()``, run on construction); the validator only converts the YAML values and adds
   the dotted key to a section's message.
2. :func:`load_extensions` — imports the ``plugins`` modules and registers the params-defined
   optimizers (``optimizers.<name>.register``): the only step that touches the global registries.
3. :func:`check_names` — optimizer and problem names against those registries.

:func:`load_pipeline_config` runs the three: every stage and every reader of params.yaml (the
aggregate and the report included) goes through it, so an invalid file stops every stage.

A params file gives every key (dvc.yaml names them as dependencies and no stage relies on a
silent default), except inside ``optimizers.<name>`` and ``aggregate``, whose keys may be left
out, and the top-level ``plugins``. So the sections' dataclasses have no defaults, except for
those omissible keys.

The sections mirror the DVC stages (stage name = script name = params section: ``prepare``,
``tune``, ``train``, ``invariance``, ``timing``, ``aggregate``, ``report``) plus the grid:
``profile`` (results go to ``results/<profile>/``, see :mod:`bench.layout`), ``device``,
``problems``, ``seeds`` and ``optimizers`` (one section per optimizer; the DVC matrix iterates over
its keys, so editing one optimizer's section reruns only that optimizer's cells). ``runtime``
holds the settings that change no result (progress bars, where checkpoints go): no stage lists it
as a DVC parameter and no fingerprint reads it, so changing it reruns nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml

from bench import layout
from bench.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "check_names",
    "load_config",
    "load_extensions",
    "load_pipeline_config",
    "parse_config",
    "parse_pipeline_config",
    "resolve_device",
]

PARTITION_NAMES = ("single", "per_module", "per_tensor", "weights_biases")  # and blocks<k>


class FieldError(ConfigError):
    """Raised by a section's ``check()``: ``key`` is relative to the section."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(mapping or {}))


# ----------------------------------------------------------------------------- field checks
def _positive(key: str, value: float | None, *, strict: bool = True) -> None:
    if value is not None and (value <= 0 if strict else value < 0):
        kind = "positive" if strict else "non-negative"
        raise FieldError(key, f"expected a {kind} number, got {value!r}")


def _fraction(key: str, value: float, *, low_open: bool, high_open: bool) -> None:
    low = value > 0 if low_open else value >= 0
    high = value < 1 if high_open else value <= 1
    if not (low and high):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise FieldError(key, f"expected a fraction in {interval}, got {value!r}")


def _each_positive(key: str, values: tuple[int, ...], high: int) -> None:
    for index, value in enumerate(values):
        _positive(f"{key}[{index}]", value)
        _at_most(f"{key}[{index}]", value, high)


# Sane bounds: values beyond these are mistakes (a seed that overflows int64 in the summary, a
# timing width that allocates tens of GB, a learning rate that overflows), refused at parse time
# instead of failing late, deep inside a stage, after hours of training.
SEED_MAX = 2**32 - 1
LR_MAX = 1e3
THREADS_MAX = 1024
EPOCHS_MAX = 100_000
BATCH_MAX = 1_000_000
STEPS_MAX = 1_000_000
MIN_EXAMPLES = 100  # prepare.max_train / max_test: fewer makes every number meaningless
WIDTH_MAX, DEPTH_MAX = 8192, 256  # timing.scaling: a width² × depth float MLP stays < ~1 GB
ROUNDS_MAX = 1000


def _at_most(key: str, value: float | None, high: float) -> None:
    if value is not None and value > high:
        raise FieldError(key, f"expected at most {high:g}, got {value!r}")


def _bounded(key: str, value: float | None, high: float) -> None:
    _positive(key, value)
    _at_most(key, value, high)


def _seed(key: str, value: int) -> None:
    if not 0 <= value <= SEED_MAX:
        raise FieldError(key, f"expected a seed in [0, 2**32 - 1], got {value!r}")


def _learning_rate(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FieldError(key, f"expected float, got {value!r}")
    _positive(key, value)
    _at_most(key, value, LR_MAX)


class _Section:
    """A params section: ``check()`` (run on construction) raises :class:`FieldError`."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:  # pragma: no cover - sections without checks
        pass


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class PrepareConfig(_Section):
    """``prepare``: how each data set is cut before it is cached as an .npz."""

    seed: int  # seed of the train/valid split (bench.data.load_arrays)
    max_train: int | None  # keep the first n training examples (None: all)
    max_test: int | None  # keep the first n test examples (None: all)

    def check(self) -> None:
        _seed("seed", self.seed)
        for key in ("max_train", "max_test"):
            value = getattr(self, key)
            if value is not None and value < MIN_EXAMPLES:
                raise FieldError(key, f"expected null or at least {MIN_EXAMPLES}, got {value!r}")


@dataclass(frozen=True)
class TuneConfig(_Section):
    """``tune``: the learning-rate grid search on the validation split (one seed)."""

    seed: int  # one seed, apart from the training seeds
    epochs_fraction: float  # budget = max(1, ceil(fraction × the training epochs))

    def check(self) -> None:
        _seed("seed", self.seed)
        _fraction("epochs_fraction", self.epochs_fraction, low_open=True, high_open=False)


@dataclass(frozen=True)
class PlateauConfig(_Section):
    """``train.plateau``: halve λ1 (the global lr) when the epoch's training loss stalls (§4)."""

    threshold: float  # relative improvement that counts as progress
    patience: int  # epochs without progress before the lr is multiplied by `factor`
    factor: float
    scope: Literal["ours", "all", "none"]  # ours = optimizers with a curvature batch

    def check(self) -> None:
        _positive("threshold", self.threshold, strict=False)
        _bounded("patience", self.patience, EPOCHS_MAX)
        _fraction("factor", self.factor, low_open=True, high_open=True)


@dataclass(frozen=True)
class ProbeConfig(_Section):
    """``train.probe``: η* = H̄⁻¹ḡ (METHOD.md §3) along the step of these optimizers."""

    optimizers: tuple[str, ...]
    every: int  # steps between two probes
    batch_size: int  # examples of the (unshuffled, cycled) probe batch

    def check(self) -> None:
        _bounded("every", self.every, STEPS_MAX)
        _bounded("batch_size", self.batch_size, BATCH_MAX)


@dataclass(frozen=True)
class TrainConfig(_Section):
    """``train``: the budget and the mechanics of one training run (all of it changes results)."""

    epochs: int | None  # None: the problem's own number of epochs
    batch_size: int | None  # None: the problem's batch size
    curvature_batch_size: int | None  # B'; None: the problem's
    eval_batch_size: int  # chunk size of the end-of-epoch evaluations
    threads: int  # torch.set_num_threads (float results depend on it)
    deterministic: bool  # torch.use_deterministic_algorithms(warn_only=True)
    divergence_factor: float  # diverged when train loss > factor × previous epoch's
    plateau: PlateauConfig
    probe: ProbeConfig

    def check(self) -> None:
        for key in ("epochs", "batch_size", "curvature_batch_size", "eval_batch_size", "threads"):
            _positive(key, getattr(self, key))
        _at_most("epochs", self.epochs, EPOCHS_MAX)
        for key in ("batch_size", "curvature_batch_size", "eval_batch_size"):
            _at_most(key, getattr(self, key), BATCH_MAX)
        _at_most("threads", self.threads, THREADS_MAX)
        if self.divergence_factor <= 1:
            raise FieldError(
                "divergence_factor", f"expected a factor > 1, got {self.divergence_factor!r}"
            )


@dataclass(frozen=True)
class RuntimeConfig(_Section):
    """``runtime``: how a run is carried out, never what it computes (no DVC parameter, no
    fingerprint reads it: changing it reruns nothing)."""

    progress: bool  # tqdm bars on stderr (also off when stderr is not a TTY)
    checkpoint_dir: str  # resumable state, outside the DVC outs
    # may be omitted: processes a train cell runs its seeds in, and a tune cell its grid points
    # (each run is a function of its seed alone: the results do not depend on it)
    workers: int = 1

    def check(self) -> None:
        if not self.checkpoint_dir:
            raise FieldError("checkpoint_dir", "expected a directory, got ''")
        _bounded("workers", self.workers, THREADS_MAX)


@dataclass(frozen=True)
class RegisterConfig(_Section):
    """``optimizers.<name>.register``: a new registry entry defined in params alone.

    Give exactly one of ``torch_optimizer`` (dotted path of a ``torch.optim.Optimizer``
    subclass, built as ``cls(model.parameters(), **hyperparameters)``) and ``factory``
    (``"pkg.module:function"`` with the registry's signature ``factory(model, hyperparameters,
    criterion) -> TrainingOptimizer``). ``defaults`` lists every accepted hyperparameter
    (``lr`` included), ``lr_grid`` the learning rates the tune stage tries, ``grid`` extra
    tuning axes. See :func:`optimizers.registry.register_optimizer`. Every key may be omitted.
    """

    torch_optimizer: str | None = None
    factory: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=_frozen)
    lr_grid: tuple[float, ...] = ()
    grid: Mapping[str, tuple[Any, ...]] | None = None
    description: str = ""

    def check(self) -> None:
        if (self.torch_optimizer is None) == (self.factory is None):
            raise FieldError("(section)", "give exactly one of torch_optimizer and factory")


@dataclass(frozen=True)
class OptimizerConfig(_Section):
    """``optimizers.<name>``: fixed hyperparameters and the search grid of the tune stage.

    ``grid``: hyperparameter → values, searched as a Cartesian product (e.g. ``{lr: [0.01,
    0.1]}``); None: the registry spec's grid without the axes fixed in ``hyperparameters``.
    Every key may be omitted.
    """

    hyperparameters: Mapping[str, Any] = field(default_factory=_frozen)
    grid: Mapping[str, tuple[Any, ...]] | None = None
    register: RegisterConfig | None = None  # define a new optimizer here (not a built-in name)

    def check(self) -> None:
        if "lr" in self.hyperparameters:
            _learning_rate("hyperparameters.lr", self.hyperparameters["lr"])
        for axis, values in (self.grid or {}).items():
            if not values:
                raise FieldError(f"grid.{axis}", "expected a non-empty list")
            if axis in self.hyperparameters:
                raise FieldError(
                    f"grid.{axis}", "also fixed in hyperparameters: give one or the other"
                )
            for index, value in enumerate(values if axis == "lr" else ()):
                _learning_rate(f"grid.lr[{index}]", value)


@dataclass(frozen=True)
class AggregateConfig(_Section):
    """``aggregate``: see :mod:`bench.reporting`; ``train_loss_target`` may be omitted."""

    train_loss_target: Mapping[str, float] = field(default_factory=_frozen)

    def check(self) -> None:
        for key, value in self.train_loss_target.items():
            if not (math.isfinite(value) and value > 0):
                raise FieldError(f"train_loss_target.{key}", f"expected a loss > 0, got {value!r}")


@dataclass(frozen=True)
class InvarianceConfig(_Section):
    """``invariance``: see :mod:`bench.studies.invariance` (METHOD.md §6)."""

    optimizers: tuple[str, ...]  # registry names; empty: every optimizer of `optimizers`
    steps: int  # optimisation steps of model and twin
    batch_size: int
    seed: int  # model init and the affine maps
    dtype: Literal["float64", "float32"]
    scale_range: float  # a_s log-uniform in [1/scale_range, scale_range]
    shift_std: float  # b_s ~ N(0, shift_std²)
    min_movement: float  # relative weight change below which invariance is not exercised
    overrides: Mapping[str, Any]  # e.g. update_every, warmup

    def check(self) -> None:
        for key in ("steps", "batch_size", "min_movement"):
            _positive(key, getattr(self, key))
        _at_most("steps", self.steps, STEPS_MAX)
        _at_most("batch_size", self.batch_size, BATCH_MAX)
        _positive("shift_std", self.shift_std, strict=False)
        _seed("seed", self.seed)
        if self.scale_range < 1:
            raise FieldError("scale_range", f"expected a number >= 1, got {self.scale_range!r}")


@dataclass(frozen=True)
class ScalingConfig(_Section):
    """``timing.scaling``: the projected-derivative sweeps of :mod:`bench.studies.timing`."""

    width: int  # the base point of every sweep
    depth: int
    batch: int
    partitions: tuple[str, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    batches: tuple[int, ...]
    full_order3_max_subsets: int  # the full order-3 tensor only up to this S
    rounds: int

    def check(self) -> None:
        for key in ("width", "depth", "batch", "full_order3_max_subsets", "rounds"):
            _positive(key, getattr(self, key))
        sweeps = {"width": ("widths", WIDTH_MAX), "depth": ("depths", DEPTH_MAX),
                  "batch": ("batches", BATCH_MAX)}  # fmt: skip
        for key, (sweep, high) in sweeps.items():
            _at_most(key, getattr(self, key), high)
            _each_positive(sweep, getattr(self, sweep), high)
        _at_most("full_order3_max_subsets", self.full_order3_max_subsets, 64)
        _at_most("rounds", self.rounds, ROUNDS_MAX)
        for index, name in enumerate(self.partitions):
            blocks = name.startswith("blocks") and name[len("blocks") :].isdigit()
            if name not in PARTITION_NAMES and not blocks:
                raise FieldError(f"partitions[{index}]", f"unknown partition {name!r}")


@dataclass(frozen=True)
class TimingConfig(_Section):
    """``timing``: see :mod:`bench.studies.timing`."""

    optimizers: tuple[str, ...]  # registry names; empty: every optimizer of `optimizers`
    period: int  # steps timed together (ours recomputes once per period)
    rounds: int
    memory: bool  # peak memory per optimizer, in a fresh process each
    scaling: ScalingConfig

    def check(self) -> None:
        _bounded("period", self.period, STEPS_MAX)
        _bounded("rounds", self.rounds, ROUNDS_MAX)


@dataclass(frozen=True)
class CompareConfig(_Section):
    """``compare``: the tolerances of ``python -m bench.compare`` (:mod:`bench.compare`); no
    stage reads it. Every key may be omitted (these defaults)."""

    loss_tolerance: float = 0.05  # final training loss, relative to the baseline mean
    accuracy_tolerance: float = 0.01  # final test accuracy, absolute (a fraction)
    perplexity_tolerance: float = 0.05  # final test perplexity (a language model's), relative
    epochs_tolerance: float = 0.25  # time to target in epochs, relative
    speed_tolerance: float = 0.3  # step cost × SGD, relative
    memory_tolerance: float = 0.2  # peak memory, relative
    target_tolerance: float = 0.001  # targets this close (relative) are one target
    confidence: float = 0.95  # of each one-sided t bound

    def check(self) -> None:
        for key in ("loss_tolerance", "epochs_tolerance", "speed_tolerance", "memory_tolerance",
                    "target_tolerance", "perplexity_tolerance"):  # fmt: skip
            _positive(key, getattr(self, key), strict=False)
        _fraction("accuracy_tolerance", self.accuracy_tolerance, low_open=False, high_open=False)
        if not 0.5 < self.confidence < 1:
            raise FieldError(
                "confidence", f"expected a confidence in (0.5, 1), got {self.confidence!r}"
            )


@dataclass(frozen=True)
class ProblemSettings(_Section):
    """``problem_settings.<problem>``: that problem's own budget and partition, over the train
    section's (for every cell of the problem: tune and train). Every key may be omitted; an
    omitted one falls back to ``train.<key>``, then to the problem's own (bench.problems). A
    ``partition`` is used by the optimizers that take one, unless ``optimizers.<name>.
    hyperparameters`` fixes theirs."""

    epochs: int | None = None
    batch_size: int | None = None
    curvature_batch_size: int | None = None
    partition: str | None = None
    # the first n examples of the training split (None: all of it); validation and test
    # splits are never cut, so every problem is scored on the same examples as before
    train_size: int | None = None

    def check(self) -> None:
        _bounded("epochs", self.epochs, EPOCHS_MAX)
        if self.train_size is not None and self.train_size < MIN_EXAMPLES:
            raise FieldError(
                "train_size", f"expected null or at least {MIN_EXAMPLES}, got {self.train_size!r}"
            )
        _bounded("batch_size", self.batch_size, BATCH_MAX)
        _bounded("curvature_batch_size", self.curvature_batch_size, BATCH_MAX)
        name = self.partition
        if (
            name is not None
            and name not in PARTITION_NAMES
            and not (name.startswith("blocks") and name[len("blocks") :].isdigit())
        ):
            raise FieldError("partition", f"unknown partition {name!r} ({PARTITION_NAMES})")


@dataclass(frozen=True)
class ReportConfig(_Section):
    """``report``: no parameters yet (the section exists so the stage has one)."""


@dataclass(frozen=True)
class Config(_Section):
    """The whole params file. The results layout is :mod:`bench.layout`'s (methods below)."""

    profile: str
    device: Literal["cpu", "cuda", "auto"]
    problems: tuple[str, ...]
    seeds: tuple[int, ...]
    optimizers: Mapping[str, OptimizerConfig]
    prepare: PrepareConfig
    tune: TuneConfig
    train: TrainConfig
    runtime: RuntimeConfig
    aggregate: AggregateConfig
    invariance: InvarianceConfig
    timing: TimingConfig
    report: ReportConfig
    compare: CompareConfig = field(default_factory=CompareConfig)  # may be omitted
    plugins: tuple[str, ...] = ()  # may be omitted: modules imported by load_extensions
    # may be omitted: per-problem budget and partition (ProblemSettings)
    problem_settings: Mapping[str, ProblemSettings] = field(default_factory=_frozen)
    raw: Mapping[str, Any] = field(default_factory=_frozen, repr=False, compare=False)
    # The project folder: the params file's. Relative paths of a run (results, checkpoints) are
    # taken from it, whatever the current directory (not a params key).
    root: Path = field(default=Path("."), repr=False, compare=False)

    def check(self) -> None:
        if not layout.valid_profile(self.profile):
            raise FieldError(
                "profile", f"expected a name of letters, digits, '-' or '_', got {self.profile!r}"
            )
        for key, values in (("problems", self.problems), ("seeds", self.seeds)):
            if not values:
                raise FieldError(key, "expected a non-empty list")
            if len(set(values)) != len(values):
                raise FieldError(key, f"duplicate entries in {list(values)}")
        for index, seed in enumerate(self.seeds):
            _seed(f"seeds[{index}]", seed)
        if not self.optimizers:
            raise FieldError("optimizers", "expected at least one optimizer section")
        for name in self.problem_settings:
            if name not in self.problems:
                raise FieldError(
                    f"problem_settings.{name}", f"not in problems {list(self.problems)}"
                )

    def settings_of(self, problem: str) -> ProblemSettings:
        """``problem_settings.<problem>`` (every key None when the problem has none)."""
        return self.problem_settings.get(problem, ProblemSettings())

    # The results layout (bench/layout.py), relative to ``root``.
    def results_dir(self, root: str | Path = layout.RESULTS) -> Path:
        return layout.results_dir(self.profile, root)

    def data_path(self, dataset: str, root: str | Path = layout.RESULTS) -> Path:
        return layout.data_path(self.profile, dataset, root)

    def tune_path(self, problem: str, optimizer: str, root: str | Path = layout.RESULTS) -> Path:
        return layout.tune_path(self.profile, problem, optimizer, root)

    def run_dir(
        self, problem: str, optimizer: str, seed: int, root: str | Path = layout.RESULTS
    ) -> Path:
        return layout.run_dir(self.profile, problem, optimizer, seed, root)

    def checkpoint_path(self, problem: str, optimizer: str, seed: int) -> Path:
        folder = self.root / self.runtime.checkpoint_dir  # an absolute dir stays as it is
        return layout.checkpoint_path(folder, self.profile, problem, optimizer, seed)

    def project_path(self, path: str | Path | None, default: str) -> Path:
        """``path`` (a command-line folder), or ``default`` inside the project folder."""
        return Path(path) if path is not None else self.root / default


# Sections whose keys may be left out (their dataclasses have defaults), and top-level keys.
OMISSIBLE = (OptimizerConfig, AggregateConfig, RegisterConfig, CompareConfig, ProblemSettings)
OMISSIBLE_KEYS = {(RuntimeConfig, "workers")}  # keys added later: older params files lack them
OPTIONAL_TOP_LEVEL = ("plugins", "compare", "problem_settings")
# Keys that moved: an old params file gets told where they went.
MOVED = {"train.progress": "runtime.progress", "train.checkpoint_dir": "runtime.checkpoint_dir"}


# ----------------------------------------------------------------------------- the validator
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
    """YAML values → the sections' field types; every message gets the file and dotted key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> NoReturn:
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
            return self.section(annotation, value, key)
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
        return self.scalar(annotation, value, key)

    def scalar(self, annotation: type, value: Any, key: str) -> Any:
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

    def section(self, cls: type, value: Any, key: str, **given: Any) -> Any:
        """Build section ``cls`` from mapping ``value`` at dotted ``key`` (``given``: fields
        already converted by the caller); the section's own ``check()`` runs on construction."""
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.fail(key or "(top level)", f"expected a mapping, got {_describe(value)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in given}
        fields.pop("raw", None)
        fields.pop("root", None)
        prefix = f"{key}." if key else ""
        for name in value:
            if name not in fields:
                moved = MOVED.get(f"{prefix}{name}")
                hint = f"moved to {moved}" if moved else f"known keys: {', '.join(sorted(fields))}"
                self.fail(f"{prefix}{name}", f"unknown key ({hint})")
        arguments = dict(given)
        for name in fields:
            if name in value:
                arguments[name] = self.value(hints[name], value[name], f"{prefix}{name}")
            elif (
                cls not in OMISSIBLE
                and name not in OPTIONAL_TOP_LEVEL
                and (cls, name) not in OMISSIBLE_KEYS
            ):
                self.fail(f"{prefix}{name}", "missing required key")
        try:
            return cls(**arguments)
        except FieldError as error:
            where = key if error.key == "(section)" else f"{prefix}{error.key}"
            self.fail(where or "(top level)", error.message)


def parse_config(params: Any, source: str = "params.yaml", root: str | Path = ".") -> Config:
    """Validate an already parsed params mapping (no side effect; see the module docstring);
    ``root`` is the project folder (the params file's)."""
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
        str(name): validator.section(OptimizerConfig, section, f"optimizers.{name}")
        for name, section in optimizers.items()
    }
    rest = {key: value for key, value in params.items() if key != "optimizers"}
    return validator.section(
        Config, rest, "", optimizers=_frozen(sections), raw=_frozen(params), root=Path(root)
    )


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: where the YAML parser stopped and why."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (f"{problem} ({context})" if context else problem)


def _first_difference(ours: Any, theirs: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key where two readings of one YAML file differ (type or value)."""
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        for name in ours:
            inner = f"{key}.{name}" if key else str(name)
            found = (
                _first_difference(ours[name], theirs.get(name), inner) if name in theirs else None
            )
            if found:
                return found
        return None
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            found = _first_difference(a, b, f"{key}[{index}]")
            if found:
                return found
        return None
    same = type(ours) is type(theirs) and (ours == theirs or ours != ours and theirs != theirs)
    return None if same else (key or "(top level)", ours, theirs)


def _check_yaml_versions_agree(text: str, params: Any, source: str) -> None:
    """Refuse a value that PyYAML (YAML 1.1, the stages' reader) and ruamel (YAML 1.2, DVC's
    reader of the same file for its params dependencies) read differently: ``yes``/``on``
    (booleans to one, strings to the other), ``1e23`` (a string to one, a float to the other),
    ``010`` (octal to one), ... Without DVC installed there is no second reader: nothing to do."""
    try:
        from ruamel.yaml import YAML
    except ImportError:  # pragma: no cover - dvc (and so ruamel) is a dependency of the bench
        return
    try:
        theirs = YAML(typ="safe", pure=True).load(text)
    except Exception:  # noqa: BLE001 - a file ruamel cannot read at all
        raise ConfigError(f"{source}: DVC's YAML 1.2 reader cannot read this file") from None
    found = _first_difference(params, theirs)
    if found is not None:
        key, ours, other = found
        raise ConfigError(
            f"{source}: {key}: read as {ours!r} by PyYAML (YAML 1.1, the stages) but as "
            f"{other!r} by DVC (YAML 1.2): write it so both agree (quote a string, write "
            "true/false, give a float a '.' as in 1.0e+23)"
        )


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate ``path`` (no side effect); :class:`ConfigError` names the first bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the params file ({error.strerror})") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    _check_yaml_versions_agree(text, params, str(path))
    return parse_config(params, str(path), root=layout.project_root(path))


def load_extensions(config: Config, source: str = "params.yaml") -> Config:
    """Import ``plugins``, then register every ``optimizers.<name>.register`` entry; return config.

    Idempotent: loading the same params twice in one process re-registers the same entries. A
    ``register`` section may not redefine a built-in optimizer. Errors name the params key.
    """
    from optimizers import registry

    fail = _Validator(source).fail
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
    return config


def _known_optimizer(fail, key: str, name: str, known: set[str]) -> None:
    if name not in known:
        fail(key, f"unknown optimizer {name!r} (known: {', '.join(sorted(known))})")


def _kind(value: Any) -> str | None:
    """The kind a hyperparameter's default fixes for its values (None: any value)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, tuple | list):
        return "list"
    return None


def _check_hyperparameters(fail, name: str, section: OptimizerConfig, accepted) -> None:
    """Each fixed or swept hyperparameter is one of ``accepted`` (the registry defaults) and of
    its default's kind (a number where the default is a number, ...); numbers are finite."""
    values = [
        ("hyperparameters", key, key, value) for key, value in section.hyperparameters.items()
    ]
    for axis, points in (section.grid or {}).items():
        values += [("grid", axis, f"{axis}[{i}]", value) for i, value in enumerate(points)]
    for part, key, where, value in values:
        if key not in accepted:
            known = ", ".join(sorted(accepted))
            fail(
                f"optimizers.{name}.{part}.{key}",
                f"unknown hyperparameter of {name} (known: {known})",
            )
        kind = _kind(accepted[key])
        if value is None or kind is None:
            continue
        if _kind(value) != kind or (kind == "number" and not math.isfinite(value)):
            default = accepted[key]
            fail(
                f"optimizers.{name}.{part}.{where}",
                f"expected a {'finite number' if kind == 'number' else kind} like the default "
                f"{default!r}, got {value!r}",
            )


def check_names(config: Config, source: str = "params.yaml") -> Config:
    """Optimizer and problem names against the registries (after :func:`load_extensions`)."""
    from bench.problems import PROBLEMS
    from optimizers.registry import available, get_spec

    fail = _Validator(source).fail
    known = set(available())
    for index, name in enumerate(config.timing.optimizers):
        _known_optimizer(fail, f"timing.optimizers[{index}]", name, known)
    for index, name in enumerate(config.invariance.optimizers):
        _known_optimizer(fail, f"invariance.optimizers[{index}]", name, known)
    for index, name in enumerate(config.train.probe.optimizers):
        _known_optimizer(fail, f"train.probe.optimizers[{index}]", name, known)
    for name, section in config.optimizers.items():
        _known_optimizer(fail, f"optimizers.{name}", name, known)
        _check_hyperparameters(fail, name, section, get_spec(name).defaults)
    for index, name in enumerate(config.problems):
        if name not in PROBLEMS:
            fail(
                f"problems[{index}]",
                f"unknown problem {name!r} (known: {', '.join(sorted(PROBLEMS))})",
            )
    for name in config.aggregate.train_loss_target:
        if name not in config.problems:
            fail(f"aggregate.train_loss_target.{name}", f"{name!r} is not in problems")
    return config


def parse_pipeline_config(params: Any, source: str = "params.yaml") -> Config:
    """:func:`parse_config`, then :func:`load_extensions` and :func:`check_names`."""
    return check_names(load_extensions(parse_config(params, source), source), source)


def load_pipeline_config(path: str | Path = "params.yaml") -> Config:
    """What every stage and reader of params.yaml calls: read and validate the whole file, import
    its ``plugins`` and register its ``optimizers.<name>.register`` entries, then check every
    optimizer and problem name against the registries. :class:`ConfigError` names the key."""
    config = load_config(path)
    _check_code_is_the_projects(config, str(path))
    return check_names(load_extensions(config, str(path)), str(path))


def _check_code_is_the_projects(config: Config, source: str) -> None:
    """Refuse to run a project's stages with another checkout's code: a params file whose folder
    holds a ``bench`` package other than the one running (e.g. a stage started from another
    directory, importing an installed copy) would mix one project's params with other code."""
    import bench

    theirs = config.root / "bench" / "__init__.py"
    ours = Path(bench.__file__).resolve()
    if theirs.is_file() and theirs.resolve() != ours:
        raise ConfigError(
            f"{source}: this params file belongs to the project {config.root}, but the code "
            f"running is {ours.parent.parent}: run the stage from {config.root} "
            "(cd there first) with that project's environment"
        )


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without CUDA is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: device: 'cuda' requested but CUDA is not available")
    return device
