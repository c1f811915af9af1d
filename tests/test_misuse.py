"""Misuse that used to be silent gets a clear error naming the argument (issue #12).

A ``loss_fn`` that ignores its ``params`` (every derivative a silent 0), a tensor where
``curvature_loss`` / ``loss_fn`` / ``probe_loss`` must be a function, ``probe.after_step()``
without ``before_step()`` (the step went unprobed), and a model, buffers, inputs or loss in
another dtype than the parameters (digits silently lost, or a failure deep in the model).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_flat_subsets import closure_for
from torch import nn

from optimizers import PartitionedNewton, projected_derivatives
from optimizers.derivatives import functional_loss
from optimizers.partition import per_tensor
from optimizers.probe import LearningRateProbe

DT = torch.float64


def tiny(dtype=DT, norm=False):
    torch.manual_seed(0)
    layers = [nn.Linear(3, 4), nn.BatchNorm1d(4) if norm else nn.Tanh(), nn.Linear(4, 2)]
    model = nn.Sequential(*layers).to(dtype)
    x = torch.randn(8, 3, dtype=dtype)
    y = torch.randint(0, 2, (8,))
    return model, x, y


def engine_inputs(model):
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    return params, per_tensor(model), direction


# ------------------------------------------------------------------ loss_fn ignores params
@pytest.mark.parametrize("kind", ["own_parameters", "constant", "detached"])
def test_loss_that_ignores_its_params_is_refused(kind):
    model, x, y = tiny()
    params, groups, direction = engine_inputs(model)
    loss_fn = {
        "own_parameters": lambda p: F.cross_entropy(model(x), y),  # reads model's tensors
        "constant": lambda p: torch.tensor(1.0, dtype=DT),
        "detached": lambda p: (p["0.weight"].detach() ** 2).sum(),
    }[kind]
    with pytest.raises(ValueError, match="loss_fn does not depend on its params"):
        projected_derivatives(loss_fn, params, groups, direction, 2)


def test_a_partly_unread_params_dict_is_fine():
    """Only a loss that reaches none of the grouped tensors is refused: one unread subset has
    zero derivatives, as it should (optimizers.flatness then drops it)."""
    model, x, y = tiny()
    params, groups, direction = engine_inputs(model)
    params["unread"], direction["unread"] = torch.ones(2, dtype=DT), torch.ones(2, dtype=DT)
    loss_fn = functional_loss(model, F.cross_entropy, x, y)
    g, H = projected_derivatives(
        lambda p: loss_fn({n: t for n, t in p.items() if n != "unread"}),
        params, [*groups, ["unread"]], direction, 2,
    )  # fmt: skip
    assert g[-1] == 0 and torch.all(H[-1] == 0) and torch.all(g[:-1] != 0)


def test_partitioned_newton_refuses_a_curvature_loss_that_ignores_params():
    model, x, y = tiny()
    optimizer = PartitionedNewton.from_model(model)
    with pytest.raises(ValueError, match="loss_fn does not depend on its params"):
        optimizer.step(closure_for(model, optimizer, x, y), lambda p: F.cross_entropy(model(x), y))


def test_probe_refuses_a_probe_loss_that_ignores_params():
    model, x, y = tiny()
    probe = LearningRateProbe(model)
    probe.before_step()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    with pytest.raises(ValueError, match="loss_fn does not depend on its params"):
        probe.after_step(lambda p: F.cross_entropy(model(x), y))


# ------------------------------------------------------------------ a tensor for a function
def test_tensor_for_curvature_loss_is_a_type_error_on_every_step():
    """Also on a step that does not recompute (the tensor used to be ignored there)."""
    model, x, y = tiny()
    optimizer = PartitionedNewton.from_model(model, update_every=2)
    value = F.cross_entropy(model(x), y)
    with pytest.raises(TypeError, match="curvature_loss must be a function.*Tensor"):
        optimizer.step(closure_for(model, optimizer, x, y), value)
    optimizer.step(
        closure_for(model, optimizer, x, y), functional_loss(model, F.cross_entropy, x, y)
    )
    assert not optimizer.needs_curvature
    with pytest.raises(TypeError, match="curvature_loss must be a function.*Tensor"):
        optimizer.step(closure_for(model, optimizer, x, y), value)


def test_tensor_for_loss_fn_and_probe_loss_is_a_type_error():
    model, x, y = tiny()
    params, groups, direction = engine_inputs(model)
    value = F.cross_entropy(model(x), y)
    with pytest.raises(TypeError, match="loss_fn must be a function.*Tensor"):
        projected_derivatives(value, params, groups, direction, 2)
    probe = LearningRateProbe(model)
    probe.before_step()
    with pytest.raises(TypeError, match="probe_loss must be a function.*Tensor"):
        probe.after_step(value)


# ------------------------------------------------------------------ probe call order
def test_after_step_without_before_step_is_an_error():
    model, x, y = tiny()
    probe = LearningRateProbe(model, functional_loss(model, F.cross_entropy, x, y))
    with pytest.raises(RuntimeError, match="without before_step"):
        probe.after_step()
    assert probe.steps == 0 and probe.records == []
    probe.before_step()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    assert len(probe.after_step()) == len(probe.subsets)
    with pytest.raises(RuntimeError, match="at step 1 without before_step"):
        probe.after_step()  # once per before_step


# ------------------------------------------------------------------ dtypes
def test_float32_model_under_float64_params_is_refused():
    model, x, y = tiny(torch.float32, norm=True)  # float32 BatchNorm buffers
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    loss_fn = functional_loss(model, F.cross_entropy, x.double(), y)
    with pytest.raises(ValueError, match="model buffer '1.running_mean' is torch.float32"):
        loss_fn(params)


def test_inputs_in_another_dtype_are_refused():
    model, x, y = tiny(DT)
    loss_fn = functional_loss(model, F.cross_entropy, x.float(), y)
    params, groups, direction = engine_inputs(model)
    with pytest.raises(ValueError, match=r"inputs\[0\] is torch.float32.*torch.float64"):
        projected_derivatives(loss_fn, params, groups, direction, 2)


def test_partial_params_with_a_model_in_another_dtype_are_refused():
    model, x, y = tiny(torch.float32)
    loss_fn = functional_loss(model, F.cross_entropy, x.double(), y)
    with pytest.raises(ValueError, match="model parameter '0.bias' is torch.float32"):
        loss_fn({"0.weight": model[0].weight.detach().double()})


def test_loss_computed_in_a_lower_precision_is_refused():
    params = {"w": torch.tensor([1.0, 2.0], dtype=DT)}
    with pytest.raises(ValueError, match="returned a torch.float32 loss for torch.float64"):
        projected_derivatives(lambda p: (p["w"].float() ** 2).sum(), params, [["w"]], params, 2)
    # a more precise loss is fine
    (g,) = projected_derivatives(
        lambda p: (p["w"].double() ** 2).sum(), {"w": params["w"].float()}, [["w"]],
        {"w": params["w"].float()}, 1,
    )  # fmt: skip
    assert g.dtype == torch.float32 and g.item() == 10.0


def test_partitioned_newton_refuses_mixed_dtypes_at_construction():
    model, _, _ = tiny(torch.float32)
    model[2].double()
    with pytest.raises(ValueError, match="parameter '2.weight' is torch.float64 but '0.weight'"):
        PartitionedNewton.from_model(model)
