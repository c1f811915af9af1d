"""Figures of the report (matplotlib Agg through the object API, seaborn palette and style)
and the sentence that reads the probe figure.

Every figure function takes the runs of one problem (:class:`bench.reporting.runs.Run`), writes
one PNG and returns its path, or ``None`` when the data it needs is absent (the report says so).

Probe (METHOD.md §3): η*_s = (H̄⁻¹ḡ)_s computed along another optimizer's step u, so η*_s = 1 means
the step taken was the quadratic model's best for subset s. :func:`probe_sentence` classifies each
subset by its median η*_s over steps and seeds: > ``UNDER_STEP`` under-steps, < ``OVER_STEP`` (or
negative) over-steps.

Curves: the line is the mean over the *non-diverged* seeds at each epoch, the band their min–max
spread; against wall-clock, x is the mean over those seeds of the cumulative optimisation time at
the end of each epoch. Each diverged run is drawn alone (dotted, up to its last finite value, ×
where it diverged), never averaged in and never dropped.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FuncFormatter,
    LogFormatter,
    MaxNLocator,
    NullFormatter,
)
from PIL import Image  # noqa: E402

from bench import schema  # noqa: E402
from bench.reporting.comparisons import OURS, VARIANTS  # noqa: E402
from bench.reporting.runs import TEST_ACCURACY, Run  # noqa: E402
from bench.schema import PROBE_ETA, PROBE_STATUS, PROBE_SUBSET  # noqa: E402
from optimizers.subspace import OK_STATUSES  # noqa: E402

ABLATION = (OURS, *VARIANTS)  # our optimizer and its variants, in that order
ETA_PREFIX = schema.ETA_PREFIX  # history columns diag/eta/<subset>
EPOCH, WALL_CLOCK, TRAIN_LOSS = schema.EPOCH, schema.WALL_CLOCK, schema.TRAIN_LOSS
UNDER_STEP, OVER_STEP = 2.0, 0.5  # median η*_s above: under-steps; below (or < 0): over-steps
DPI = 90
LABEL_WIDTH = 14  # characters of a subset's tick label
MAX_WIDTH = 13.0  # inches: a wider figure is shrunk to the page's width (1150 px) unreadably


def file_stem(text: str) -> str:
    """A file-name-safe version of a problem or optimizer name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def colors(optimizers: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One fixed colour per optimizer name, the same in every figure."""
    names = sorted(set(optimizers))
    palette = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, palette, strict=True))


def _save(figure: Figure, path: Path, integer_x: Iterable[Axes]) -> Path:
    """Integer ticks on the ``integer_x`` axes (epochs, steps), tight layout, palette PNG."""
    for axes in integer_x:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return save_png(figure, path, DPI)


def save_png(figure: Figure, path: Path, dpi: int = DPI) -> Path:
    """Save ``figure`` as a palette PNG (256 colours, deterministic octree quantisation).

    Plots use few colours, so the palette image looks the same and is 3–4× smaller than
    matplotlib's RGBA output; the self-contained index.html embeds every figure, so this is
    what keeps the committed report small.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format="png", metadata={"Software": None})
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        palette.save(path, format="PNG", optimize=True)
    return path


