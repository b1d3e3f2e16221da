"""The fused, chunked soft-target cross-entropy against the plain formula in float64."""

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


@pytest.mark.parametrize("chunk_elems", [None, 1, 50, 10_000])
def test_matches_formula_for_any_chunking(chunk_elems):
    logits, targets, weights = _data(0)
    out = soft_cross_entropy(logits, targets, 0.1, weights, chunk_elems=chunk_elems)
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(float(_reference(logits, targets, 0.1, weights)), rel=1e-5)


def test_gradient_matches_autograd_of_the_formula():
    logits, targets, weights = _data(1)
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s: soft_cross_entropy(s, targets.double(), 0.1, weights.double(), chunk_elems=40), (x,)
    )
    a = logits.clone().requires_grad_(True)
    soft_cross_entropy(a, targets, 0.1, weights, chunk_elems=40).backward()
    b = logits.double().requires_grad_(True)
    _reference(b, targets, 0.1, weights).backward()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-7)


def test_target_index_reuses_target_rows_without_copies():
    logits, targets, weights = _data(2, n=12, r=3)
    index = torch.arange(12) % 3
    out = soft_cross_entropy(logits, targets, 0.07, weights, target_index=index, chunk_elems=74)
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


def test_the_accelerator_chunk_kernels_compute_the_cpu_chunks_and_compile_whole():
    """On an accelerator each chunk's forward and gradient are compiled (one fused pass); the pure
    forms they compile are the CPU's in-place chunks, on fp32 and on bf16 logits, and they trace
    into one graph with a dynamic row count."""
    from dinoflow.losses.soft_ce import _chunk_forward_pure, _chunk_grad_pure, chunk_kernels

    g = torch.Generator().manual_seed(3)
    fwd_cpu, grad_cpu = chunk_kernels(torch.device("cpu"))
    torch._dynamo.reset()
    fwd_c = torch.compile(_chunk_forward_pure, dynamic=True, fullgraph=True, backend="aot_eager")
    grad_c = torch.compile(_chunk_grad_pure, dynamic=True, fullgraph=True, backend="aot_eager")
    for rows, dtype in ((13, torch.float32), (29, torch.bfloat16)):
        logits = (torch.randn(rows, 300, generator=g) * 3).to(dtype)
        t = torch.softmax(torch.randn(rows, 300, generator=g) / 0.05, -1)
        w = torch.rand(rows, generator=g)
        scale = torch.rand(rows, 1, generator=g)
        part, lse = fwd_cpu(logits, t, w, 0.1)
        want_grad = grad_cpu(logits, t, lse, scale, 0.1)
        for fwd, grad in ((_chunk_forward_pure, _chunk_grad_pure), (fwd_c, grad_c)):
            p2, lse2 = fwd(logits, t, w, 0.1)
            torch.testing.assert_close(p2, part, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lse2, lse, rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(grad(logits, t, lse, scale, 0.1), want_grad, rtol=1e-5, atol=1e-7)
    cuda_fwd, cuda_grad = chunk_kernels(torch.device("cuda"))  # compiled lazily: nothing runs here
    assert cuda_fwd is not fwd_cpu and cuda_grad is not grad_cpu
