"""DINO / iBOT projection head: MLP → bottleneck → L2-normalise → weight-normalised prototypes.

The last layer keeps the official parameter names `last_layer.weight_g` [K, 1] and
`last_layer.weight_v` [K, bottleneck], so official head state dicts load unchanged. It is an
explicit (g, v) pair rather than `torch.nn.utils.parametrizations.weight_norm`, whose state
dict would be named `parametrizations.weight.original0/1`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinoflow.config import HeadConfig
from dinoflow.config.model_size import FLOAT_BYTES, head_params
from dinoflow.memory import refuse_over_memory


def _row_norm(v: Tensor) -> Tensor:
    """‖v‖ per row [K, 1], accumulated and returned in fp32 even for bf16 weights."""
    return torch.linalg.vector_norm(v, dim=1, keepdim=True, dtype=torch.promote_types(v.dtype, torch.float32))


def _weight_norm_grads(
    grad_w: Tensor, v: Tensor, g: Tensor, norm: Tensor, need_v: bool, need_g: bool, inplace: bool = False
):
    """(∂L/∂v, ∂L/∂g) from G = ∂L/∂w for w = g·v/‖v‖ (rows), with one [K, d] result and no other
    [K, d] temporary (autograd's mul/div/norm chain makes several):

        ∂L/∂g = (G·v) / ‖v‖,   ∂L/∂v = (g/‖v‖) · (G − (G·v) v / ‖v‖²)
    """
    acc = norm.dtype
    dot = torch.linalg.vecdot(grad_w.to(acc), v.to(acc), dim=1).unsqueeze(1)  # no [K, d] product tensor
    scale = g.to(acc) / norm
    grad_g = (dot / norm).to(g.dtype) if need_g else None
    grad_v = None
    if need_v:
        grad_v = grad_w.mul_(scale.to(grad_w.dtype)) if inplace else grad_w * scale.to(grad_w.dtype)
        grad_v.addcmul_(v, (scale * dot / norm.square()).to(v.dtype), value=-1.0)
    return grad_v, grad_g


class _WeightNorm(torch.autograd.Function):
    """w = g · v / ‖v‖ (row-wise), materialised (the factored heads' prototypes)."""

    @staticmethod
    def forward(ctx, v: Tensor, g: Tensor) -> Tensor:
        norm = _row_norm(v)
        ctx.save_for_backward(v, g, norm)
        return v * (g / norm).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, g, norm = ctx.saved_tensors
        return _weight_norm_grads(grad, v, g, norm, ctx.needs_input_grad[0], ctx.needs_input_grad[1])


# On a CPU the K-wide products (N = 16–200 rows against K = 65,536 prototypes of d = 256) run
# 1.3–2× faster in blocks of this many prototypes: a block's weights and outputs stay in cache,
# and the scaling and weight-norm steps run on the block while it is there (one MKL product over
# all K runs at about half the machine's GEMM rate at these shapes).
CPU_PROTOTYPE_BLOCK = 2048


def _prototype_blocks(x: Tensor, k: int, block: int | None) -> list[slice]:
    """Column blocks of the K prototypes: blocks on a CPU, one block elsewhere (a GPU runs one
    product over all K at full rate, and every block would be a kernel launch)."""
    if block is None:
        block = CPU_PROTOTYPE_BLOCK if x.device.type == "cpu" else k
    return [slice(a, min(k, a + block)) for a in range(0, k, max(1, block))]


class _NormedLinear(torch.autograd.Function):
    """x @ (g · v / ‖v‖)ᵀ = (x @ vᵀ) · (g / ‖v‖)ᵀ: the row scales go on the [N, K] output instead
    of a [K, d] weight (N = 16–200 rows per head against d = 256, and nothing [K, d] is kept).
    Computed in blocks of prototypes (`_prototype_blocks`)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x: Tensor, v: Tensor, g: Tensor, block: int | None = None) -> Tensor:
        norm = _row_norm(v)
        scale = (g.to(norm.dtype) / norm).t()  # [1, K]
        ctx.save_for_backward(x, v, g, norm)
        ctx.block = block
        blocks = _prototype_blocks(x, v.shape[0], block)
        if len(blocks) == 1 or x.dtype != v.dtype:
            out = F.linear(x, v)
            return out.mul_(scale.to(out.dtype))
        x2 = x.reshape(-1, x.shape[-1])
        out = x2.new_empty(x2.shape[0], v.shape[0])
        for s in blocks:
            torch.mm(x2, v[s].t(), out=out[:, s]).mul_(scale[:, s].to(out.dtype))
        return out.view(*x.shape[:-1], v.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):
        x, v, g, norm = ctx.saved_tensors
        need_x, need_v, need_g = ctx.needs_input_grad[:3]
        grad = grad.reshape(-1, grad.shape[-1])
        scale = (g.to(norm.dtype) / norm).t().to(grad.dtype)  # [1, K]
        xg = x.reshape(-1, x.shape[-1]).to(grad.dtype)
        grad_x = torch.zeros_like(xg) if need_x else None
        grad_v = torch.empty_like(v) if need_v else None
        grad_g = torch.empty_like(g) if need_g else None
        for s in _prototype_blocks(x, v.shape[0], ctx.block):
            if need_x:
                grad_x.addmm_(grad[:, s] * scale[:, s], v[s].to(grad.dtype))
            if need_v or need_g:
                # ∂L/∂w for the block's rows of w = g·v/‖v‖ (into ∂L/∂v's rows when the dtypes
                # agree), then through the weight norm in place
                into = grad_v[s] if need_v and grad_v.dtype == grad.dtype else None
                grad_w = torch.mm(grad[:, s].t(), xg, out=into) if into is not None else grad[:, s].t() @ xg
                part_v, part_g = _weight_norm_grads(grad_w, v[s], g[s], norm[s], need_v, need_g, inplace=True)
                if need_v and into is None:
                    grad_v[s] = part_v
                if need_g:
                    grad_g[s] = part_g
        return (grad_x.view(x.shape).to(x.dtype) if need_x else None), grad_v, grad_g, None


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight = g · v / ‖v‖ (row-wise): each output row has norm |g|."""

    def __init__(self, in_features: int, out_features: int, train_norm: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        # g starts at 1 (unit-norm prototypes); frozen unless `train_norm`.
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=train_norm)

    @property
    def weight(self) -> Tensor:
        return _WeightNorm.apply(self.weight_v, self.weight_g)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in] → [N, out]; the normalisation scales the output (see _NormedLinear)."""
        return _NormedLinear.apply(x, self.weight_v, self.weight_g)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _mlp(nlayers: int, in_dim: int, hidden_dim: int, bottleneck_dim: int, use_bn: bool, bias: bool) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    for a, b in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(a, b, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(b))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """[*, in_dim] → prototype scores [*, out_dim].

    Linear(in, hidden) → GELU → (Linear(hidden, hidden) → GELU) × (nlayers − 2) → Linear(hidden,
    bottleneck); L2-normalise (eps 1e-12, 1e-6 in fp16); weight-normalised Linear(bottleneck,
    out_dim, no bias). Linear layers of the MLP start trunc-normal (std 0.02) with zero bias;
    the prototypes `weight_v` keep PyTorch's default Linear init (the official head does the same
    because its init runs before the last layer exists) and the norms `weight_g` start at 1.

    `train_last_layer_norm=True` (default) leaves `weight_g` trainable, as the official DINOv2
    head does; False keeps it at 1 for the whole run, as DINO's `norm_last_layer=True` does.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
        train_last_layer_norm: bool = True,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        n = head_params(in_dim, out_dim, hidden_dim, bottleneck_dim, nlayers)
        refuse_over_memory(
            f"a DINO head of {n:,} parameters (out_dim {out_dim}, hidden_dim {hidden_dim}, bottleneck_dim "
            f"{bottleneck_dim}, {nlayers} layers)",
            n * FLOAT_BYTES,
            "Lower the head's out_dim / hidden_dim / bottleneck_dim / nlayers.",
        )
        self.mlp = _mlp(nlayers, in_dim, hidden_dim, bottleneck_dim, use_bn, mlp_bias)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, train_norm=train_last_layer_norm)
        # Same distribution as nn.Linear's default (kaiming-uniform, a=sqrt(5)).
        nn.init.kaiming_uniform_(self.last_layer.weight_v, a=5**0.5)
        self._register_load_state_dict_pre_hook(_rename_parametrized_keys)

    @classmethod
    def from_config(cls, in_dim: int, cfg: HeadConfig, out_dim: int | None = None) -> "DINOHead":
        """A head from `HeadConfig` (out_dim defaults to `cfg.out_dim`; pass `cfg.ibot_out_dim` for iBOT)."""
        return cls(
            in_dim,
            out_dim if out_dim is not None else cfg.out_dim,
            use_bn=cfg.use_bn,
            nlayers=cfg.nlayers,
            hidden_dim=cfg.hidden_dim,
            bottleneck_dim=cfg.bottleneck_dim,
            train_last_layer_norm=cfg.train_last_layer_norm,
        )

    def forward(self, x: Tensor, parts: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """[*, in_dim] → prototype scores [*, out_dim]; with `parts`, the two factors of those
        scores instead: (normalised bottleneck features [*, bottleneck], prototypes [out_dim,
        bottleneck]), for losses that never hold all the scores at once (a chunked cross-entropy)."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        if parts:
            return x, self.last_layer.weight
        return self.last_layer(x)


def heads_from_config(in_dim: int, cfg: HeadConfig) -> tuple[DINOHead, DINOHead | None]:
    """The DINO head and, when `cfg.separate_ibot_head`, the iBOT head (else None: patch tokens
    share the DINO head); both map [*, in_dim] → [*, K] with K = out_dim / ibot_out_dim."""
    dino = DINOHead.from_config(in_dim, cfg)  # first: the random init draws in this order
    ibot = DINOHead.from_config(in_dim, cfg, out_dim=cfg.ibot_out_dim) if cfg.separate_ibot_head else None
    return dino, ibot


_PARAMETRIZATION_NAMES = {
    "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
    "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
}


def _rename_parametrized_keys(state_dict: dict, prefix: str, *args: Any) -> None:
    # Lets `head.load_state_dict` accept heads saved with the parametrizations-based weight_norm.
    for old, new in _PARAMETRIZATION_NAMES.items():
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


def convert_official_head_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Map head state-dict names from the official DINOv2 naming (or the newer
    `torch.nn.utils.parametrizations.weight_norm` naming) to DINOHead's.

    Accepts the head alone or inside a training checkpoint (`dino_head.` / `ibot_head.` prefixes
    are *not* stripped here; select the sub-dict first). DINOHead already uses the official names,
    so only the parametrization spelling changes.
    """
    return {_PARAMETRIZATION_NAMES.get(k, k): v for k, v in state_dict.items()}