def _by_optimizer(runs: Sequence[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.optimizer, []).append(run)
    return dict(sorted(grouped.items()))


def _positive(values: pd.Series) -> np.ndarray:
    array = values.to_numpy(dtype=np.float64, copy=True)
    array[~(np.isfinite(array) & (array > 0))] = np.nan
    return array


def _draw_runs(
    axes: Axes, runs: Sequence[Run], column: str, x: str, color, label: str, log: bool
) -> None:
    """Mean line and min–max band over the non-diverged runs; diverged runs one by one."""
    kept = [run for run in runs if not run.diverged]
    diverged = [run for run in runs if run.diverged]
    label = f"{label} ({len(diverged)}/{len(runs)} diverged)" if diverged else label
    if kept:
        frames = []
        for run in kept:
            values = run.history[column]
            frames.append(
                pd.DataFrame(
                    {
                        "epoch": run.history[EPOCH].to_numpy(),
                        "x": run.history[x].to_numpy(dtype=np.float64),
                        "y": _positive(values) if log else values.to_numpy(dtype=np.float64),
                    }
                )
            )
        grouped = pd.concat(frames).groupby("epoch")
        curve = pd.DataFrame(
            {
                "x": grouped["x"].mean(),
                "mean": grouped["y"].mean(),
                "low": grouped["y"].min(),
                "high": grouped["y"].max(),
            }
        )
        axes.plot(curve["x"], curve["mean"], color=color, label=label, linewidth=1.8)
        axes.fill_between(curve["x"], curve["low"], curve["high"], color=color, alpha=0.2)
        label = None
    for run in diverged:
        values = run.history[column]
        y = _positive(values) if log else values.to_numpy(dtype=np.float64)
        x_values = run.history[x].to_numpy(dtype=np.float64)
        axes.plot(x_values, y, color=color, linestyle=":", linewidth=1.2, label=label)
        label = None
        finite = np.flatnonzero(np.isfinite(y))
        if finite.size:
            axes.plot(x_values[finite[-1]], y[finite[-1]], marker="x", color=color, markersize=8)


def training_loss(runs: Sequence[Run], path: Path, palette: dict) -> Path | None:
    """Training loss (log scale) vs epoch and vs wall-clock, one line per optimizer."""
    if not runs:
        return None
    with sns.axes_style("whitegrid"):
        figure = Figure(figsize=(11, 4.2))
        by_epoch, by_time = figure.subplots(1, 2)
    for optimizer, cell in _by_optimizer(runs).items():
        for axes, x in ((by_epoch, EPOCH), (by_time, WALL_CLOCK)):
            _draw_runs(axes, cell, TRAIN_LOSS, x, palette[optimizer], optimizer, log=True)
    for axes, xlabel in ((by_epoch, "epoch"), (by_time, "wall-clock (s, optimisation only)")):
        axes.set_yscale("log")
        plain_log_ticks(axes)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("training loss (whole training split)")
    by_epoch.legend(fontsize=8)
    figure.suptitle(f"{runs[0].problem}: training loss (mean, min–max over seeds)")
    return _save(figure, path, [by_epoch])


def _epoch_figure(
    cells: dict[str, list[Run]], column: str, palette: dict, *, log: bool, ylabel: str, title: str,
    path: Path, plain_ticks: bool = False,
) -> Path:  # fmt: skip
    """One panel: ``column`` vs epoch, one line (and band) per optimizer of ``cells``;
    ``plain_ticks``: y tick labels as plain numbers (no 10^k on a log scale)."""
    with sns.axes_style("whitegrid"):
        figure = Figure(figsize=(7, 4.2))
        axes = figure.subplots()
    for optimizer, cell in cells.items():
        _draw_runs(axes, cell, column, EPOCH, palette[optimizer], optimizer, log=log)
    if log:
        axes.set_yscale("log")
    if plain_ticks:
        plain_log_ticks(axes)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=8)
    axes.set_title(title)
    return _save(figure, path, [axes])


def test_accuracy(runs: Sequence[Run], path: Path, palette: dict) -> Path | None:
    """Test accuracy (%) vs epoch, one line per optimizer (None: not an accuracy problem)."""
    if not runs or runs[0].quality != schema.ACCURACY:
        return None
    cells = {o: [_scaled_accuracy(r) for r in c] for o, c in _by_optimizer(runs).items()}
    title = f"{runs[0].problem}: test accuracy (mean, min–max over seeds)"
    return _epoch_figure(
        cells, TEST_ACCURACY, palette, log=False, ylabel="test accuracy (%)", title=title, path=path
    )


def test_perplexity(runs: Sequence[Run], path: Path, palette: dict) -> Path | None:
    """Test perplexity (log scale) vs epoch, one line per optimizer (None: not a language
    model)."""
    if not runs or runs[0].quality != schema.PERPLEXITY:
        return None
    column = runs[0].quality_column
    title = f"{runs[0].problem}: test perplexity (mean, min–max over seeds)"
    return _epoch_figure(
        _by_optimizer(runs), column, palette, log=True, ylabel="test perplexity per token",
        title=title, path=path, plain_ticks=True,
    )  # fmt: skip


