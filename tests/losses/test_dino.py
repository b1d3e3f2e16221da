"""DINOLoss against direct float64 computations of its formulas."""

import math

import torch

from dinoflow.losses import DINOLoss


def _softmax64(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x.double() - x.double().max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _reference_loss(students, teachers, student_temp):
    """-sum_{s,t} (1/B) sum_b sum_k t[b,k] log(softmax(s/τ))[b,k], looping in float64."""
    total = 0.0
    for s in students:
        log_p = torch.log(_softmax64(s / student_temp))
        for t in teachers:
            per_sample = [float((t[b].double() * log_p[b]).sum()) for b in range(s.shape[0])]
            total -= sum(per_sample) / len(per_sample)
    return total


def test_forward_matches_cross_entropy_formula():
    g = torch.Generator().manual_seed(0)
    k, b = 32, 5
    students = list(torch.randn(4, b, k, generator=g))
    teachers = [_softmax64(torch.randn(b, k, generator=g)).float() for _ in range(2)]
    loss = DINOLoss(k, student_temp=0.1)(students, teachers)
    assert math.isclose(float(loss), _reference_loss(students, teachers, 0.1), rel_tol=1e-5)


def test_teacher_list_may_be_a_stacked_tensor():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 8, generator=g)
    t = torch.softmax(torch.randn(2, 3, 8, generator=g), -1)
    fn = DINOLoss(8)
    assert torch.allclose(fn(s, t), fn(list(s), list(t)))


def test_softmax_center_teacher_formula_and_lazy_ema_center():
    g = torch.Generator().manual_seed(2)
    k, temp, m = 16, 0.04, 0.9
    fn = DINOLoss(k, center_momentum=m)
    t1, t2 = torch.randn(6, k, generator=g), torch.randn(6, k, generator=g)

    out = fn.softmax_center_teacher(t1, temp)  # centre still zero
    assert torch.allclose(out.double(), _softmax64(t1 / temp), atol=1e-6)

    fn.update_center(t1)
    # the official timing: the EMA step lands when the next targets are computed
    assert torch.count_nonzero(fn.center) == 0
    out = fn.softmax_center_teacher(t2, temp)
    c1 = (1 - m) * t1.double().mean(0, keepdim=True)
    assert torch.allclose(fn.center.double(), c1, atol=1e-6)
    assert torch.allclose(out.double(), _softmax64((t2.double() - c1) / temp), atol=1e-5)

    fn.update_center(t2)
    fn.apply_center_update()
    c2 = m * c1 + (1 - m) * t2.double().mean(0, keepdim=True)
    assert torch.allclose(fn.center.double(), c2, atol=1e-6)


def test_pending_center_update_is_kept_in_state_dict_and_never_dropped():
    fn = DINOLoss(4)
    a, b = torch.ones(3, 4), 3 * torch.ones(2, 4)
    fn.update_center(a)
    assert torch.allclose(fn.state_dict()["center"], torch.full((1, 4), 0.1))
    fn.update_center(a)
    fn.update_center(b)  # two queued updates: both land
    fn.apply_center_update()
    expected = (0.1 * 0.9 + 0.1 * 1) * 0.9 + 0.1 * 3
    assert torch.allclose(fn.center, torch.full((1, 4), expected))


def test_gradcheck_and_descent_direction():
    g = torch.Generator().manual_seed(3)
    k = 6
    s = torch.randn(2, 3, k, generator=g, dtype=torch.float64, requires_grad=True)
    t = [torch.softmax(torch.randn(3, k, generator=g, dtype=torch.float64), -1) for _ in range(2)]
    fn = DINOLoss(k)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,))

    loss = fn(s, t)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all()
    with torch.no_grad():
        assert fn(s - 0.1 * grad, t) < loss


def test_sinkhorn_targets_through_the_loss_method():
    g = torch.Generator().manual_seed(4)
    q = DINOLoss(10).sinkhorn_knopp_teacher(torch.randn(7, 10, generator=g), 0.05)
    assert q.dtype == torch.float32 and q.shape == (7, 10)
    assert torch.allclose(q.sum(1), torch.ones(7), atol=1e-5)
