"""DINOLoss, as the training step calls it, against direct float64 computations of its formulas."""

import math

import pytest
import torch

from dinoflow.losses import DINOLoss


def _softmax64(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x.double() - x.double().max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _reference_pairs(pairs, student_temp):
    """-sum over (student crop s, teacher crop t) of (1/B) sum_b sum_k t[b,k] log(softmax(s/τ))[b,k],
    looping in float64."""
    total = 0.0
    for s, t in pairs:
        log_p = torch.log(_softmax64(s / student_temp))
        per_sample = [float((t[b].double() * log_p[b]).sum()) for b in range(s.shape[0])]
        total -= sum(per_sample) / len(per_sample)
    return total


def _crops(seed, k=32, b=5, n_local=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student_global = torch.randn(2 * b, k, generator=g, dtype=dtype)
    student_local = torch.randn(n_local * b, k, generator=g, dtype=dtype)
    targets = torch.stack([_softmax64(torch.randn(b, k, generator=g)) for _ in range(2)]).to(dtype)
    return student_global, student_local, targets


def test_global_crops_loss_is_the_cross_entropy_of_each_crop_against_its_target_crop():
    k, b = 32, 5
    s, _, t = _crops(0, k, b)
    loss = DINOLoss(k, student_temp=0.1).global_crops_loss(s, t)
    want = _reference_pairs([(s[:b], t[0]), (s[b:], t[1])], 0.1)
    assert loss.dtype == torch.float32
    assert math.isclose(float(loss), want, rel_tol=1e-5)


def test_local_crops_loss_pairs_every_local_crop_with_both_teacher_crops():
    k, b, n_local = 32, 5, 4
    _, s, t = _crops(1, k, b, n_local)
    loss = DINOLoss(k, student_temp=0.1).local_crops_loss(s, t)
    want = _reference_pairs([(s[i * b : (i + 1) * b], t[c]) for i in range(n_local) for c in range(2)], 0.1)
    assert math.isclose(float(loss), want, rel_tol=1e-5)


def test_student_rows_that_do_not_match_the_targets_are_refused():
    fn = DINOLoss(8)
    t = torch.softmax(torch.randn(2, 3, 8), -1)
    with pytest.raises(ValueError, match=r"crops·3, 8"):
        fn.local_crops_loss(torch.randn(7, 8), t)
    with pytest.raises(ValueError, match=r"\[2, B, K\]"):
        fn.global_crops_loss(torch.randn(6, 8), t.flatten(0, 1))


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


@pytest.mark.parametrize("form", ["global_crops_loss", "local_crops_loss"])
def test_gradcheck_and_descent_direction(form):
    s, s_local, t = _crops(3, k=6, b=3, n_local=2, dtype=torch.float64)
    x = (s if form == "global_crops_loss" else s_local).requires_grad_(True)
    fn = getattr(DINOLoss(6), form)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (x,))

    loss = fn(x, t)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    with torch.no_grad():
        assert fn(x - 0.1 * grad, t) < loss


def test_sinkhorn_targets_through_the_loss_method():
    g = torch.Generator().manual_seed(4)
    fn = DINOLoss(10)
    logits = torch.randn(7, 10, generator=g)
    q = fn.teacher_targets(logits, 0.05, "sinkhorn_knopp")
    assert q.dtype == torch.float32 and q.shape == (7, 10)
    assert torch.allclose(q.sum(1), torch.ones(7), atol=1e-5)
    assert torch.equal(q, fn.sinkhorn_knopp_teacher(logits, 0.05))
    fn.apply_center_update()
    assert torch.count_nonzero(fn.center) == 0  # Sinkhorn-Knopp leaves the centre alone


def test_softmax_targets_queue_the_centre_update():
    g = torch.Generator().manual_seed(5)
    fn = DINOLoss(10, center_momentum=0.9)
    logits = torch.randn(7, 10, generator=g)
    q = fn.teacher_targets(logits, 0.05, "softmax")
    assert torch.allclose(q.double(), _softmax64(logits / 0.05), atol=1e-6)
    fn.apply_center_update()
    assert torch.allclose(fn.center.double(), 0.1 * logits.double().mean(0, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="centering"):
        fn.teacher_targets(logits, 0.05, "sinkhorn")