def _scaled_accuracy(run: Run) -> Run:
    history = run.history.assign(**{TEST_ACCURACY: 100.0 * run.history[TEST_ACCURACY]})
    return dataclasses.replace(run, history=history)


def _cells_where(runs: Sequence[Run], has: Callable[[Run], bool]) -> dict[str, list[Run]]:
    """The runs by optimizer, keeping the optimizers with at least one run that ``has`` it."""
    return {o: cell for o, cell in _by_optimizer(runs).items() if any(has(r) for r in cell)}


def eta_columns(run: Run) -> list[str]:
    return [c for c in run.history.columns if c.startswith(ETA_PREFIX)]


def _tensor(name: str) -> str:
    return re.sub(r"\.weight$", ".w", re.sub(r"\.bias$", ".b", name))


def subset_label(name: str) -> str:
    """A subset as a person reads it: a tensor ``3.weight`` → ``3.w``; a joined subset
    (``a.weight+a.bias``) → the module path its tensors share (``a``: a per-module or per-block
    partition), or, sharing none, ``first…last (n)``."""
    parts = name.split("+")
    if len(parts) == 1:
        return _tensor(name)
    owners = [part.split(".")[:-1] for part in parts]
    shared = []
    for components in zip(*owners, strict=False):
        if len(set(components)) > 1:
            break
        shared.append(components[0])
    if shared:
        return ".".join(shared)
    return f"{_tensor(parts[0])}…{_tensor(parts[-1])} ({len(parts)})"


def short_subset(name: str) -> str:
    """:func:`subset_label` cut to :data:`LABEL_WIDTH` characters for a tick label: whole
    dotted components dropped from the left (``…0.attn.qkv``, at least two kept), else the
    characters on the left."""
    label = subset_label(name)
    if len(label) <= LABEL_WIDTH:
        return label
    components = label.split(".")
    for start in range(1, len(components) - 1):  # keep at least two components
        candidate = "…" + ".".join(components[start:])
        if len(candidate) <= LABEL_WIDTH:
            return candidate
    return "…" + label[-(LABEL_WIDTH - 1) :]


def tick_labels(names: Sequence[str]) -> list[str]:
    """:func:`short_subset` of each name, except that labels two subsets would share are given
    uncut (:func:`subset_label`), so that no two ticks read the same."""
    short = [short_subset(name) for name in names]
    counts = {label: short.count(label) for label in short}
    return [subset_label(n) if counts[label] > 1 else label for n, label in zip(names, short,
            strict=True)]  # fmt: skip


def plain_log_ticks(axes: Axes) -> None:
    """Plain-number labels on a log y-axis (``3``, ``0.02``, not ``3×10⁰``): the decades always,
    the ticks between them only when the axis spans less than about two decades (matplotlib's
    :class:`~matplotlib.ticker.LogFormatter` thresholds): a narrow range is labelled, a wide
    one not crowded."""
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def plain_number(value: float, _position=None) -> str:
    """A tick value as a plain number (no 10^k notation; a real minus sign)."""
    return f"{value:g}".replace("-", "−")


def readable_scale(axes: Axes, values: np.ndarray) -> None:
    """Log y-scale when every finite value is > 0, else symlog linear below the 5th percentile
    of the positive magnitudes (a power of ten); limits 6% of the drawn span beyond the extreme
    values (so no marker sits on the frame), from 0 when none is negative; plain-number tick
    labels."""
    finite = values[np.isfinite(values)]
    magnitudes = np.abs(finite[finite != 0])
    if finite.size and (finite > 0).all():
        axes.set_yscale("log")
    else:
        low = float(np.quantile(magnitudes, 0.05)) if magnitudes.size else 1.0
        axes.set_yscale("symlog", linthresh=10.0 ** math.floor(math.log10(low)))
    if finite.size:
        transform = axes.yaxis.get_transform()
        low_end, high_end = transform.transform(np.array([finite.min(), finite.max()]))
        pad = 0.06 * (high_end - low_end) or 0.5
        bottom, top = transform.inverted().transform(np.array([low_end - pad, high_end + pad]))
        axes.set_ylim(0.0 if finite.min() >= 0 and not (finite > 0).all() else bottom, top)
    axes.yaxis.set_major_formatter(FuncFormatter(plain_number))
    axes.yaxis.set_minor_formatter(NullFormatter())


