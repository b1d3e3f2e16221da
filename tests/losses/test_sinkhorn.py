"""Sinkhorn-Knopp in log-space: marginals, agreement with the linear-domain algorithm, no overflow."""

import pytest
import torch

from dinoflow.losses import DINOLoss, iBOTPatchLoss, sinkhorn_knopp


def _linear_sinkhorn64(logits: torch.Tensor, temp: float, n_iterations: int, n_samples: int | None = None):
    """The textbook algorithm in float64 on [K, B], with one global shift (a no-op mathematically)."""
    x = logits.double() / temp
    q = torch.exp(x - x.max()).t()
    k = q.shape[0]
    b = q.shape[1] if n_samples is None else n_samples
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(dim=1, keepdim=True) / k  # each prototype: mass 1/K
        q = q / q.sum(dim=0, keepdim=True) / b  # each sample: mass 1/B
    return (q * b).t()


@pytest.mark.parametrize("n_iterations", [0, 1, 3, 5])
def test_matches_linear_domain_reference(n_iterations):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 20, generator=g)
    out = sinkhorn_knopp(logits, 0.1, n_iterations=n_iterations)
    assert torch.allclose(out.double(), _linear_sinkhorn64(logits, 0.1, n_iterations), rtol=1e-5, atol=1e-7)


def test_marginals():
    g = torch.Generator().manual_seed(1)
    b, k = 16, 8
    logits = torch.randn(b, k, generator=g)
    q3 = sinkhorn_knopp(logits, 0.1, n_iterations=3)
    # the last step normalises each sample: every row is a distribution over prototypes
    assert torch.allclose(q3.sum(dim=1), torch.ones(b), atol=1e-5)
    # prototypes converge to equal usage: column sums -> B / K
    q_many = sinkhorn_knopp(logits, 0.1, n_iterations=300)
    assert torch.allclose(q_many.sum(dim=0), torch.full((k,), b / k), rtol=1e-3)
    # and three iterations are already more balanced than the plain softmax
    plain = torch.softmax(logits / 0.1, dim=1).sum(0)
    assert (q3.sum(0) - b / k).abs().max() < (plain - b / k).abs().max()


def test_huge_logits_do_not_overflow():
    g = torch.Generator().manual_seed(2)
    logits = torch.rand(10, 30, generator=g) * 20  # / 0.04 → up to 500, far beyond fp32 exp's 88
    naive = torch.exp(logits / 0.04)
    assert not torch.isfinite(naive).all()  # the unguarded algorithm overflows on these inputs
    out = DINOLoss(30).sinkhorn_knopp_teacher(logits, 0.04)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), _linear_sinkhorn64(logits, 0.04, 3), rtol=1e-4, atol=1e-6)


def test_ibot_variant_uses_the_given_count_and_keeps_it_intact():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 11, generator=g)
    count = torch.tensor([9])
    out = iBOTPatchLoss(11).sinkhorn_knopp_teacher(logits, 0.07, count)
    assert count.item() == 9
    assert torch.allclose(out.double(), _linear_sinkhorn64(logits, 0.07, 3, n_samples=9), rtol=1e-5, atol=1e-7)
    # the count enters the n_iterations=0 scaling only through B: check it is honoured
    out0 = iBOTPatchLoss(11).sinkhorn_knopp_teacher(logits, 0.07, torch.tensor([18]), n_iterations=0)
    assert torch.allclose(out0.double(), _linear_sinkhorn64(logits, 0.07, 0, n_samples=18), rtol=1e-5)


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="samples, prototypes"):
        sinkhorn_knopp(torch.randn(2, 3, 4), 0.1)


@pytest.mark.parametrize("chunk_elems", [1, 33, 10_000])
def test_chunking_does_not_change_the_result(chunk_elems):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(17, 11, generator=g) * 5
    out = sinkhorn_knopp(logits, 0.05, chunk_elems=chunk_elems)
    assert torch.allclose(out, sinkhorn_knopp(logits, 0.05), rtol=1e-6, atol=1e-7)
    assert torch.allclose(out.double(), _linear_sinkhorn64(logits, 0.05, 3), rtol=1e-4, atol=1e-5)


