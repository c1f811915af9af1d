"""A per-subset learning-rate probe for any optimizer (METHOD.md §3, application 1)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .flatness import flat_subsets, projected_derivatives_with_flatness
from .partition import get_partition, per_tensor, trainable_names, validate_groups
from .subspace import SolverStatus, subspace_step

__all__ = ["LearningRateProbe"]

ProbeLoss = Callable[[dict[str, Tensor]], Tensor]


class LearningRateProbe:
    r"""Which subsets (layers) get too large or too small a step from *any* optimizer.

    Every ``every``-th step, the step the optimizer actually took is taken as the direction,
    u = θ_t − θ_{t+1} (so the optimizer's own step is η = 1 in θ_s ← θ_s − η_s u_s), and the
    quadratic model of a probe loss L' at θ_t along the S subsets is solved:

        L'(θ_t − Σ_s η_s u_s) ≈ L'(θ_t) − ḡᵀη + ½ ηᵀH̄η,    η* = H̄⁻¹ḡ,

    with ḡ [S] and H̄ [S, S] from ``projected_derivatives(probe_loss, θ_t, subsets, u, order=2)``
    (1 + S reverse passes through one forward pass of the probe batch) and η* from
    ``subspace_step(ḡ, H̄)`` (λ_int = 0, in float64; its status is recorded). A subset along
    which the probe loss is numerically constant (``optimizers.flatness``: a conv bias before a
    BatchNorm) is left out of the solve, η*_s = NaN for it, and the others are solved without it
    (status ``flat_subset``). The per-subset
    ratio ḡ_s / H̄_ss is the step that subset would want alone (cross-subset terms ignored).

    Reading η*_s: ≈ 1, subset s already gets the step the quadratic model wants; ≫ 1, its step
    is too small (its learning rate could grow by about η*_s); ≪ 1, too large; < 0, the step
    went uphill along u_s on the probe batch. η* is only meaningful when H̄ ≻ 0 (status
    ``newton``, or ``flat_subset`` with the others' H̄ ≻ 0); otherwise η is NaN in the records
    and ``status`` says why.

    Usage, around the training of any optimizer (SGD here)::

        probe = LearningRateProbe(model, every=50)             # one subset per tensor
        probe_loss = functional_loss(model, F.cross_entropy, x_probe, y_probe)
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            probe.before_step()                                # snapshot θ_t when due
            optimizer.step()
            probe.after_step(probe_loss)                       # derivatives at θ_t along u
        table = pandas.DataFrame(probe.records)                # step, subset, eta, ratio, g, h,
                                                               # status
    Args:
        model: the trained model; its trainable parameters are read, never written.
        probe_loss: optional default ``probe_loss(params) -> Tensor`` (a fixed probe batch);
            ``after_step`` may pass another one each time.
        every: probe every ``every``-th step (steps counted by ``after_step`` calls).
        partition: a function of the model (``optimizers.partition``), its name, or a list of
            lists of parameter names.

    Cost when due: a copy of θ (memory P) and 2 + S reverse passes (one for the flatness
    ratios); nothing between.
    The difference θ_t − θ_{t+1} is formed in the parameters' dtype (float32 loses digits when
    the step is tiny against θ; train in float64 for precise readings).
    """

    def __init__(
        self,
        model: nn.Module,
        probe_loss: ProbeLoss | None = None,
        every: int = 1,
        partition: Callable[[nn.Module], list[list[str]]] | str | Sequence[Sequence[str]] = (
            per_tensor
        ),
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if probe_loss is not None and not callable(probe_loss):
            raise ValueError(f"probe_loss must be a function of the parameters, got {probe_loss!r}")
        if isinstance(partition, str):
            partition = get_partition(partition)
        self.model = model
        self.probe_loss = probe_loss
        self.every = every
        self.groups = validate_groups(
            partition(model) if callable(partition) else partition, trainable_names(model)
        )
        self.subsets = ["+".join(group) for group in self.groups]
        self.records: list[dict[str, Any]] = []
        self.steps = 0
        self._snapshot: dict[str, Tensor] | None = None
        self._armed = False  # before_step() was called for the coming step

    @property
    def due(self) -> bool:
        """Whether the coming step is probed."""
        return self.steps % self.every == 0

    def before_step(self) -> bool:
        """Call just before ``optimizer.step()``: snapshots θ_t when the step is probed."""
        self._snapshot = None
        self._armed = True
        if self.due:
            parameters = dict(self.model.named_parameters())
            self._snapshot = {
                name: parameters[name].detach().clone() for group in self.groups for name in group
            }
        return self._snapshot is not None

    def after_step(self, probe_loss: ProbeLoss | None = None) -> list[dict[str, Any]]:
        """Call just after ``optimizer.step()``; returns the records of this step (or []).

        Raises:
            RuntimeError: ``before_step()`` was not called since the last ``after_step()``
                (the step would silently go unprobed: θ_t was never saved).
            TypeError: ``probe_loss`` is not a function of the parameters.
        """
        if not self._armed:
            raise RuntimeError(
                f"after_step() at step {self.steps} without before_step(): call "
                "probe.before_step() just before optimizer.step(), then probe.after_step()"
            )
        if probe_loss is not None and not callable(probe_loss):
            raise TypeError(
                "probe_loss must be a function params -> loss (e.g. functional_loss(model, "
                f"criterion, x, y)), got {type(probe_loss).__name__}"
            )
        self._armed = False
        self.steps += 1
        if self._snapshot is None:
            return []
        loss_fn = probe_loss if probe_loss is not None else self.probe_loss
        if loss_fn is None:
            raise ValueError("after_step needs probe_loss(params) (or give one to the probe)")
        before, self._snapshot = self._snapshot, None
        parameters = dict(self.model.named_parameters())
        direction = {name: value - parameters[name].detach() for name, value in before.items()}
        with torch.enable_grad():
            (gradient, hessian), flatness = projected_derivatives_with_flatness(
                loss_fn, before, self.groups, direction, order=2, module=self.model
            )
        flat = flat_subsets(flatness, gradient.dtype).cpu()
        new = self._records(self.steps - 1, gradient, hessian, flat)
        self.records.extend(new)
        return new

    def _records(
        self, step: int, gradient: Tensor, hessian: Tensor, flat: Tensor
    ) -> list[dict[str, Any]]:
        gradient = gradient.to(device="cpu", dtype=torch.float64)
        hessian = hessian.to(device="cpu", dtype=torch.float64)
        solution = subspace_step(gradient, hessian, flat=flat if bool(flat.any()) else None)
        status = SolverStatus(solution.status).value
        eta = solution.eta.tolist() if solution.ok else [math.nan] * len(self.groups)
        eta = [math.nan if f else e for e, f in zip(eta, flat.tolist(), strict=True)]
        diagonal = torch.diagonal(hessian).tolist()
        return [
            {
                "step": step,
                "subset": subset,
                "eta": eta[s],
                "ratio": _divide(gradient[s].item(), diagonal[s]),
                "g": gradient[s].item(),
                "h": diagonal[s],
                "status": status,
            }
            for s, subset in enumerate(self.subsets)
        ]


def _divide(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0 (a subset that did not move)."""
    return numerator / denominator if denominator != 0 else math.nan