def quartile_plot(axes: Axes, samples: dict[str, pd.DataFrame], palette: dict) -> np.ndarray:
    """Per subset (x, in order of first appearance) and group (colour, dodged): the median (dot)
    and the interquartile range (bar) of the ``value`` column of ``samples[group]`` (columns
    ``subset``, ``value``); returns every finite value drawn (for the scale)."""
    subsets = list(dict.fromkeys(s for frame in samples.values() for s in frame["subset"]))
    width = 0.8 / max(len(samples), 1)
    drawn = []
    for index, (group, frame) in enumerate(samples.items()):
        stats = frame.groupby("subset", sort=False)["value"].quantile([0.25, 0.5, 0.75])
        stats = stats.unstack().reindex(subsets)
        x = np.arange(len(subsets)) + (index - (len(samples) - 1) / 2) * width
        middle, low, high = (stats[q].to_numpy(dtype=np.float64) for q in (0.5, 0.25, 0.75))
        axes.errorbar(
            x, middle, yerr=[middle - low, high - middle], fmt="o", color=palette[group],
            label=group, capsize=3, markersize=5, linewidth=1.5,
        )  # fmt: skip
        drawn.append(stats.to_numpy(dtype=np.float64).ravel())
    slanted = {"rotation": 45, "ha": "right", "rotation_mode": "anchor"} if len(subsets) > 8 else {}
    axes.set_xticks(np.arange(len(subsets)), tick_labels(subsets), **slanted)
    axes.set_xlabel("parameter subset s")
    axes.legend(fontsize=8)
    return np.concatenate(drawn) if drawn else np.array([])


def _eta_samples(cell: Sequence[Run]) -> pd.DataFrame:
    """(subset, value) rows of η_s after epoch 0 over the non-diverged runs (all when none)."""
    kept = [run for run in cell if not run.diverged] or list(cell)
    frames = [
        run.history.loc[run.history[EPOCH] > 0, eta_columns(run)]
        .melt(var_name="subset", value_name="value")
        .assign(subset=lambda f: f["subset"].str.removeprefix(ETA_PREFIX))
        for run in kept
    ]
    frame = pd.concat(frames)
    return frame[np.isfinite(frame["value"].to_numpy(dtype=np.float64))]


def learning_rates(runs: Sequence[Run], path: Path, palette: dict) -> Path | None:
    """η_s per subset (median and quartiles over epochs ≥ 1 and non-diverged seeds), one colour
    per optimizer that writes ``diag/eta/<subset>`` columns; None when no run has them."""
    cells = _cells_where(runs, lambda run: bool(eta_columns(run)))
    if not cells:
        return None
    samples = {o: _eta_samples(cell) for o, cell in cells.items()}
    return _quartile_figure(
        samples, palette, path, ylabel="η_s (step size in use)",
        title=f"{runs[0].problem}: η_s of our optimizers (median, quartiles over epochs, seeds)",
    )  # fmt: skip


def _quartile_figure(
    samples: dict[str, pd.DataFrame], palette: dict, path: Path, *, ylabel: str, title: str,
    reference: float | None = None,
) -> Path:  # fmt: skip
    """One panel of :func:`quartile_plot` on :func:`readable_scale`, saved to ``path``."""
    subsets = {s for frame in samples.values() for s in frame["subset"]}
    with sns.axes_style("whitegrid"):
        figure = Figure(figsize=(min(max(7.5, 1.5 + 0.9 * len(subsets)), MAX_WIDTH), 4.6))
        axes = figure.subplots()
    values = quartile_plot(axes, samples, palette)
    if reference is not None:
        axes.axhline(reference, color="black", linewidth=1, linestyle="--")
        axes.axhline(0.0, color="grey", linewidth=0.8)
        values = np.append(values, reference)
    readable_scale(axes, values)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    return _save(figure, path, [])


