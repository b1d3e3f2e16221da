"""The soft-target cross-entropy, and its chunked prototype form, against the plain formula in float64."""

import pytest
import torch

from dinoflow.losses.soft_ce import prototype_cross_entropy, soft_cross_entropy


def _reference(logits, targets, temp, weights, index=None):
    t = targets.double() if index is None else targets.double()[index]
    log_p = torch.log_softmax(logits.double() / temp, dim=-1)
    return -(weights.double() * (t * log_p).sum(-1)).sum()


def _data(seed, n=13, k=37, r=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 3
    targets = torch.softmax(torch.randn(r or n, k, generator=g) / 0.1, -1)
    weights = torch.rand(n, generator=g)
    return logits, targets, weights


def test_matches_formula():
    logits, targets, weights = _data(0)
    out = soft_cross_entropy(logits, targets, 0.1, weights)
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(float(_reference(logits, targets, 0.1, weights)), rel=1e-5)


def test_gradient_matches_autograd_of_the_formula():
    logits, targets, weights = _data(1)
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: soft_cross_entropy(s, targets.double(), 0.1, weights.double()), (x,))
    a = logits.clone().requires_grad_(True)
    soft_cross_entropy(a, targets, 0.1, weights).backward()
    b = logits.double().requires_grad_(True)
    _reference(b, targets, 0.1, weights).backward()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-7)


def test_target_index_picks_each_rows_target():
    logits, targets, weights = _data(2, n=12, r=3)
    index = torch.arange(12) % 3
    out = soft_cross_entropy(logits, targets, 0.07, weights, target_index=index)
    assert float(out) == pytest.approx(float(_reference(logits, targets, 0.07, weights, index)), rel=1e-5)
    with pytest.raises(ValueError, match="target_index"):
        soft_cross_entropy(logits, targets, 0.07, weights)


def test_bf16_logits_are_upcast_before_the_temperature():
    """Regression: DINO divided bf16 logits by τ in bf16, rounding every logit/τ to 8 bits first."""
    g = torch.Generator().manual_seed(3)
    k, b = 512, 8
    logits = (torch.randn(b, k, generator=g) * 4).bfloat16()
    target = torch.softmax(torch.randn(b, k, generator=g) / 0.05, -1)
    want = _reference(logits, target, 0.1, torch.full((b,), 1.0 / b))
    got = soft_cross_entropy(logits, target, 0.1, 1.0 / b)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(want)) < 2e-6 * abs(float(want))
    # what dividing in bf16 first gives: far outside that tolerance, so the check above can fail
    bf16_first = -(target.double() * torch.log_softmax((logits / 0.1).double(), -1)).sum(-1).mean()
    assert abs(float(bf16_first) - float(want)) > 1e-4 * abs(float(want))


def test_prototype_form_equals_logit_form_and_never_stores_logits():
    g = torch.Generator().manual_seed(4)
    n, d, k = 20, 6, 300
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    weight = torch.randn(k, d, generator=g)
    targets = torch.softmax(torch.randn(n, k, generator=g) / 0.1, -1)
    weights = torch.rand(n, generator=g)
    requested = []

    def rows(a, b):
        requested.append(b - a)
        return targets[a:b]

    z1, w1 = z.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = prototype_cross_entropy(z1, w1, rows, 0.1, weights, chunk_elems=k * 4)
    loss.backward()
    z2, w2 = z.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    ref = soft_cross_entropy(z2 @ w2.t(), targets, 0.1, weights)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-6)
    assert max(requested) == 4 and sum(requested) == 2 * n  # chunks of 4 rows, forward + backward
    assert max(saved) < n * k  # nothing [N, K] is kept for the backward
