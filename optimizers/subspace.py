r"""The step solver in the S-dimensional subspace: Newton and the anisotropic cubic model.

METHOD.md §3–§5. Given ḡ [S], H̄ [S, S] and d [S] (d_s = |D^3_sss|^{1/3}, D = Diag(d)),
:func:`subspace_step` returns the global minimiser η* [S] of

    m(η) = −ḡᵀη + ½ ηᵀH̄η + (λ_int/6) ‖Dη‖³,

i.e. the solution of largest r = ‖Dη‖ of η = (H̄ + (λ_int/2) r D²)⁻¹ ḡ, or H̄⁻¹ḡ (Newton) when
λ_int = 0 or d is None. Without the cubic term an H̄ that is not positive definite has no
minimiser; ``indefinite`` chooses what the order-2 step is then (METHOD.md §4): no step, the
paper's plain solve H̄⁻¹ḡ, or the saddle-free |H̄|⁻¹ḡ. Everything is host-side float64
numpy/scipy (S is small); the cost is O(S³) (one or two symmetric eigendecompositions) plus
O(S) per root-finding iteration.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "DROP_TOLERANCE",
    "INDEFINITE_MODES",
    "ZERO_D_TOLERANCE",
    "SolverStatus",
    "SubspaceStep",
    "subspace_step",
]

_EPS = float(np.finfo(np.float64).eps)

ZERO_D_TOLERANCE = 1e-12
"""ε of the a priori test that declares d_s zero: λ_int d_s³ |ḡ_s| ≤ ε H̄_ss² (subspace_step)."""

DROP_TOLERANCE = math.sqrt(_EPS)
"""A zero-counted d_s stays dropped only if (λ_int/2) r d_s² ≤ DROP_TOLERANCE |H̄_ss| at the step."""

INDEFINITE_MODES = ("skip", "solve", "saddle_free")
"""What the order-2 step does on an H̄ that is not positive definite (subspace_step)."""


class SolverStatus(str, enum.Enum):  # noqa: UP042 (the contract is a str mixin enum)
    """How :func:`subspace_step` solved (or refused) the step; ``ok`` statuses carry a step."""

    NEWTON = "newton"
    NOT_POSITIVE_DEFINITE = "not_positive_definite"
    CUBIC_POSITIVE_DEFINITE = "cubic_positive_definite"
    CUBIC_INDEFINITE = "cubic_indefinite"
    CUBIC_SINGULAR_D = "cubic_singular_d"
    HARD_CASE = "hard_case"
    UNBOUNDED = "unbounded"
    NON_FINITE = "non_finite"
    # order 2 on an H̄ that is not ≻ 0 (indefinite="solve" or "saddle_free"); appended last so
    # that the codes of the statuses above (their position, PartitionedNewton.STATUS_CODES) stay
    NEWTON_INDEFINITE = "newton_indefinite"
    SADDLE_FREE = "saddle_free"
    ORDER2_SINGULAR = "order2_singular"
    FLAT_SUBSET = "flat_subset"


_OK_STATUSES = frozenset(
    {
        SolverStatus.NEWTON,
        SolverStatus.CUBIC_POSITIVE_DEFINITE,
        SolverStatus.CUBIC_INDEFINITE,
        SolverStatus.CUBIC_SINGULAR_D,
        SolverStatus.HARD_CASE,
        SolverStatus.NEWTON_INDEFINITE,
        SolverStatus.SADDLE_FREE,
        SolverStatus.ORDER2_SINGULAR,
        SolverStatus.FLAT_SUBSET,
    }
)
OK_STATUSES = _OK_STATUSES  # statuses whose η is a usable step (public name)


@dataclass(frozen=True)
class SubspaceStep:
    """Result of :func:`subspace_step`.

    Attributes:
        eta: η [S], float64, CPU; all zeros when ``ok`` is False.
        status: how the step was solved, see :class:`SolverStatus`.
        r: ‖Dη‖ (0.0 for Newton and when no step).
        model_value: m(η) = −ḡᵀη + ½ηᵀH̄η + (λ_int/6)‖Dη‖³ (0.0 when no step, i.e. m(0)).
        residual: relative stationarity residual ‖C⁻¹∇m(η)‖ / (‖C⁻¹ḡ‖ + ‖C⁻¹H̄η‖ +
            (λ_int/2) r ‖C⁻¹D²η‖), with the scale-covariant diagonal C of the solve (C = D on
            the subsets with d_s > 0, C = Diag(H̄_ss)^{1/2} elsewhere), so it is invariant under
            METHOD.md §6; NaN when no step. Rounding level, except when a near-zero d_s was
            dropped (see :func:`subspace_step`): then up to ~DROP_TOLERANCE. For an order-2
            step on an H̄ that is not ≻ 0 it is the residual of the equation that step solves
            (see :func:`subspace_step`), also rounding level.
        reduced_status: with status FLAT_SUBSET, the status of the solve over the subsets that
            are not flat (None when every subset is flat, or no subset was dropped).
        flat: the subsets dropped (η_s = 0), one bool per subset: those given as ``flat``
            and, in the order-2 modes "solve" and "saddle_free", those with H̄_ss = 0; ()
            when none was dropped.
    """

    eta: torch.Tensor
    status: SolverStatus
    r: float
    model_value: float
    residual: float
    reduced_status: SolverStatus | None = None
    flat: tuple[bool, ...] = ()

    @property
    def ok(self) -> bool:
        """True when ``eta`` is a usable step (the statuses of ``OK_STATUSES``)."""
        return self.status in _OK_STATUSES


def subspace_step(
    g: Any,
    H: Any,
    d: Any = None,
    lambda_int: float = 0.0,
    indefinite: str = "skip",
    flat: Any = None,
) -> SubspaceStep:
    r"""Global minimiser η* [S] of m(η) = −ḡᵀη + ½ηᵀH̄η + (λ_int/6)‖Dη‖³ (METHOD.md §3, §5).

    Args:
        g: ḡ [S] (tensor, array or list; any real dtype, computed in float64).
        H: H̄ [S, S]; a non-symmetric H̄ is replaced by (H̄ + H̄ᵀ)/2 (the model only sees that).
        d: the cube roots d_s = |D^3_sss|^{1/3} [S], not the raw third derivatives; or None.
        lambda_int: λ_int ≥ 0, the weight of the cubic term.
        indefinite: the order-2 step (λ_int = 0 or d None) on an H̄ that is not ≻ 0, one of
            ``INDEFINITE_MODES``: ``"skip"`` (no step: m has no minimiser), ``"solve"`` (the
            paper's H̄⁻¹ḡ whatever the inertia) or ``"saddle_free"`` (|H̄|⁻¹ḡ). Not used by
            the cubic model.
        flat: optional mask [S] (bool) of the subsets along which the loss is numerically
            constant (``optimizers.flatness``: a conv bias before a BatchNorm, a parameter the
            loss does not read, u_s = 0). They are dropped: η_s = 0 whatever ḡ_s, H̄_s· and
            d_s, and the step is solved exactly over the others (set R) from ḡ_R, H̄_RR and
            d_R alone, by the rules below (in the order-2 modes ``"solve"`` and
            ``"saddle_free"`` through the equilibrated solve of the H̄_ss = 0 case, which is
            the same drop). Status FLAT_SUBSET when some subset was dropped and the reduced
            solve gave a step (its own status is in ``reduced_status``), or when every subset
            is flat (η = 0); the reduced solve's status when it gave none. r, model_value and
            residual are those of the reduced solve (m(η) is the same number: η_s = 0 on the
            flat subsets).

    Method (σ = λ_int/2, r = ‖Dη‖):

    * **Newton** (λ_int = 0 or d None): η = H̄⁻¹ḡ if H̄ ≻ 0 (status NEWTON). H̄ ≻ 0 is
      decided on the equilibrated C⁻¹H̄C⁻¹ (C = Diag(H̄_ss)^{1/2}, requires every H̄_ss > 0):
      its smallest eigenvalue must exceed 8·S·eps times its largest. Otherwise, by
      ``indefinite``:

      - ``"skip"``: no step (NOT_POSITIVE_DEFINITE; the caller decides).
      - ``"solve"`` and ``"saddle_free"``, in equilibrated, scale-covariant variables: a
        subset with H̄_ss = 0 is flat (the model has no curvature along u_s; METHOD.md §4: a
        constant direction must not move): η_s = 0, whatever ḡ_s and H̄_s·. The others
        (set R) are solved with C = Diag(|H̄_ss|)^{1/2} [R], K = C⁻¹H̄_RR C⁻¹ = QΛQᵀ (unit
        diagonal up to sign) and b = C⁻¹ḡ_R: η_R = C⁻¹z with z = Q F(Λ)⁻¹ Qᵀb, where
        F(λ) = λ for ``"solve"`` (the stationary point H̄⁻¹ḡ, a saddle of m) and F(λ) = |λ|
        for ``"saddle_free"`` (|H̄|⁻¹ḡ in these variables, Dauphin et al. 2014: directions
        of negative curvature are followed downhill). An eigenvalue with
        |λ_i| ≤ 8·|R|·eps·max|λ| counts as zero and the component of b along q_i is left
        out (no step along a direction without curvature): the minimum-norm solution in z,
        not in η's raw coordinates, whose pseudo-inverse METHOD.md §6 does not leave
        invariant (H̄ = [[1, 1], [1, 1]], a = (1, 2)). Status, the first that applies:
        FLAT_SUBSET (some H̄_ss = 0, or a subset given as ``flat``: they join the H̄_ss = 0
        ones), ORDER2_SINGULAR (some λ_i counted as zero), else NEWTON_INDEFINITE
        (``"solve"``) or SADDLE_FREE (K then has a negative eigenvalue: an H̄ ≻ 0 took the
        NEWTON branch; with FLAT_SUBSET, ``reduced_status`` is one of these, or NEWTON when
        K ≻ 0 after the drop). m(η) is the quadratic model at η (−ḡᵀη + ½ηᵀH̄η);
        the residual is that of the equation solved, ‖QF(Λ)Qᵀz − Q_kQ_kᵀb‖ /
        (‖Q_kᵀb‖ + ‖QF(Λ)Qᵀz‖) (Q_k: the eigenvectors kept). ``PartitionedNewton`` then
        clips η_s < 0 (``remove_negative``).
    * **Cubic, all d_s > 0**: in y = Dη the model is −bᵀy + ½yᵀMy + (σ/3)‖y‖³ with b = D⁻¹ḡ,
      M = D⁻¹H̄D⁻¹ = QΛQᵀ, β = Qᵀb. With ω = max(0, −λ_min), r0 = ω/σ and μ = Λ + ω ≥ 0, the
      step is y(s) = Q(μ + s)⁻¹β at the root s* ≥ 0 of h(s) = ‖(μ + s)⁻¹β‖ − (s + ω)/σ
      (h = f of METHOD.md §5 at r = (s + ω)/σ, strictly decreasing), bracketed in
      (s_lo, (σ‖β‖)^{1/2}] and found by Brent's method to 4·eps relative. Status
      CUBIC_POSITIVE_DEFINITE if λ_min > 8·S·eps·‖M‖, else CUBIC_INDEFINITE.
    * **Hard case** f(r0) ≤ 0: the eigenvalues within 8·S·eps·‖M‖ of λ_min (set J) carry
      ‖β_J‖ ≤ 8·S·eps·‖β‖ and the rest y0 = Σ_{i∉J} β_i/μ_i q_i has ‖y0‖ ≤ r0. Then
      y = y0 + t v, v the unit vector of the eigenspace J closest to a coordinate axis
      (v ∝ P_J e_k, k = argmax_k (P_J)_kk, so v_k > 0), t = (r0² − ‖y0‖²)^{1/2} ≥ 0: one
      global minimiser out of many (status HARD_CASE; compare model values, not η).
    * **Some d_s zero** (status CUBIC_SINGULAR_D unless the reduced problem is a hard case):
      d_s counts as zero, a priori, if d_s = 0, or if ḡ_s ≠ 0, H̄_ss > 0 and
      λ_int d_s³ |ḡ_s| ≤ ε H̄_ss² (ε = ZERO_D_TOLERANCE: the cubic term of subset s alone is a
      fraction ~ε of its quadratic term at the one-dimensional Newton step ḡ_s/H̄_ss; both
      sides scale like a_s⁸ under METHOD.md §6, and the model depends on (λ_int, d) only
      through λ_int d³; with ḡ_s = 0 there is no step scale, and with H̄_ss ≤ 0 the cubic term
      is what bounds m along e_s, so the test does not apply), or if d_s²/|H̄_ss| ≤ eps ·
      max_t d_t²/|H̄_tt| (M = D⁻¹H̄D⁻¹ graded beyond float64). A posteriori, at the step
      found, a zero-counted d_s > 0 whose term (λ_int/2) r d_s² in the stationarity equation
      of subset s exceeds DROP_TOLERANCE |H̄_ss| (√eps ≈ 1.5e-8) is restored and the step
      solved once more; so a dropped d_s changes that equation by at most ~1.5e-8 relative
      (the residual shows it), and a restored one grades M by at most ~1/√eps, costing about
      as many digits in the eigendecomposition. The zero set K enters m only quadratically,
      so it is eliminated exactly: in coordinates equilibrated by C (C_ss = d_s on P,
      H̄_ss^{1/2} on K), the model is UNBOUNDED if H̄_KK has an eigenvalue below −τ
      (τ = 8·S·eps·‖C⁻¹H̄C⁻¹‖) or a null vector w (|eigenvalue| ≤ τ) with ‖H̄_PK w‖ > τ or
      |ḡ_Kᵀw| > 8·S·eps·‖C⁻¹ḡ‖
      (moving along w lowers m linearly); otherwise η_K = H̄_KK⁺(ḡ_K − H̄_KP η_P) (minimum
      norm along the null space) and η_P minimises the cubic model with the Schur complement
      ḡ_P − H̄_PK H̄_KK⁺ ḡ_K, H̄_PP − H̄_PK H̄_KK⁺ H̄_KP. A d_s declared zero is dropped from the
      solve only; r, model_value and residual use the given d.
    * **Non-finite** ḡ, H̄ or d: status NON_FINITE, no step.

    Every threshold is relative and computed in coordinates that are invariant under
    METHOD.md §6 (ḡ_s → a_s²ḡ_s, H̄_st → a_s²a_t²H̄_st, d_s → a_s²d_s), so η_s → η_s/a_s² up to
    rounding. When the step is not ``ok``, η = 0. Cost: O(S³) time, O(S²) memory.

    Raises:
        ValueError: wrong shapes (S = 0, ḡ not [S], H̄ not [S, S], d not [S]), a negative d_s,
            λ_int negative or not finite, or ``indefinite`` not in ``INDEFINITE_MODES``.

    Example (S = 1: Cauchy's step ḡ/H̄):

        >>> subspace_step([2.0], [[4.0]]).eta
        tensor([0.5000], dtype=torch.float64)
    """
    g, H, d, lambda_int = _validated(g, H, d, lambda_int)
    if indefinite not in INDEFINITE_MODES:
        raise ValueError(f"indefinite must be one of {INDEFINITE_MODES}, got {indefinite!r}")
    size = g.shape[0]
    flat = _validated_flat(flat, size)
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(H))) or (
        d is not None and not np.all(np.isfinite(d))
    ):
        return _no_step(size, SolverStatus.NON_FINITE)
    H = 0.5 * (H + H.T)
    order2 = lambda_int == 0.0 or d is None
    if flat is not None and not (order2 and indefinite != "skip"):
        return _without_flat(g, H, d, lambda_int, indefinite, flat)
    residual = None  # computed below from the model, unless the solve gives its own
    if order2:
        status, eta, scale = _newton(g, H) if flat is None else (_NOT_PD, None, None)
        dropped, reduced_status = None, None
        if status is SolverStatus.NOT_POSITIVE_DEFINITE and indefinite != "skip":
            status, eta, residual, dropped, reduced_status = _order2_not_positive_definite(
                g, H, indefinite, flat
            )
        sigma, d_used = 0.0, np.zeros(size)
    else:
        status, eta, scale = _cubic(g, H, d, lambda_int)
        sigma, d_used = 0.5 * lambda_int, d
        dropped, reduced_status = None, None
    if status not in _OK_STATUSES:
        return _no_step(size, status)
    radius = float(np.linalg.norm(d_used * eta))  # ‖Dη‖; d_used = 0 for Newton
    model_value = float(-g @ eta + 0.5 * eta @ H @ eta + (sigma / 3.0) * radius**3)
    if residual is None:
        residual = _residual(g, H, d_used, sigma, eta, radius, scale)
    return SubspaceStep(
        eta=torch.from_numpy(eta.copy()),
        status=status,
        r=radius,
        model_value=model_value,
        residual=residual,
        reduced_status=reduced_status,
        flat=() if dropped is None or not dropped.any() else tuple(bool(f) for f in dropped),
    )


_NOT_PD = SolverStatus.NOT_POSITIVE_DEFINITE


def _validated_flat(flat: Any, size: int) -> np.ndarray | None:
    """The mask ``flat`` as a bool array [S], or None when absent or all False."""
    if flat is None:
        return None
    if isinstance(flat, torch.Tensor):
        flat = flat.detach().cpu().numpy()
    mask = np.asarray(flat)
    if mask.shape != (size,) or mask.dtype != np.bool_:
        raise ValueError(
            f"flat must be a bool mask of shape [S] = [{size}], got {mask.dtype} "
            f"of shape {list(mask.shape)}"
        )
    return mask if mask.any() else None


def _without_flat(g, H, d, lambda_int, indefinite, flat: np.ndarray) -> SubspaceStep:
    """subspace_step over the subsets that are not ``flat``, η_s = 0 on those (cubic model and
    the order-2 "skip" mode; the other order-2 modes drop them in their own solve)."""
    size, kept = g.shape[0], ~flat
    flags = tuple(bool(f) for f in flat)
    if not kept.any():
        eta = torch.zeros(size, dtype=torch.float64)
        return SubspaceStep(eta, SolverStatus.FLAT_SUBSET, 0.0, 0.0, 0.0, flat=flags)
    reduced = subspace_step(
        g[kept], H[np.ix_(kept, kept)], None if d is None else d[kept], lambda_int, indefinite
    )
    eta = torch.zeros(size, dtype=torch.float64)
    if not reduced.ok:
        return SubspaceStep(eta, reduced.status, 0.0, 0.0, math.nan, flat=flags)
    eta[torch.from_numpy(kept)] = reduced.eta
    return SubspaceStep(
        eta=eta,
        status=SolverStatus.FLAT_SUBSET,
        r=reduced.r,
        model_value=reduced.model_value,
        residual=reduced.residual,
        reduced_status=reduced.status,
        flat=flags,
    )


def _as_float64(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    try:
        return np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be real numbers, got {value!r}") from error


def _validated(g: Any, H: Any, d: Any, lambda_int: Any):
    g = _as_float64(g, "g")
    H = _as_float64(H, "H")
    if g.ndim != 1 or g.shape[0] == 0:
        raise ValueError(f"g must have shape [S] with S >= 1, got shape {tuple(g.shape)}")
    size = g.shape[0]
    if H.shape != (size, size):
        raise ValueError(f"H must have shape [S, S] = {[size, size]}, got {list(H.shape)}")
    if d is not None:
        d = _as_float64(d, "d")
        if d.shape != (size,):
            raise ValueError(f"d must have shape [S] = [{size}], got {list(d.shape)}")
        if np.any(d < 0):
            raise ValueError(f"d must be >= 0 (cube roots |D^3_sss|^(1/3)), got {d.tolist()}")
    if isinstance(lambda_int, torch.Tensor):
        lambda_int = lambda_int.item()
    try:
        lambda_int = float(lambda_int)
    except (TypeError, ValueError) as error:
        raise ValueError(f"lambda_int must be a number, got {lambda_int!r}") from error
    if not (math.isfinite(lambda_int) and lambda_int >= 0.0):
        raise ValueError(f"lambda_int must be finite and >= 0, got {lambda_int}")
    return g, H, d, lambda_int


def _no_step(size: int, status: SolverStatus) -> SubspaceStep:
    eta = torch.zeros(size, dtype=torch.float64)
    return SubspaceStep(eta=eta, status=status, r=0.0, model_value=0.0, residual=math.nan)


def _newton(g: np.ndarray, H: np.ndarray):
    """η = H̄⁻¹ḡ on the equilibrated C⁻¹H̄C⁻¹, C = Diag(H̄_ss)^{1/2}; None if not H̄ ≻ 0."""
    size = g.shape[0]
    diagonal = np.diag(H)
    if not np.all(diagonal > 0):
        return SolverStatus.NOT_POSITIVE_DEFINITE, None, None
    scale = np.sqrt(diagonal)
    eigenvalues, vectors = np.linalg.eigh(H / np.outer(scale, scale))
    if not eigenvalues[0] > 8 * size * _EPS * eigenvalues[-1]:
        return SolverStatus.NOT_POSITIVE_DEFINITE, None, None
    z = vectors @ ((vectors.T @ (g / scale)) / eigenvalues)
    return SolverStatus.NEWTON, z / scale, scale


def _order2_not_positive_definite(g: np.ndarray, H: np.ndarray, mode: str, given=None):
    """(status, η, residual) of the order-2 step ``mode`` ("solve" or "saddle_free") on an H̄
    that is not ≻ 0 (or with ``given`` flat subsets), in the equilibrated variables of
    subspace_step's docstring."""
    diagonal = np.diag(H)
    flat = diagonal == 0  # η_s = 0 there
    if given is not None:
        flat = flat | given
    eta = np.zeros(g.shape[0])
    if flat.all():
        return SolverStatus.FLAT_SUBSET, eta, 0.0, flat, None
    kept = ~flat
    scale = np.sqrt(np.abs(diagonal[kept]))
    b = g[kept] / scale
    eigenvalues, vectors = np.linalg.eigh(H[np.ix_(kept, kept)] / np.outer(scale, scale))
    magnitudes = np.abs(eigenvalues)
    null = magnitudes <= 8 * b.shape[0] * _EPS * magnitudes.max()
    curvature = np.where(null, 1.0, magnitudes if mode == "saddle_free" else eigenvalues)
    beta = np.where(null, 0.0, vectors.T @ b)  # b without its components along null(K)
    z = vectors @ (beta / curvature)
    eta[kept] = z / scale
    image = vectors @ (np.where(null, 0.0, curvature) * (vectors.T @ z))  # QF(Λ)Qᵀz
    denominator = float(np.linalg.norm(beta) + np.linalg.norm(image))
    error = float(np.linalg.norm(image - vectors @ beta))
    residual = error / denominator if denominator > 0 else 0.0
    if null.any():
        kind = SolverStatus.ORDER2_SINGULAR
    elif eigenvalues[0] > 0:  # only after a drop: otherwise the NEWTON branch took it
        kind = SolverStatus.NEWTON
    elif mode == "saddle_free":
        kind = SolverStatus.SADDLE_FREE
    else:
        kind = SolverStatus.NEWTON_INDEFINITE
    if flat.any():
        return SolverStatus.FLAT_SUBSET, eta, residual, flat, kind
    return kind, eta, residual, flat, None


def _zero_d(g: np.ndarray, H: np.ndarray, d: np.ndarray, lambda_int: float) -> np.ndarray:
    """A priori: d_s = 0, or ḡ_s ≠ 0, H̄_ss > 0 and λ_int d_s³ |ḡ_s| ≤ ε H̄_ss², or grading
    d_s²/|H̄_ss| ≤ eps · max_t d_t²/|H̄_tt| (over H̄_tt ≠ 0)."""
    diagonal = np.abs(np.diag(H))
    with np.errstate(over="ignore", under="ignore"):  # inf / 0 products only decide False
        negligible = lambda_int * d**3 * np.abs(g) <= ZERO_D_TOLERANCE * diagonal**2
        ratio = np.where(diagonal > 0, d**2 / np.where(diagonal > 0, diagonal, 1.0), np.inf)
    finite = ratio[np.isfinite(ratio)]
    graded = ratio <= _EPS * finite.max() if finite.size else np.zeros_like(d, dtype=bool)
    return (d == 0) | ((g != 0) & (np.diag(H) > 0) & negligible) | graded


def _cubic(g: np.ndarray, H: np.ndarray, d: np.ndarray, lambda_int: float):
    """Cubic step with the a priori zero set, then once more without the d_s whose dropped term
    (λ_int/2) r d_s² exceeds DROP_TOLERANCE |H̄_ss| at the step found (a posteriori check)."""
    zero = _zero_d(g, H, d, lambda_int)
    status, eta, scale = _cubic_with(g, H, d, lambda_int, zero)
    if status in _OK_STATUSES and zero.any():
        radius = np.linalg.norm(d * eta)
        dropped_term = 0.5 * lambda_int * radius * d**2
        kept = zero & (d > 0) & (dropped_term > DROP_TOLERANCE * np.abs(np.diag(H)))
        if kept.any():
            status, eta, scale = _cubic_with(g, H, d, lambda_int, zero & ~kept)
    return status, eta, scale


def _cubic_with(g: np.ndarray, H: np.ndarray, d: np.ndarray, lambda_int: float, zero):
    """The cubic model with d_s taken as 0 where ``zero``, in the coordinates z = Cη that
    METHOD.md §6 leaves invariant."""
    size = g.shape[0]
    sigma = 0.5 * lambda_int
    scale = np.where(zero, np.sqrt(np.abs(np.diag(H))), d)
    scale = np.where(scale > 0, scale, np.where(np.abs(g) > 0, np.abs(g), 1.0))
    gz = g / scale
    Hz = H / np.outer(scale, scale)
    if not zero.any():
        y, kind = _cubic_identity(gz, Hz, sigma)
        status = {
            "positive_definite": SolverStatus.CUBIC_POSITIVE_DEFINITE,
            "indefinite": SolverStatus.CUBIC_INDEFINITE,
            "hard_case": SolverStatus.HARD_CASE,
        }[kind]
        return status, y / scale, scale
    kept, dropped = ~zero, zero
    tolerance = 8 * size * _EPS * np.linalg.norm(Hz, 2)
    H_kk = Hz[np.ix_(dropped, dropped)]
    H_pk = Hz[np.ix_(kept, dropped)]
    g_k = gz[dropped]
    curvature, vectors = np.linalg.eigh(H_kk)
    if curvature[0] < -tolerance:
        return SolverStatus.UNBOUNDED, None, None
    null = curvature <= tolerance
    null_vectors = vectors[:, null]
    coupling = np.linalg.norm(H_pk @ null_vectors) if H_pk.size else 0.0
    slope = np.linalg.norm(g_k @ null_vectors)
    if coupling > tolerance or slope > 8 * size * _EPS * np.linalg.norm(gz):
        return SolverStatus.UNBOUNDED, None, None
    range_vectors = vectors[:, ~null]
    pseudo_inverse = (range_vectors / curvature[~null]) @ range_vectors.T  # H̄_KK⁺
    z = np.zeros(size)
    kind = "singular"
    if kept.any():
        g_schur = gz[kept] - H_pk @ (pseudo_inverse @ g_k)
        H_schur = Hz[np.ix_(kept, kept)] - H_pk @ pseudo_inverse @ H_pk.T
        y, kind = _cubic_identity(g_schur, 0.5 * (H_schur + H_schur.T), sigma)
        z[kept] = y
        z[dropped] = pseudo_inverse @ (g_k - H_pk.T @ y)
    else:
        z[dropped] = pseudo_inverse @ g_k
    status = SolverStatus.HARD_CASE if kind == "hard_case" else SolverStatus.CUBIC_SINGULAR_D
    return status, z / scale, scale


def _cubic_identity(b: np.ndarray, M: np.ndarray, sigma: float):
    """Global minimiser y of −bᵀy + ½yᵀMy + (σ/3)‖y‖³ and its kind (see subspace_step)."""
    size = b.shape[0]
    eigenvalues, vectors = np.linalg.eigh(M)
    beta = vectors.T @ b
    tolerance = 8 * size * _EPS * max(abs(eigenvalues[0]), abs(eigenvalues[-1]))
    positive_definite = eigenvalues[0] > tolerance
    kind = "positive_definite" if positive_definite else "indefinite"
    omega = max(0.0, -eigenvalues[0])
    shifted = np.maximum(eigenvalues + omega, 0.0)  # μ ≥ 0, μ_min = 0 when λ_min < 0
    near = np.zeros(size, dtype=bool) if positive_definite else shifted <= tolerance
    beta_norm = float(np.linalg.norm(beta))
    lower = None  # s_lo with h(s_lo) > 0 when known
    if np.linalg.norm(beta[near]) <= 8 * size * _EPS * beta_norm:
        beta = np.where(near, 0.0, beta)
        beta_norm = float(np.linalg.norm(beta))
        far = ~near
        y0 = beta[far] / shifted[far]
        radius0 = omega / sigma
        if np.linalg.norm(y0) <= radius0:
            y = vectors[:, far] @ y0
            if radius0 == 0.0:
                return y, kind
            near_vectors = vectors[:, near]
            k = int(np.argmax(np.sum(near_vectors**2, axis=1)))
            v = near_vectors @ near_vectors[k]
            v /= np.linalg.norm(v)
            t = math.sqrt(max(radius0**2 - float(y @ y), 0.0))
            return y + t * v, "hard_case"
        lower = 0.0

    active = beta != 0  # μ_i + s > 0 on these for every s ≥ 0 tried below
    beta, shifted = beta[active], shifted[active]

    def h(s: float) -> float:
        return float(np.linalg.norm(beta / (shifted + s))) - (s + omega) / sigma

    upper = math.sqrt(sigma * beta_norm)
    while h(upper) > 0:  # only rounding can make the bound fail; widen it
        upper *= 2.0
    if lower is None:
        lower = upper
        for _ in range(400):
            lower /= 16.0
            if lower == 0.0 or h(lower) > 0:
                break
    if h(upper) == 0.0:
        root = upper
    else:
        from scipy.optimize import brentq  # here: scipy.optimize takes 0.6 s to import

        root = brentq(h, lower, upper, xtol=np.finfo(np.float64).tiny, rtol=4 * _EPS, maxiter=500)
    return vectors[:, active] @ (beta / (shifted + root)), kind


def _residual(g, H, d, sigma, eta, radius, scale) -> float:
    """‖C⁻¹∇m(η)‖ / (‖C⁻¹ḡ‖ + ‖C⁻¹H̄η‖ + σ r ‖C⁻¹D²η‖), 0 when the denominator is 0."""
    curvature = H @ eta
    cubic = sigma * radius * d**2 * eta
    gradient = -g + curvature + cubic
    denominator = sum(float(np.linalg.norm(v / scale)) for v in (g, curvature, cubic))
    return float(np.linalg.norm(gradient / scale)) / denominator if denominator > 0 else 0.0