def ablation(runs: Sequence[Run], path: Path, palette: dict) -> Path | None:
    """Training loss vs epoch of ours and its variants present (:data:`ABLATION`); None when no
    variant (other than ours) was run."""
    variants = [run for run in runs if run.optimizer in ABLATION]
    if not {run.optimizer for run in variants} - {OURS}:
        return None
    title = f"{runs[0].problem}: ablations (training loss)"
    return _epoch_figure(
        _by_optimizer(variants), TRAIN_LOSS, palette, log=True, ylabel="training loss",
        title=title, path=path,
    )  # fmt: skip


def usable_probe(probe: pd.DataFrame) -> pd.DataFrame:
    """Rows of probe.csv whose solver status is a usable step (``optimizers.subspace.OK_STATUSES``,
    e.g. ``newton``; all rows when there is no status column) and a finite η*."""
    usable = {status.value for status in OK_STATUSES}
    ok = probe[PROBE_STATUS].astype(str).isin(usable) if PROBE_STATUS in probe.columns else True
    values = pd.to_numeric(probe[PROBE_ETA], errors="coerce")
    return probe.loc[ok & np.isfinite(values.to_numpy(dtype=np.float64))]


def probe(runs: Sequence[Run], path: Path, palette: dict) -> Path | None:
    """η*_s per subset (median and quartiles over probes and seeds, usable rows), one colour
    per probed optimizer; the dashed line η* = 1 is the step taken."""
    cells = _cells_where(runs, lambda run: run.probe is not None)
    samples = {}
    for optimizer, cell in cells.items():
        frame = pd.concat([usable_probe(run.probe) for run in cell if run.probe is not None])
        if len(frame):
            samples[optimizer] = pd.DataFrame(
                {"subset": frame[PROBE_SUBSET].astype(str), "value": frame[PROBE_ETA]}
            ).astype({"value": np.float64})
    if not samples:
        return None
    return _quartile_figure(
        samples, palette, path, ylabel="η*_s (1 = the step taken)", reference=1.0,
        title=f"{runs[0].problem}: probe η*_s = (H̄⁻¹ḡ)_s (median, quartiles over probes, seeds)",
    )  # fmt: skip


def probe_sentence(optimizer: str, runs: Sequence[Run]) -> str:
    """Which subsets the optimizer over- or under-steps, from the median η*_s of its probe."""
    frames = [run.probe for run in runs if run.probe is not None]
    if not runs:
        return f"**{optimizer}**: absent (not run on this problem)."
    if not frames:
        return f"**{optimizer}**: absent (no probe.csv in its runs)."
    frame = pd.concat(frames)
    usable = usable_probe(frame)
    skipped = len(frame) - len(usable)
    if usable.empty:
        return f"**{optimizer}**: no usable probe row ({skipped} rows not 'ok' or non-finite η*)."
    medians = usable.groupby(usable[PROBE_SUBSET].astype(str))[PROBE_ETA].median().sort_index()
    name = {s: s if "+" not in s else subset_label(s) for s in medians.index}  # a module's
    under = [f"{name[s]} ({m:.3g})" for s, m in medians.items() if m > UNDER_STEP]
    over = [f"{name[s]} ({m:.3g})" for s, m in medians.items() if m < OVER_STEP]
    right = [name[s] for s, m in medians.items() if OVER_STEP <= m <= UNDER_STEP]
    parts = [
        f"under-steps (median η*_s > {UNDER_STEP:g}: a larger step would lower the local "
        f"quadratic model further) {', '.join(under) if under else 'no subset'}",
        f"over-steps (median η*_s < {OVER_STEP:g} or negative) "
        f"{', '.join(over) if over else 'no subset'}",
    ]
    if right:
        parts.append(f"about right (η*_s in [{OVER_STEP:g}, {UNDER_STEP:g}]): {', '.join(right)}")
    return (
        f"Along **{optimizer}** ({len(frames)} runs, {len(usable)} probe rows, {skipped} skipped "
        f"as not 'ok' or non-finite), it " + "; ".join(parts) + "."
    )
