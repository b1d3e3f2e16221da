"""KoLeoLoss against a direct nearest-neighbour computation; fp32 safety."""

import math

import pytest
import torch

from dinoflow.losses import KoLeoLoss


def _reference(x: torch.Tensor, eps: float = 1e-8) -> float:
    """-mean_i log(min_{j≠i} ‖x̂_i − x̂_j‖ + eps), looping in float64."""
    xn = [v / max(float(v.norm()), eps) for v in x.double()]
    total = 0.0
    for i, xi in enumerate(xn):
        d = min(float((xi - xj).norm()) for j, xj in enumerate(xn) if j != i)
        total += math.log(d + eps)
    return -total / len(xn)


@pytest.mark.parametrize("n", [2, 7, 33])
def test_matches_nearest_neighbour_formula(n):
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(n))
    assert math.isclose(float(KoLeoLoss()(x)), _reference(x), rel_tol=1e-5)


def test_spread_points_score_lower_than_clustered_points():
    g = torch.Generator().manual_seed(0)
    spread = torch.eye(8)
    clustered = torch.ones(8, 8) + 0.01 * torch.randn(8, 8, generator=g)
    assert KoLeoLoss()(spread) < KoLeoLoss()(clustered)


def test_duplicates_and_fp16_stay_finite():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 32, generator=g)
    x[4] = x[1]
    for inp in (x, x.half(), x.bfloat16()):
        inp = inp.clone().requires_grad_(True)
        loss = KoLeoLoss()(inp)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, inp)
        assert torch.isfinite(grad).all()
    # a duplicate's distance is ~0: its term is about -log(2e-8), large but finite
    assert float(KoLeoLoss()(x)) > -math.log(3e-8) / 6


def test_fp16_input_equals_fp32_of_the_same_values():
    x = torch.randn(10, 24, generator=torch.Generator().manual_seed(2)).half()
    assert torch.allclose(KoLeoLoss()(x), KoLeoLoss()(x.float()), atol=1e-6)


def test_fp32_even_under_autocast():
    x = torch.randn(10, 24, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = KoLeoLoss()(x)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, KoLeoLoss()(x), atol=1e-6)


def test_gradcheck_and_descent_spreads_points():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
    fn = KoLeoLoss()
    assert torch.autograd.gradcheck(lambda v: fn(v), (x,))
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        assert fn(x - 0.01 * grad) < loss


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="batch, dim"):
        KoLeoLoss()(torch.randn(2, 3, 4))
