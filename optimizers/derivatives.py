"""Exact projected derivatives of the loss along per-subset step sizes (METHOD.md §1–2).

Symbols (METHOD.md): parameters θ split into S subsets T_1..T_S, a direction u with the same
shapes as θ, u_s its restriction to T_s, and

    φ(η) = L(θ + Σ_s η_s u_s),        η ∈ R^S.

The projected derivatives are the plain derivatives of φ at η = 0:

    (D^d)_{s1..sd} = ∂^d φ / ∂η_{s1} … ∂η_{sd} (0) = L^{(d)}(θ)[u_{s1}, …, u_{sd}],

so D^1 = ḡ (shape [S], ḡ_s = ⟨∇L, u_s⟩), D^2 = H̄ (shape [S, S], H̄_st = u_sᵀ ∇²L u_t) and D^3
has shape [S, S, S].
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .exact_ops import exact_higher_order
from .partition import validate_groups

__all__ = ["functional_loss", "num_passes", "projected_derivatives"]

LossFn = Callable[[dict[str, Tensor]], Tensor]


def projected_derivatives(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    groups: Sequence[Sequence[str]],
    direction: Mapping[str, Tensor],
    order: int = 3,
    *,
    diagonal: bool = False,
    module: nn.Module | Iterable[nn.Module] | None = None,
    split_linear: bool = False,
) -> tuple[Tensor, ...]:
    r"""Derivatives of φ(η) = L(θ + Σ_s η_s u_s) at η = 0, up to ``order``.

    Args:
        loss_fn: ``loss_fn(params) -> Tensor``, the scalar loss L as a function of a dict of
            named tensors, e.g. ``lambda p: F.cross_entropy(functional_call(model, p, (x,)), y)``.
            It is called **exactly once** per call of this function (one forward pass); every
            derivative is then obtained by reverse passes through that single graph.
        params: θ, ``{name: Tensor}``. Tensors not named in ``groups`` are passed to
            ``loss_fn`` unchanged and held fixed.
        groups: the partition T_1..T_S, one list of parameter names per subset (S = len(groups)),
            e.g. from :mod:`optimizers.partition`.
        direction: u, ``{name: Tensor}`` with the same shapes and dtype as ``params`` for every
            grouped name.
        order: highest order d ≥ 1 returned.
        diagonal: if True, every tensor of order ≥ 3 is returned as its diagonal
            ``(D^d_{s…s})_s``, shape [S] (D^1 and D^2 are always complete).
        module: optional model (or models) whose buffers ``loss_fn`` may update in place
            (BatchNorm running statistics in training mode). They are saved before ``loss_fn``
            runs and restored afterwards, so the model is left exactly as found. Not needed with
            :func:`functional_loss`, which never touches the model's buffers.
        split_linear: if True, a call of ``F.linear`` or ``F.conv1d/2d/3d`` whose weight is a
            grouped parameter of subset s and whose input does not depend on η (the first layer,
            fed by the data) is evaluated as f(x, θ_W) + η_s f(x, u_W) + bias, which is exact
            since f is linear in its weight: every pass then reaches η_s through an elementwise
            product with the precomputed f(x, u_W) instead of a weight-gradient product with
            the input (see "Method and cost"). Same derivatives up to rounding; off by default
            so that the default route's floating-point operations do not change.

    Returns:
        ``(D^1, …, D^order)``: D^1 = ḡ of shape [S], D^2 = H̄ of shape [S, S], D^d of shape
        [S]*d (or [S] for d ≥ 3 when ``diagonal``), in the dtype and on the device of ``params``.
        The tensors are detached and exactly symmetric.

    Exactness:
        ``loss_fn`` runs inside :class:`optimizers.exact_ops.exact_higher_order`, which replaces the
        torch operators whose higher derivatives are wrong in torch 2.13 (layer_norm, batch_norm
        with batch statistics, instance_norm: third derivatives off by 15–100 %) or missing
        (scaled_dot_product_attention on CPU) by exact elementary-op decompositions.

    Method and cost (one "pass" = one reverse pass through the graph built so far):
        η is S scalar leaves, all zero; ``loss_fn`` sees θ_T + η_s u_T for every tensor T of
        subset s, so autograd differentiates φ directly (one forward pass). ḡ = ∇_η φ costs one
        pass. Each further order is obtained by differentiating one entry of the previous order:
        the pass on D^k_{s_1…s_k} (s_1 ≤ … ≤ s_k) returns D^{k+1}_{s_1…s_k t} for t ≥ s_k only
        (diagonal mode: t = s_k only), and the tensor is filled by symmetry. A pass reaches only
        the leaves it asks for, so autograd prunes every branch of the graph leading elsewhere.
        The sorted entries are visited depth-first: a row's graph (create_graph) is kept only
        until the rows below it are computed, so at most one row graph per order is alive. Hence

        * order 2: 1 + S passes (S double-backward passes, one per row of H̄, without graph);
        * order 3 diagonal: 1 + S + S passes (S double-backward passes with graph for the rows
          of H̄, S triple-backward passes on H̄_ss w.r.t. η_s alone for D^3_sss);
        * order d complete: Σ_{k<d} C(S+k−1, k) passes, C(S+d−2, d−1) at the last order.

        Cost grows with S, never with P² or P³. Measured on CPU (batch 100, one thread, five
        runs on a shared 2-core machine; bench/studies/derivative_cost.py,
        results/derivative_cost.json) the order-3 diagonal costs about 6–8 gradient-equivalents
        at S = 8 (MNIST MLP), 8–9 at S = 10 (LeNet-5) and 60–100 at S = 42 (20-layer MLP).
        Against the study's two references, reverse passes w.r.t. θ:

        * the restricted route of the paper's reference implementation (row s w.r.t. the
          parameters of the subsets t ≥ s, D^3_sss w.r.t. subset s): **at parity, no gain**
          (0.9–1.2× at order-3 diagonal, 0.8–1.2× at order 2). The engine makes the same
          passes; its scalar leaves give it the restriction without bookkeeping, not fewer
          operations;
        * the unrestricted route (every pass w.r.t. all of θ): 0.4–0.75×, which is what the
          restriction saves.

        ``split_linear=True`` removes the weight-gradient products of the layers fed by the
        data from every pass: 0.8–0.95× the restricted route at S = 8–10 (order-3 diagonal),
        parity (0.94–1.1×) at S = 42, where the passes through the hidden layers dominate.

        Pass costs depend on the order of ``groups``: list the subsets from input to output (as
        :mod:`optimizers.partition` does), since rows then differentiate towards later layers;
        the reversed order measured ~2× slower. Other exact routes measured slower on CPU: the
        S row passes batched by ``is_grads_batched`` (vmap over the backward: 4× slower for the
        order-2 rows at S = 8; an earlier measurement gave 60–100×), forward-over-reverse with
        torch.func (H̄_s· = jvp along e_s of ∇_η φ, D^3_ss· = jvp of that, for each s: ~20×
        slower), splitting each row into the entry with graph and the rest without (~10 %
        slower). Memory: the graph of the forward pass and of ḡ plus one row graph per order.
        No value is read back to the host.

    Example:
        A quadratic L(θ) = ½ θᵀAθ with two single-coordinate subsets has ḡ = Aθ ∘ u,
        H̄ = A ∘ uuᵀ and D^3 = 0:

        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> f64 = lambda v: torch.tensor(v, dtype=torch.float64)
        >>> loss = lambda p: 0.5 * torch.stack([p["a"], p["b"]]) @ A @ torch.stack([p["a"], p["b"]])
        >>> theta, u = {"a": f64(1.0), "b": f64(-1.0)}, {"a": f64(1.0), "b": f64(2.0)}
        >>> g, H, D3 = projected_derivatives(loss, theta, [["a"], ["b"]], u, order=3)
        >>> g.tolist(), H.tolist(), D3.abs().sum().item()
        ([1.0, -4.0], [[2.0, 2.0], [2.0, 12.0]], 0.0)
    """
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a function params -> scalar loss, got {type(loss_fn).__name__} "
            "(a loss value cannot be differentiated again: pass the function that computes it)"
        )
    groups = _check_inputs(params, groups, direction, order)
    reference = params[groups[0][0]]
    # One scalar leaf per subset (not one [S] tensor): a pass then reaches only the leaves it
    # asks for, and autograd prunes every branch that leads elsewhere.
    etas = [
        torch.zeros((), dtype=reference.dtype, device=reference.device, requires_grad=True)
        for _ in groups
    ]

    # θ(η): every tensor of subset s moves along its direction, scaled by η_s.
    # Built under enable_grad: inside a caller's torch.no_grad() the shift would otherwise
    # lose its graph and every derivative would silently be zero.
    with torch.enable_grad():
        shifted = {name: tensor.detach() for name, tensor in params.items()}
        for eta, group in zip(etas, groups, strict=True):
            for name in group:
                shifted[name] = shifted[name] + eta * direction[name].detach()

    split = _SplitConstantInput(params, shifted, groups, etas, direction, enabled=split_linear)
    with torch.enable_grad(), _preserved_buffers(module), exact_higher_order(), split:
        loss = loss_fn(shifted)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
        _check_loss(loss, etas, reference.dtype)
        results = _derivative_tensors(loss.reshape(()), etas, order, diagonal)
    return tuple(t.detach() for t in results)


def _check_loss(loss: Tensor, etas: list[Tensor], dtype: torch.dtype) -> None:
    """ValueError when the loss is computed in a less precise dtype than the parameters, or does
    not depend on the tensors ``loss_fn`` was given (every derivative would be a silent 0)."""
    if loss.dtype.is_floating_point and torch.finfo(loss.dtype).eps > torch.finfo(dtype).eps:
        raise ValueError(
            f"loss_fn returned a {loss.dtype} loss for {dtype} params: part of the loss (the "
            f"model, its buffers or the inputs) runs in {loss.dtype}; cast them to {dtype}"
        )
    if not _reaches(loss, etas):
        raise ValueError(
            "loss_fn does not depend on its params argument: none of the tensors it was given "
            "reaches the loss (it reads other tensors, e.g. the model's own parameters through "
            "model(x)); evaluate the model at the given tensors, e.g. with functional_loss(model, "
            "criterion, x, y) or torch.func.functional_call(model, params, (x,))"
        )


def _reaches(loss: Tensor, leaves: list[Tensor]) -> bool:
    """Whether the graph of ``loss`` reaches any of ``leaves`` (a walk over its nodes)."""
    if loss.grad_fn is None:
        return False
    wanted = {id(leaf) for leaf in leaves}
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if id(getattr(node, "variable", None)) in wanted:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


Rows = dict[tuple[int, ...], dict[int, Tensor]]


def _derivative_tensors(
    loss: Tensor, etas: list[Tensor], order: int, diagonal: bool
) -> list[Tensor]:
    """Entries of every order by nested reverse passes, then symmetric assembly.

    ``rows[k][I][t]`` holds D^k_{I, t} (detached) for a sorted prefix I of length k−1 and
    t ≥ I[-1]; the pass that produces it differentiates D^{k−1}_I (an entry of the previous
    order, still carrying its graph) with respect to the leaves η_t, t ≥ I[-1] only (in
    diagonal mode: η_s only). The prefixes are visited depth-first, so the graph of a row lives
    only until the rows below it are computed: at most one row graph per order is alive.
    """
    num_subsets = len(etas)
    first = _grads(loss, etas, create_graph=order > 1)
    rows: list[Rows] = [{} for _ in range(order + 1)]

    def expand(prefix: tuple[int, ...], parent: Tensor) -> None:
        k = len(prefix) + 1  # the order of the row computed from parent = D^{k−1}_prefix
        diagonal_order = diagonal and k >= 3
        columns = [prefix[-1]] if diagonal_order else range(prefix[-1], num_subsets)
        grads = _grads(parent, [etas[t] for t in columns], create_graph=k < order)
        rows[k][prefix] = {t: g.detach() for t, g in zip(columns, grads, strict=True)}
        if k == order:
            return
        child_diagonal = diagonal and k + 1 >= 3
        for t, grad in zip(columns, grads, strict=True):
            if not child_diagonal or all(i == t for i in prefix):
                expand(prefix + (t,), grad)

    if order > 1:
        for s in range(num_subsets):
            expand((s,), first[s])
    results = [torch.stack(first).detach()]
    for k in range(2, order + 1):
        if diagonal and k >= 3:
            diag = [rows[k][(s,) * (k - 1)][s] for s in range(num_subsets)]
            results.append(torch.stack(diag))
        else:
            results.append(_assemble(rows[k], num_subsets, k))
    return results


def _assemble(rows: Rows, num_subsets: int, k: int) -> Tensor:
    """The symmetric tensor of order k from its entries at sorted indices.

    Entry (i_1..i_k) is read at its sorted index (j_1 ≤ … ≤ j_k) as ``rows[j_1..j_{k−1}][j_k]``,
    so all permutations of an index get the very same number.
    """
    entries = {prefix + (t,): value for prefix, row in rows.items() for t, value in row.items()}
    keys = list(entries)
    position = {key: n for n, key in enumerate(keys)}
    stacked = torch.stack([entries[key] for key in keys])  # [number of sorted indices]
    gather = [
        position[tuple(sorted(index))] for index in itertools.product(range(num_subsets), repeat=k)
    ]
    index_t = torch.tensor(gather, device=stacked.device)
    return stacked[index_t].reshape((num_subsets,) * k)


def _grads(output: Tensor, leaves: list[Tensor], create_graph: bool) -> list[Tensor]:
    """[∂ output / ∂ leaf], zeros where output does not depend on a leaf (e.g. D^3 of a
    quadratic). Only the branches of the graph leading to ``leaves`` are traversed."""
    if not output.requires_grad:
        return [torch.zeros_like(leaf) for leaf in leaves]
    grads = torch.autograd.grad(
        output, leaves, retain_graph=True, create_graph=create_graph, materialize_grads=True
    )
    return list(grads)


_LINEAR_IN_WEIGHT = (F.linear, F.conv1d, F.conv2d, F.conv3d)  # f(input, weight, bias, ...)


class _SplitConstantInput(TorchFunctionMode):
    """Inside it (``split_linear=True``): f(x, θ_W + η_s u_W, b) = f(x, θ_W) + η_s f(x, u_W) + b
    for f in :data:`_LINEAR_IN_WEIGHT` when x does not require grad (does not depend on η).

    The shifted tensors are recognised by identity (they are alive for the whole call). With
    ``enabled=False`` the mode is not entered at all, so nothing of the default route changes.
    """

    def __init__(self, params, shifted, groups, etas, direction, *, enabled: bool):
        super().__init__()
        self.enabled = enabled
        self.parts = {  # id(shifted weight) -> (θ_W, η_s, u_W)
            id(shifted[name]): (params[name].detach(), eta, direction[name].detach())
            for eta, group in zip(etas, groups, strict=True)
            for name in group
        }

    def __enter__(self):
        return super().__enter__() if self.enabled else self

    def __exit__(self, *exc_info):
        return super().__exit__(*exc_info) if self.enabled else False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LINEAR_IN_WEIGHT and len(args) >= 2 and isinstance(args[0], Tensor):
            part = self.parts.get(id(args[1]))
            if part is not None and not args[0].requires_grad:
                return self.split(func, args, kwargs, *part)
        return func(*args, **kwargs)

    @staticmethod
    def split(func, args, kwargs, theta: Tensor, eta: Tensor, unit: Tensor) -> Tensor:
        """f(x, θ_W, None, …) + η_s f(x, u_W, None, …) + bias for ``func(x, weight, bias, …)``.

        Both products are constants of the graph (neither input requires grad); the bias, which
        may depend on η, is added on its own so that no pass goes back through the product.
        """
        rest, no_bias = list(args[2:]), dict(kwargs)
        if rest:
            bias, rest[0] = rest[0], None
        else:
            bias, no_bias["bias"] = no_bias.get("bias"), None
        out = func(args[0], theta, *rest, **no_bias) + eta * func(args[0], unit, *rest, **no_bias)
        if bias is None:
            return out
        channels = (-1,) if func is F.linear else (1, -1) + (1,) * (out.dim() - 2)
        return out + bias.reshape(channels)


class _preserved_buffers:
    """Context manager saving the buffers of ``module`` and restoring them in place on exit."""

    def __init__(self, module: nn.Module | Iterable[nn.Module] | None):
        if module is None:
            self.modules: list[nn.Module] = []
        elif isinstance(module, nn.Module):
            self.modules = [module]
        else:
            self.modules = list(module)
        self.saved: list[tuple[Tensor, Tensor]] = []

    def __enter__(self):
        self.saved = [
            (buffer, buffer.detach().clone())
            for m in self.modules
            for buffer in m.buffers()
            if buffer is not None
        ]
        return self

    def __exit__(self, *exc_info):
        with torch.no_grad():
            for buffer, copy in self.saved:
                buffer.copy_(copy)
        self.saved = []
        return False


def functional_loss(
    model: nn.Module,
    criterion: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    targets: Tensor,
) -> LossFn:
    """``loss_fn(params) = criterion(model(inputs; params), targets)``, leaving ``model`` intact.

    The model runs through ``torch.func.functional_call`` with the given parameters and with
    *copies* of its buffers, so BatchNorm layers in training mode normalise with batch
    statistics as usual but never update the model's running statistics.
    """
    if not isinstance(inputs, tuple):
        inputs = (inputs,)

    def loss_fn(params: dict[str, Tensor]) -> Tensor:
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        _check_dtypes(model, params, buffers, inputs)
        outputs = torch.func.functional_call(model, (dict(params), buffers), inputs)
        return criterion(outputs, targets)

    return loss_fn


def _check_dtypes(model: nn.Module, params, buffers, inputs) -> None:
    """functional_loss: every floating parameter, buffer and input in the dtype of the given
    parameters (a float32 buffer or input under float64 parameters silently loses digits, or
    fails deep inside the model)."""
    floating = {n: t for n, t in params.items() if t.is_floating_point()}
    if not floating:
        return
    first, dtype = next((n, t.dtype) for n, t in floating.items())
    others = [(f"model parameter {n!r}", p) for n, p in model.named_parameters() if n not in params]
    others += [(f"model buffer {n!r}", b) for n, b in buffers.items()]
    others += [(f"inputs[{k}]", x) for k, x in enumerate(inputs) if isinstance(x, Tensor)]
    others += [(f"params[{n!r}]", t) for n, t in floating.items()]
    for label, tensor in others:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            raise ValueError(
                f"functional_loss: {label} is {tensor.dtype} but params[{first!r}] is {dtype}: "
                f"the model, its buffers, the inputs and the parameters must share one dtype "
                f"(e.g. model.to({dtype}) and inputs.to({dtype}))"
            )


def _check_inputs(
    params: Mapping[str, Tensor],
    groups: Sequence[Sequence[str]],
    direction: Mapping[str, Tensor],
    order: int,
) -> list[list[str]]:
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    if not isinstance(params, Mapping) or not isinstance(direction, Mapping):
        raise TypeError("params and direction must be dicts {name: Tensor}")
    groups = validate_groups(groups)
    unknown = [n for g in groups for n in g if n not in params]
    if unknown:
        raise ValueError(f"groups name parameters missing from params: {unknown}")
    missing = [n for g in groups for n in g if n not in direction]
    if missing:
        raise ValueError(f"direction has no tensor for grouped parameters: {missing}")
    extra = sorted(set(direction) - set(params))
    if extra:
        raise ValueError(f"direction names tensors that are not in params: {extra}")
    first = groups[0][0]
    dtype, device = params[first].dtype, params[first].device
    if not dtype.is_floating_point:
        raise ValueError(f"parameter {first!r} has dtype {dtype}; a floating dtype is required")
    for name in (n for g in groups for n in g):
        p, u = params[name], direction[name]
        if not isinstance(p, Tensor) or not isinstance(u, Tensor):
            raise TypeError(f"params[{name!r}] and direction[{name!r}] must be tensors")
        if p.shape != u.shape:
            raise ValueError(
                f"direction[{name!r}] has shape {tuple(u.shape)}, params has {tuple(p.shape)}"
            )
        if p.dtype != dtype or u.dtype != dtype:
            raise ValueError(
                f"dtype mismatch at {name!r}: params {p.dtype}, direction {u.dtype}, "
                f"expected {dtype} (the dtype of {first!r}) for every grouped tensor"
            )
        if p.device != device or u.device != device:
            raise ValueError(
                f"device mismatch at {name!r}: params on {p.device}, direction on {u.device}, "
                f"expected {device}"
            )
    return groups


def num_passes(num_subsets: int, order: int, diagonal: bool = False) -> int:
    """Number of reverse passes :func:`projected_derivatives` makes (see its docstring)."""
    total = 1
    for k in range(2, order + 1):
        total += num_subsets if (diagonal and k >= 3) else math.comb(num_subsets + k - 2, k - 1)
    return total
