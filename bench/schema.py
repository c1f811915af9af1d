"""The run record: every column and key a training run writes, defined once.

Writers (:mod:`bench.training`), the aggregate (:mod:`bench.reporting.summary`) and the figures
read these names from here; nothing else spells them. One run directory
``results/<profile>/runs/<problem>/<optimizer>/<seed>/`` holds:

``history.csv``
    one row per epoch (epoch 0 = before training): :func:`history_columns` (the fixed columns,
    with the evaluation split's name in two of them: ``test`` for training runs, ``valid`` for
    tune runs), then one column ``diag/<key>`` per key of the optimizer's ``diagnostics()``, in
    order of first appearance (empty where a row lacks it). Our optimizers log ``diag/eta/<subset>``
    (η_s in use), ``diag/solver_status``, ``diag/condition_number``, ``diag/usable_solves`` and
    ``diag/failed_solves`` (cumulative counts).
``metrics.json``
    :data:`METRICS_KEYS`: the last epoch's values (at divergence when diverged: never back-filled),
    the hyperparameters and the provenance record.
``probe.csv``
    for the probed optimizers, one row per (probe, subset): :data:`PROBE_COLUMNS`.

The aggregate's tidy table ``summary.csv`` has the columns :data:`SUMMARY_COLUMNS`.
"""

from __future__ import annotations

# -- history.csv ----------------------------------------------------------------------------
EPOCH, STEP, TRAIN_LOSS, WALL_CLOCK, LR, DIVERGED = (
    "epoch", "step", "train_loss", "wall_clock", "lr", "diverged",
)  # fmt: skip
DIAGNOSTICS_PREFIX = "diag/"  # history column of diagnostics() key k: "diag/" + k
ETA_KEY = "eta/"  # diagnostics() key of subset s: "eta/<subset>"
ETA_PREFIX = DIAGNOSTICS_PREFIX + ETA_KEY
USABLE_SOLVES = "usable_solves"  # diagnostics() key: recomputations that gave a step (cumulative)
TRAIN_SPLIT, TEST_SPLIT, VALID_SPLIT = "train", "test", "valid"


def loss_column(split: str) -> str:
    """``<split>_loss``: the mean loss on that split at the end of the epoch."""
    return f"{split}_loss"


def accuracy_column(split: str) -> str:
    """``<split>_accuracy``: the fraction of correct argmax predictions on that split."""
    return f"{split}_accuracy"


def history_columns(split: str = TEST_SPLIT) -> list[str]:
    """The fixed columns of history.csv, in file order, for evaluation split ``split``."""
    return [EPOCH, STEP, TRAIN_LOSS, loss_column(split), accuracy_column(split), WALL_CLOCK, LR,
            DIVERGED]  # fmt: skip


def diagnostic_column(key: str) -> str:
    """The history column of the optimizer's ``diagnostics()`` key ``key``."""
    return DIAGNOSTICS_PREFIX + key


# -- metrics.json ---------------------------------------------------------------------------
PROBLEM, OPTIMIZER, SEED, PROVENANCE = "problem", "optimizer", "seed", "provenance"
METRICS_KEYS = (
    "problem", "optimizer", "seed", "epochs", "steps", "final_train_loss", "final_test_loss",
    "final_test_accuracy", "best_test_accuracy", "wall_clock", "diverged", "diverged_epoch",
    "final_lr", "resumed_from_epoch", "hyperparameters", "provenance",
)  # fmt: skip
# The numeric metrics of metrics.json the aggregate reads (its per-run metrics start with them).
METRICS_FROM_JSON = (
    "final_train_loss", "final_test_loss", "final_test_accuracy", "best_test_accuracy",
    "wall_clock", "epochs", "steps", "diverged",
)  # fmt: skip
ACCURACY_METRICS = ("final_test_accuracy", "best_test_accuracy")  # fractions in [0, 1]

# -- probe.csv ------------------------------------------------------------------------------
PROBE_STEP, PROBE_SUBSET, PROBE_ETA, PROBE_STATUS = "step", "subset", "eta", "status"
PROBE_COLUMNS = (PROBE_STEP, PROBE_SUBSET, PROBE_ETA, "ratio", "g", "h", PROBE_STATUS)

# -- summary.csv ----------------------------------------------------------------------------
SUMMARY_COLUMNS = ("problem", "optimizer", "seed", "metric", "value")
