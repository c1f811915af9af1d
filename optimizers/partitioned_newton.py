"""The partitioned Newton optimizer: one step size per subset of tensors (METHOD.md §4–§6)."""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .flatness import flat_subsets, projected_derivatives_with_flatness
from .partition import get_partition, per_tensor, validate_groups
from .proposals import PROPOSALS, adam_direction, gradient_direction, momentum_direction
from .subspace import INDEFINITE_MODES, OK_STATUSES, SolverStatus, subspace_step

__all__ = ["PartitionedNewton"]

GLOBAL = "partitioned_newton"  # key of the optimizer-wide entry of ``self.state``
CURVATURES = ("full", "diagonal")
HISTORY = 1000  # records kept in ``diagnostics``
STATUS_CODES = {status.value: code for code, status in enumerate(SolverStatus)}
CurvatureLoss = Callable[[dict[str, Tensor]], Tensor]


class PartitionedNewton(torch.optim.Optimizer):
    r"""One learning rate per subset T_s, from a cubic-regularised S×S model (METHOD.md §4–§5).

    Param groups *are* the subsets T_1..T_S: each group is ``{"params": [...], "names": [...]}``
    (build them with :meth:`from_model`); a group's ``lr`` is its λ1 (all equal by default, so
    torch's schedulers and ``ReduceLROnPlateau`` act on λ1 as usual).

    Symbols: θ_s the tensors of subset s, g the gradient on the training batch, u the proposed
    direction, ḡ [S], H̄ [S, S] and D^3_sss [S] the projected derivatives of
    φ(η) = L'(θ + Σ_s η_s u_s) at η = 0 on the *curvature* batch (loss L'), T = ``update_every``,
    W = ``warmup``, K = ``average``. Algorithm of ``step(closure, curvature_loss)``::

        loss = closure()                                   # zero_grad, forward, backward: g
        if torch.distributed is initialised: g ← mean over ranks of g        (as DDP does)
        finite = isfinite(loss) and isfinite(‖g‖)          # a 0-d tensor (read on the CPU only)
        if not finite: skip the step (g ← 0, buffers and weights unchanged; see below)
        u = rule(g)                                        # proposals.py: gradient/momentum/adam
        if t mod T == 0:                                   # recomputation (the only host syncs)
            if finite:
                (ḡ, H̄, D3), ρ = projected_derivatives_with_flatness(curvature_loss, θ,
                                 subsets, u, order 3 (2 if λ_int = 0), diagonal=True)
                if distributed: (ḡ, H̄, D3, ρ) ← their means over ranks
                if all finite: push into the window of the last K estimates; n ← n + 1
            if n > W:                                      # warm-up: the first W estimates
                ḡ, H̄, D3 ← uniform means over the window; d = |D3|^(1/3)  (after averaging)
                if curvature == "diagonal": H̄ ← Diag(H̄)
                flat_s = max over the window of ρ_s ≤ 64 eps        # flatness.py: L constant
                η' = subspace_step(ḡ, H̄, d, λ_int, flat)   # minimises −ḡᵀη + ½ηᵀH̄η + λ_int/6 ‖Dη‖³
                                                   # over the subsets not flat; η'_s = 0 on those
                                                   # (λ_int = 0, H̄ not ≻ 0: see `indefinite`)
                if η' solved: η ← max(η', 0) if remove_negative else η'   # else keep the old η
        if η exists: θ_s ← θ_s − λ1_s η_s u_s   (multiplied by finite: a skipped step moves nothing)
        t ← t + 1

    Why ḡ is passed as is: after θ_s ← θ_s − ζ_s u_s the loss is
    L − ḡᵀζ + ½ζᵀH̄ζ − (1/6)D^3[ζ, ζ, ζ] + …, whose quadratic part is minimised by ζ = H̄⁻¹ḡ:
    with λ1 = 1, single-coordinate subsets and u = g, one step is Newton's step.
    Between recomputations the last η is reused with the current u. Same step and invariance as
    METHOD.md §6 (with ``proposal`` gradient or momentum, per-subset affine maps leave the
    trajectory unchanged).

    Without the cubic term (λ_int = 0) the model −ḡᵀη + ½ηᵀH̄η has no minimiser when H̄ is not
    positive definite, which on tanh/ELU nets is almost every recomputation (METHOD.md §4).
    ``indefinite`` says what the step is then: ``"solve"`` (default, the paper's order-2
    method: η' = H̄⁻¹ḡ whatever H̄'s inertia, then the clip), ``"saddle_free"`` (η' = |H̄|⁻¹ḡ,
    |H̄| with H̄'s eigenvalues replaced by their moduli) or ``"skip"`` (no step: the previous η
    is kept). Both steps are taken in the equilibrated variables of ``subspace_step`` (so
    METHOD.md §6 holds), a subset with H̄_ss = 0 takes no step, and the status of each solve
    (``newton_indefinite``, ``saddle_free``, ``order2_singular``, ``flat_subset``) is counted
    among the usable ones. With λ_int > 0 the cubic model always has a minimiser and
    ``indefinite`` is not used.

    A subset along which the loss is numerically constant (a conv bias before a BatchNorm, a
    parameter the loss does not read, u_s = 0) has ḡ_s, H̄_s· and D^3_sss at rounding level, and
    a solve on them returns an arbitrarily large η_s (METHOD.md §4). It is recognised by its
    flatness ratio ρ_s (``optimizers.flatness``: its gradient against the magnitude of the
    terms that cancel in it, invariant under METHOD.md §6), at rounding level in every estimate
    of the window, and dropped: η_s = 0, the others solved exactly without it, status
    ``flat_subset`` (``reduced_status`` in the record says how the others were solved).

    Differences from the paper / choices of the spec:

    * warm-up counts accepted estimates: a recomputation whose estimate is skipped (non-finite)
      does not count, and the schedule t mod T == 0 counts every ``step`` call, skipped or not;
    * the momentum buffer starts at 0 (u_1 = (1 − τ) g), not at g as in ``torch.optim.SGD``;
    * non-finite loss or gradients (flag: isfinite(loss) and isfinite(Σ_s ‖g_s‖), so a norm
      that overflows counts as non-finite): on the CPU the flag is read every step (free: CPU
      kernels run synchronously) and a bad step changes nothing; on other devices the flag is
      never read between recomputations: the gradients are zeroed by ``masked_fill`` and every
      update (rule buffers, weights) is multiplied by it. Either way weights and buffers are
      unchanged, the gradients in ``p.grad`` are zeroed, and ``skipped_steps`` (a tensor)
      counts it. At a recomputation the flag is read (the step synchronises there anyway); a
      non-finite flag or estimate skips the estimate (``skipped_estimates``); a failed solve
      keeps the previous η (``failed_solves``); solver statuses are counted in
      ``status_counts``.

    Cost: every step costs one forward-backward, the rule's elementwise updates, one norm of
    the gradients and the update of θ (no host synchronisation off the CPU). Every T-th step adds
    ``projected_derivatives`` (1 + 2S reverse passes through one forward of the curvature
    batch with λ_int > 0, 1 + S with λ_int = 0), the flatness ratios (one more reverse pass
    and a local one per operator reading a parameter) and an S×S float64 solve. Memory: the rule's
    buffers (one per parameter, two for adam) and K(S² + 2S) float64 numbers.

    Diagnostics: ``diagnostics`` (the last 1000 recomputations) and ``last_diagnostics``:
    records ``{"step", "event" ("solved", "failed", "warmup", "non_finite_gradient",
    "non_finite_curvature"), "subsets" (names), "eta" (η in use after it, or None),
    "h_diagonal", "condition_number" (of the H̄ solved with), "status" (solver status name),
    "solver_status" (its code in ``STATUS_CODES``), "r" (‖Dη‖), "flat_subsets" (names of
    the subsets dropped as flat), "flatness" (ρ [S], the window's largest), "reduced_status"
    (with ``flat_subset``: the status of the solve over the others)}``. Cumulative counters,
    as read-only properties: ``status_counts``, ``usable_solves``, ``failed_solves``,
    ``skipped_estimates`` and ``flat_counts`` (per subset name).

    A complete training loop (ReduceLROnPlateau halves λ1 when the epoch's loss stalls)::

        import torch.nn.functional as F
        from optimizers import PartitionedNewton, functional_loss

        model = nn.Sequential(nn.Linear(784, 100), nn.Tanh(), nn.Linear(100, 10))
        optimizer = PartitionedNewton.from_model(model, lr=0.1, lambda_int=1.0)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=2, threshold=1e-4)
        curvature_batches = itertools.cycle(curvature_loader)   # not shuffled, cycled
        for epoch in range(epochs):
            total = 0.0
            for x, y in train_loader:
                def closure():
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    return loss
                curvature_loss = None
                if optimizer.needs_curvature:                   # every update_every steps
                    x2, y2 = next(curvature_batches)
                    curvature_loss = functional_loss(model, F.cross_entropy, x2, y2)
                total += optimizer.step(closure, curvature_loss).item()
            plateau.step(total)

    Args:
        params: param groups, each ``{"params": [tensors], "names": [str]}`` (one per subset).
        lr: λ1, the global factor of every step (per group, equal by default).
        lambda_int: λ_int ≥ 0, weight of the cubic term; 0 is the order-2 (Newton) step.
        update_every: T ≥ 1, steps between recomputations of ḡ, H̄, D^3.
        average: K ≥ 1, number of last estimates averaged.
        warmup: W ≥ 0, estimates gathered before the first step.
        proposal: the direction rule, one of ``proposals.PROPOSALS``.
        momentum, dampening: β and τ of the momentum rule.
        betas, eps: Adam's (β1, β2) and ε.
        remove_negative: clip η_s < 0 to 0.
        curvature: ``"full"`` (H̄) or ``"diagonal"`` (Diag(H̄): the ablation without cross terms).
        indefinite: the order-2 step (λ_int = 0) on an H̄ that is not positive definite, one
            of ``subspace.INDEFINITE_MODES``: ``"solve"``, ``"saddle_free"`` or ``"skip"``.
    """

    _always_mask = False  # tests: take the accelerator path (masking, no flag read) on the CPU

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 0.1,
        lambda_int: float = 1.0,
        update_every: int = 10,
        average: int = 4,
        warmup: int = 3,
        proposal: str = "momentum",
        momentum: float = 0.9,
        dampening: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        remove_negative: bool = True,
        curvature: str = "full",
        indefinite: str = "solve",
    ):
        _check_number("lr", lr, low=0.0)
        _check_number("lambda_int", lambda_int, low=0.0)
        _check_integer("update_every", update_every, low=1)
        _check_integer("average", average, low=1)
        _check_integer("warmup", warmup, low=0)
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
        _check_number("momentum", momentum, low=0.0, below=1.0)
        _check_number("dampening", dampening, low=0.0, below=1.0)
        if not isinstance(betas, Sequence) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for s, beta in enumerate(betas):
            _check_number(f"betas[{s}] of betas={tuple(betas)!r}", beta, low=0.0, below=1.0)
        _check_number("eps", eps, low=0.0, strict=True)
        if not isinstance(remove_negative, bool):
            raise ValueError(f"remove_negative must be a bool, got {remove_negative!r}")
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if indefinite not in INDEFINITE_MODES:
            raise ValueError(f"indefinite must be one of {INDEFINITE_MODES}, got {indefinite!r}")
        groups = [dict(group) for group in _check_groups(params)]
        super().__init__(groups, {"lr": float(lr)})
        self.options = {
            "lambda_int": float(lambda_int),
            "update_every": update_every,
            "average": average,
            "warmup": warmup,
            "proposal": proposal,
            "momentum": float(momentum),
            "dampening": float(dampening),
            "betas": (float(betas[0]), float(betas[1])),
            "eps": float(eps),
            "remove_negative": remove_negative,
            "curvature": curvature,
            "indefinite": indefinite,
        }
        reference = self.param_groups[0]["params"][0]
        self.state[GLOBAL] = {
            "step": 0,
            "recomputations": 0,
            "window": None,  # {"gradient": [k, S], "hessian": [k, S, S], "third": [k, S]}
            "eta": None,  # float64 [S]
            "status_counts": {},
            "skipped_steps": torch.zeros((), dtype=reference.dtype, device=reference.device),
            "skipped_estimates": 0,
            "failed_solves": 0,
            "adam_count": torch.zeros((), dtype=reference.dtype, device=reference.device),
        }
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._scales: tuple[list[float], Tensor] | None = None  # −λ1_s η_s on the device

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        partition: Callable[[nn.Module], list[list[str]]] | str | Sequence[Sequence[str]] = (
            per_tensor
        ),
        **hyperparameters: Any,
    ) -> PartitionedNewton:
        """Subsets from ``partition``: a function of the model (``optimizers.partition``), the
        name of one, or a list of lists of parameter names."""
        if isinstance(partition, str):
            partition = get_partition(partition)
        names = validate_groups(
            partition(model) if callable(partition) else partition,
            [n for n, p in model.named_parameters() if p.requires_grad],
        )
        tensors = dict(model.named_parameters())
        groups = [{"params": [tensors[n] for n in group], "names": group} for group in names]
        return cls(groups, **hyperparameters)

    # ------------------------------------------------------------------ public properties
    @property
    def needs_curvature(self) -> bool:
        """Whether the next ``step`` recomputes ḡ, H̄, D^3 (and so needs ``curvature_loss``)."""
        return self.state[GLOBAL]["step"] % self.options["update_every"] == 0

    @property
    def subset_names(self) -> list[str]:
        """One name per subset: its parameter names joined by ``+``."""
        return ["+".join(group["names"]) for group in self.param_groups]

    @property
    def status_counts(self) -> dict[str, int]:
        """Solver status name → how many solves ended with it, since the start (a copy)."""
        return dict(self.state[GLOBAL]["status_counts"])

    @property
    def usable_solves(self) -> int:
        """Solves whose status carries a step (``subspace.OK_STATUSES``), since the start."""
        counts = self.state[GLOBAL]["status_counts"]
        return sum(counts.get(SolverStatus(status).value, 0) for status in OK_STATUSES)

    @property
    def failed_solves(self) -> int:
        """Solves that gave no step (the previous η was kept), since the start."""
        return self.state[GLOBAL]["failed_solves"]

    @property
    def flat_counts(self) -> dict[str, int]:
        """Subset name → how many solves dropped it as flat (η_s = 0), since the start (a copy)."""
        return dict(self.state[GLOBAL].get("flat_counts", {}))

    @property
    def skipped_estimates(self) -> int:
        """Recomputations whose estimate was not finite and was left out, since the start."""
        return self.state[GLOBAL]["skipped_estimates"]

    @property
    def diagnostics(self) -> list[dict[str, Any]]:
        return list(self._history)

    @property
    def last_diagnostics(self) -> dict[str, Any] | None:
        return self._history[-1] if self._history else None

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor], curvature_loss: CurvatureLoss | None = None):
        """One step (see the class docstring); returns the closure's loss."""
        if closure is None:
            raise ValueError(
                "PartitionedNewton.step needs a closure (zero_grad, forward, backward)"
            )
        if curvature_loss is not None and not callable(curvature_loss):
            raise TypeError(
                "curvature_loss must be a function params -> loss on the curvature batch (e.g. "
                f"functional_loss(model, criterion, x, y)), got {type(curvature_loss).__name__}"
            )
        glob = self.state[GLOBAL]
        recompute = self.needs_curvature
        if recompute and curvature_loss is None:
            raise ValueError(
                f"step {glob['step']} recomputes the curvature (every update_every="
                f"{self.options['update_every']} steps): pass curvature_loss(params) -> loss "
                "on the curvature batch (see needs_curvature)"
            )
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise ValueError("the closure must return the loss (a finite check needs it)")
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        loss_tensor = torch.as_tensor(loss, device=params[0].device).detach()
        bad_loss = (~torch.isfinite(loss_tensor)).to(params[0].dtype).reshape(1)
        world = _world_size()
        if world > 1:
            for tensor in [*grads, bad_loss]:
                dist.all_reduce(tensor)
                tensor.div_(world)
        norms = torch.stack([n.to(params[0].dtype) for n in torch._foreach_norm(grads)])
        finite = torch.isfinite(norms.sum()) & (bad_loss[0] == 0)
        # On the CPU reading the flag costs nothing (no asynchronous queue): a finite step runs
        # unmasked. Elsewhere, or when the step is skipped, every update is masked by `keep`.
        on_host = params[0].device.type == "cpu" and not self._always_mask
        keep = None
        if not (on_host and bool(finite)):
            keep = finite.to(params[0].dtype)
            for grad in grads:
                grad.masked_fill_(~finite, 0.0)
            glob["skipped_steps"].add_(1.0 - keep)
        directions = self._propose(params, grads, keep)
        if recompute:
            self._recompute(curvature_loss, directions, finite)
        glob["step"] += 1
        if glob["eta"] is not None and not (on_host and keep is not None):
            self._move(directions, keep)
        return loss

    def _propose(self, params: list[Tensor], grads: list[Tensor], keep: Tensor) -> list[Tensor]:
        rule = self.options["proposal"]
        if rule == "gradient":
            return gradient_direction(grads)
        if rule == "momentum":
            buffers = [self._buffer(p, "momentum_buffer") for p in params]
            return momentum_direction(
                grads, buffers, self.options["momentum"], self.options["dampening"], keep
            )
        exp_avgs = [self._buffer(p, "exp_avg") for p in params]
        exp_avg_sqs = [self._buffer(p, "exp_avg_sq") for p in params]
        count = self.state[GLOBAL]["adam_count"]
        return adam_direction(
            grads, exp_avgs, exp_avg_sqs, count, self.options["betas"], self.options["eps"], keep
        )

    def _buffer(self, param: Tensor, key: str) -> Tensor:
        state = self.state[param]
        if key not in state:
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state[key]

    def _move(self, directions: list[Tensor], keep: Tensor | None) -> None:
        """θ_s ← θ_s − λ1_s η_s u_s, times ``keep`` (a 0-d tensor, 0 on a skipped step)."""
        eta = self.state[GLOBAL]["eta"].tolist()
        steps = [-group["lr"] * value for group, value in zip(self.param_groups, eta, strict=True)]
        start = 0
        if keep is None:
            for group, step in zip(self.param_groups, steps, strict=True):
                stop = start + len(group["params"])
                alpha = _within_range(step, group["params"][0].dtype)
                torch._foreach_add_(group["params"], directions[start:stop], alpha=alpha)
                start = stop
            return
        if self._scales is None or self._scales[0] != steps:  # copied to the device only
            tensor = torch.tensor(steps, dtype=keep.dtype, device=keep.device)  # when η or λ1
            self._scales = (steps, tensor)  # change: a host-to-device copy may synchronise
        scales = self._scales[1] * keep
        for s, group in enumerate(self.param_groups):
            for param in group["params"]:
                param.addcmul_(directions[start], scales[s])
                start += 1

    # ------------------------------------------------------------------ recomputation
    def _recompute(self, curvature_loss: CurvatureLoss, directions: list[Tensor], finite: Tensor):
        glob, options = self.state[GLOBAL], self.options
        record: dict[str, Any] = {"step": glob["step"], "subsets": self.subset_names}
        record.update(status=None, solver_status=None, r=None, h_diagonal=None)
        record.update(condition_number=None, flat_subsets=[], flatness=None, reduced_status=None)
        estimate = self._estimate(curvature_loss, directions) if bool(finite) else None
        if estimate is None:
            glob["skipped_estimates"] += 1
            record["event"] = "non_finite_gradient" if not bool(finite) else "non_finite_curvature"
        else:
            self._push(*estimate)
            glob["recomputations"] += 1
            record["event"] = "warmup"
        if glob["recomputations"] > options["warmup"] and estimate is not None:
            self._solve(record)
        record["eta"] = None if glob["eta"] is None else glob["eta"].tolist()
        self._history.append(record)

    def _estimate(self, curvature_loss: CurvatureLoss, directions: list[Tensor]):
        """(ḡ [S], H̄ [S, S], D^3_sss [S]) in float64 on the CPU, or None if not finite."""
        names = [group["names"] for group in self.param_groups]
        params: dict[str, Tensor] = {}
        for group in self.param_groups:
            params.update(zip(group["names"], group["params"], strict=True))
        direction = dict(zip([n for g in names for n in g], directions, strict=True))
        order = 3 if self.options["lambda_int"] > 0 else 2
        values: list[Tensor] = []

        def recorded(named: dict[str, Tensor]) -> Tensor:
            # The loss value itself is checked too: a NaN loss can have finite (zero)
            # derivatives, e.g. the mean over an empty curvature batch.
            loss = curvature_loss(named)
            values.append(loss.detach())
            return loss

        with torch.enable_grad():  # projected_derivatives builds θ + η u in the caller's mode
            derivatives, flatness = projected_derivatives_with_flatness(
                recorded, params, names, direction, order=order, diagonal=True
            )
        num = len(names)
        third = derivatives[2] if order == 3 else torch.zeros_like(derivatives[0])
        value = values[0].reshape(1).to(derivatives[0].dtype)
        parts = [derivatives[0], derivatives[1].reshape(-1), third, flatness, value]
        packed = torch.cat(parts)
        world = _world_size()
        if world > 1:  # a non-finite loss on any rank makes every rank skip this estimate
            dist.all_reduce(packed)
            packed.div_(world)
        packed = packed.to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(packed).all()):
            return None
        gradient, hessian, third, flatness, _ = packed.split([num, num * num, num, num, 1])
        return gradient, hessian.reshape(num, num), third, flatness

    def _push(self, gradient: Tensor, hessian: Tensor, third: Tensor, flatness: Tensor) -> None:
        glob, keep = self.state[GLOBAL], self.options["average"]
        new = {"gradient": gradient, "hessian": hessian, "third": third, "flatness": flatness}
        if glob["window"] is None:
            glob["window"] = {key: value[None].clone() for key, value in new.items()}
            return
        glob["window"] = {
            key: torch.cat([glob["window"][key], value[None]])[-keep:] for key, value in new.items()
        }

    def _solve(self, record: dict[str, Any]) -> None:
        glob, options = self.state[GLOBAL], self.options
        window = glob["window"]
        gradient = window["gradient"].mean(0)
        hessian = window["hessian"].mean(0)
        third = window["third"].mean(0)
        if options["curvature"] == "diagonal":
            hessian = torch.diag(torch.diagonal(hessian))
        lambda_int = options["lambda_int"]
        scale = third.abs().pow(1.0 / 3.0) if lambda_int > 0 else None
        # flat in every estimate of the window: the largest ρ_s is at rounding level
        flatness = window["flatness"].max(0).values
        flat = flat_subsets(flatness, self.param_groups[0]["params"][0].dtype)
        result = subspace_step(
            gradient, hessian, scale, lambda_int, options["indefinite"],
            flat=flat if bool(flat.any()) else None,
        )  # fmt: skip
        status = SolverStatus(result.status).value
        glob["status_counts"][status] = glob["status_counts"].get(status, 0) + 1
        dropped = [name for name, f in zip(self.subset_names, result.flat, strict=False) if f]
        flat_counts = glob.setdefault("flat_counts", {})
        for name in dropped:
            flat_counts[name] = flat_counts.get(name, 0) + 1
        if result.ok:
            eta = result.eta.detach().to(device="cpu", dtype=torch.float64).clone()
            glob["eta"] = eta.clamp(min=0.0) if options["remove_negative"] else eta
            record["event"] = "solved"
        else:
            glob["failed_solves"] += 1
            record["event"] = "failed"
        record.update(
            status=status,
            solver_status=STATUS_CODES[status],
            r=float(result.r),
            h_diagonal=torch.diagonal(hessian).tolist(),
            condition_number=_condition_number(hessian),
            flat_subsets=dropped,
            flatness=flatness.tolist(),
            reduced_status=None if result.reduced_status is None else result.reduced_status.value,
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["options"] = dict(self.options)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = copy.deepcopy(state_dict)
        saved = [group.get("names") for group in state_dict["param_groups"]]
        current = [group["names"] for group in self.param_groups]
        if saved != current:
            raise ValueError(f"saved subsets {saved} differ from this optimizer's {current}")
        options = state_dict.pop("options", self.options)
        if "indefinite" not in options:
            # Saved before the option existed: λ_int = 0 then skipped an H̄ not ≻ 0; with
            # λ_int > 0 the option is not used, so any value resumes the same run.
            before = "skip" if options.get("lambda_int") == 0 else self.options["indefinite"]
            options = {**options, "indefinite": before}
        if options != self.options:
            raise ValueError(f"saved hyperparameters {options} differ from {self.options}")
        super().load_state_dict(state_dict)
        reference = self.param_groups[0]["params"][0]
        glob = self.state[GLOBAL]
        window = glob.get("window")
        if window is not None and "flatness" not in window:  # saved before flatness existed:
            window["flatness"] = torch.ones_like(window["third"])  # ρ = 1, nothing flat
        for key in ("skipped_steps", "adam_count"):
            glob[key] = glob[key].to(device=reference.device, dtype=reference.dtype)


def _condition_number(hessian: Tensor) -> float:
    """|λ|max / |λ|min of a symmetric [S, S] matrix (inf when singular)."""
    magnitudes = torch.linalg.eigvalsh(hessian).abs()
    smallest = magnitudes.min().item()
    return magnitudes.max().item() / smallest if smallest > 0 else math.inf


def _within_range(step: float, dtype: torch.dtype) -> float:
    """``step``, or ±inf when it overflows ``dtype`` (torch refuses such an ``alpha``; the masked
    path's tensor of steps rounds it to ±inf the same way): an undamped order-2 step on a
    near-singular H̄ can exceed float32's range, and the run then diverges instead of crashing."""
    return step if abs(step) <= torch.finfo(dtype).max else math.copysign(math.inf, step)


def _world_size() -> int:
    """Number of ranks when torch.distributed is initialised, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 0


def _check_groups(params: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = list(params)
    if not groups or not all(isinstance(group, dict) for group in groups):
        raise ValueError(
            "PartitionedNewton takes param groups {'params': [...], 'names': [...]}, one per "
            "subset; use PartitionedNewton.from_model(model, partition=...)"
        )
    groups = [dict(group) for group in groups]  # the caller's dicts are left as given
    tensors: list[tuple[str, Any]] = []
    for s, group in enumerate(groups):
        if "names" not in group or "params" not in group:
            raise ValueError(f"param group {s} needs 'params' and 'names', got keys {list(group)}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if len(params) != len(group["names"]):
            raise ValueError(
                f"param group {s}: {len(group['names'])} names for {len(params)} tensors"
            )
        group["params"] = params  # a generator would be empty when torch reads it
        tensors.extend(zip(group["names"], params, strict=True))
    validate_groups([group["names"] for group in groups])
    first, reference = tensors[0]
    for name, p in tensors:
        if not isinstance(p, Tensor) or not p.is_floating_point() or p.dtype != reference.dtype:
            kind = p.dtype if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(
                f"parameter {name!r} is {kind} but {first!r} is {reference.dtype}: every "
                "parameter must have one floating dtype (cast the model, e.g. model.to(dtype))"
            )
    return groups


def _check_number(name: str, value: Any, low: float, below: float | None = None, strict=False):
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if bad or value < low or (strict and value == low) or (below is not None and value >= below):
        bounds = f"{'>' if strict else '>='} {low}" + ("" if below is None else f" and < {below}")
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")


def _check_integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