def test_only_scaling_vectors_are_kept():
    """Q = exp(L + r + c): the vectors alone reproduce the matrix, computed from row chunks the
    caller produces on demand (e.g. from bottleneck features), never from a stored [B, K] matrix."""
    from dinoflow.losses.sinkhorn import sinkhorn_scalings

    g = torch.Generator().manual_seed(5)
    z, w = torch.randn(40, 4, generator=g), torch.randn(25, 4, generator=g)
    requested = []

    def rows(a, b):
        requested.append(b - a)
        return (z[a:b] @ w.t()) / 0.07

    r, c = sinkhorn_scalings(rows, 40, 25, torch.device("cpu"), chunk_elems=25 * 8)
    assert r.shape == (40,) and c.shape == (25,)
    assert max(requested) == 8
    q = torch.exp(rows(0, 40) + r[:, None] + c[None, :])
    assert torch.allclose(q.double(), _linear_sinkhorn64(z @ w.t(), 0.07, 3), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scale, linear", [(1.0, True), (40.0, False)])
def test_linear_domain_steps_agree_with_log_space(scale, linear):
    """On a CPU the steps run as matrix-vector products on exp(L − rowmax); where a sum would
    underflow (scale 40: logits / τ up to ~3000) the log-space steps run instead. Either way the
    result is the float64 algorithm's to fp32 rounding (|L| up to ~60 here: relative ~1e-5)."""
    from dinoflow.losses.sinkhorn import _linear_scaled, sinkhorn_scalings

    g = torch.Generator().manual_seed(6)
    logits = torch.randn(37, 500, generator=g) * scale
    q = logits / 0.05
    assert _linear_scaled(q.clone(), 3, None) is linear
    r, c = sinkhorn_scalings(lambda a, b: q[a:b], 37, 500, torch.device("cpu"))
    log_space = torch.exp(q + r[:, None] + c[None, :])
    out = sinkhorn_knopp(logits, 0.05)
    assert torch.isfinite(out).all()
    if linear:
        truth = _linear_sinkhorn64(logits, 0.05, 3)
        for result in (out, log_space):
            assert torch.allclose(result.double(), truth, rtol=3e-5, atol=1e-9)
    else:
        assert torch.equal(out, log_space)


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_device_path_is_the_log_space_result_and_reads_nothing_back(scale):
    """The accelerator's path (log-space passes over the logits as they are) gives the CPU's
    result where the CPU runs matrix-vector steps (scale 1) and where it falls back to log space
    (scale 40: logits / τ up to ~3000), on bf16 logits too; compiled with fullgraph (a host read
    would break the graph: an error)."""
    from dinoflow.losses.sinkhorn_device import sinkhorn_knopp_fused

    g = torch.Generator().manual_seed(11)
    logits = torch.randn(37, 500, generator=g) * scale
    want = sinkhorn_knopp(logits, 0.05)
    torch._dynamo.reset()
    for backend in (None, "aot_eager"):
        for n_samples in (None, torch.tensor([37])):
            got = sinkhorn_knopp_fused(logits, 0.05, n_samples=n_samples, backend=backend)
            assert torch.isfinite(got).all() and got.dtype == torch.float32
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), (backend, n_samples)
    half = logits.bfloat16()
    assert torch.allclose(
        sinkhorn_knopp_fused(half, 0.05, backend="aot_eager"), sinkhorn_knopp(half.float(), 0.05), rtol=1e-4, atol=1e-7
    )
    for n in (0, 1, 5):  # every iteration count, against the float64 textbook algorithm
        if scale == 1.0:
            truth = _linear_sinkhorn64(logits, 0.05, n)
            assert torch.allclose(
                sinkhorn_knopp_fused(logits, 0.05, n, backend=None).double(), truth, rtol=3e-5, atol=1e-9
            )


def test_device_path_with_no_rows_returns_an_empty_assignment():
    from dinoflow.losses.sinkhorn_device import sinkhorn_knopp_fused

    assert sinkhorn_knopp_fused(torch.zeros(0, 7), 0.05, backend=None).shape == (0, 7)
