"""The MLP that recomputes its GELU in the backward: the plain layers' numbers, less memory kept."""

from __future__ import annotations

import pytest
import torch

from dinoflow.models.gelu_mlp import gelu_mlp
from dinoflow.models.layers import Mlp


def _plain(m: Mlp, x: torch.Tensor) -> torch.Tensor:
    return m.fc2(m.act(m.fc1(x)))


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of fn()."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("shape", [(2, 7, 32), (11, 32)])
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_equal_the_plain_layers(shape, bias):
    torch.manual_seed(0)
    m = Mlp(32, 128, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    out = m(x)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *m.parameters()], g)
    plain = _plain(m, x)
    want = torch.autograd.grad(plain, [x, *m.parameters()], g)
    assert torch.equal(out, plain)
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # the same products on the same values


def test_gradcheck_in_float64():
    torch.manual_seed(1)
    args = [
        torch.randn(5, 6, dtype=torch.float64, requires_grad=True),
        torch.randn(9, 6, dtype=torch.float64, requires_grad=True),
        torch.randn(9, dtype=torch.float64, requires_grad=True),
        torch.randn(4, 9, dtype=torch.float64, requires_grad=True),
        torch.randn(4, dtype=torch.float64, requires_grad=True),
    ]
    assert torch.autograd.gradcheck(gelu_mlp, args)


def test_keeps_the_hidden_layer_once_not_twice():
    torch.manual_seed(2)
    m = Mlp(64, 256)
    x = torch.randn(100, 64, requires_grad=True)
    hidden = 100 * 256 * 4
    out, kept = _saved_bytes(lambda: m(x))
    _, kept_plain = _saved_bytes(lambda: _plain(m, x))
    assert kept_plain - kept == hidden  # GELU's output [100, 256] fp32 is no longer kept
    out.sum().backward()
    assert m.fc1.weight.grad is not None and x.grad is not None


def _fused(out: torch.Tensor) -> bool:
    return type(out.grad_fn).__name__ == "_GeluMlpBackward"


def test_plain_layers_without_grad_and_under_autocast():
    m = Mlp(16, 32)
    x = torch.randn(3, 16)
    assert _fused(m(x.clone().requires_grad_()))  # training in full precision: the fused layer
    with torch.no_grad():
        assert torch.equal(m(x), _plain(m, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, kept = _saved_bytes(lambda: m(x.requires_grad_()))
        assert out.dtype == torch.bfloat16
        assert not _fused(out)  # autocast has no rules for the fused layer: the plain layers ran
        _, kept_plain = _saved_bytes(lambda: _plain(m, x))
        assert kept == kept_plain
